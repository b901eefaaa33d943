"""Labelling posterior draws: arrays with leading ``chain, draw`` axes become an
``xarray.Dataset`` with the data's dims and coordinates; non-finite draws are refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from tensorfact.data import TensorData
from tensorfact.spec import ModelSpec, site_dims


def posterior_dataset(
    draws: Mapping[str, Any], spec: ModelSpec, data: TensorData
) -> xr.Dataset:
    """Labels draws (arrays shaped ``(chain, draw, *site shape)``) as an ``xarray.Dataset``.

    A site with dims (:func:`tensorfact.spec.site_dims`) gets them, with the data's
    coordinates; scalar sites get ``chain, draw`` only. Arrays of any other rank (auxiliary
    variables, e.g. a decorrelated site's guide coordinates) are left out.

    Args:
        draws: site name -> draws.
        spec: the fitted specification.
        data: the fitted data (their coordinates label the dims).
    """
    dims = site_dims(spec)
    variables = {}
    for name, value in draws.items():
        value = np.asarray(value)
        site = dims.get(name, ())
        if value.ndim != 2 + len(site):
            continue
        coords = {d: data.coords[d] for d in site}
        variables[name] = xr.DataArray(value, dims=("chain", "draw", *site), coords=coords)
    dataset = xr.Dataset(variables)
    if not variables:
        return dataset
    return dataset.assign_coords(
        chain=np.arange(dataset.sizes["chain"]), draw=np.arange(dataset.sizes["draw"])
    )


def check_finite_draws(draws: Mapping[str, Any], source: str) -> None:
    """Refuses posterior draws with NaN or infinite values (never returned silently).

    Args:
        draws: site name -> draws.
        source: the method, for the message (e.g. ``"SVI"``).

    Raises:
        FloatingPointError: naming the sites and what to change.
    """
    bad = [k for k, v in draws.items() if not np.all(np.isfinite(np.asarray(v)))]
    if bad:
        raise FloatingPointError(
            f"{source} posterior draws of {bad} contain NaN or inf values. Train longer with a "
            "smaller learning rate, rescale the data, or try decorrelate=False."
        )
