"""Posterior predictive draws of every cell, for each noise model of :class:`~tensorfact.Noise`.

For posterior draw ``k`` of the effects and the noise sites,

    y_rep[i,j,t] = loc[i,j,t] + scale[i,j,t] * eps,   eps ~ Normal(0, 1)  or  StudentT(df),

with ``loc`` the linear predictor (:meth:`Fit.linear_predictor`) and ``scale`` the noise scale
of the cell: ``sigma``, or ``sigma_series[i,j]`` (per-series noise), times
``exp(log_sigma_time[k,t])`` when the noise changes over time (``Noise(time_by=...)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from tensorfact.results.fit import Fit


def noise_scale(fit: Fit) -> xr.DataArray:
    """Draws of the noise scale of every cell, ``(chain, draw, <data dims>)``.

    For Student-t noise this is the t scale ``sigma`` (the sd is ``sigma sqrt(df / (df - 2))``
    for ``df > 2``).
    """
    post, noise = fit.posterior, fit.spec.noise
    scale = post["sigma_series"] if noise.per_series else post["sigma"]
    if noise.time_by is not None:
        scale = scale * np.exp(post["log_sigma_time"])
    template = xr.DataArray(np.zeros(fit.data.values.shape, scale.dtype), dims=fit.data.dims)
    return scale.broadcast_like(template).transpose("chain", "draw", *fit.data.dims)


def predictive_draws(fit: Fit, rng: np.random.Generator) -> xr.DataArray:
    """Posterior predictive draws of every cell (missing ones too), ``(chain, draw, <dims>)``.

    Args:
        fit: a fitted model.
        rng: NumPy generator for the observation noise (one draw per posterior draw and cell).

    Returns:
        Labelled like :meth:`Fit.linear_predictor`.
    """
    loc = fit.linear_predictor()
    scale = noise_scale(fit).values
    noise = fit.spec.noise
    if noise.family == "normal":
        eps = rng.standard_normal(loc.shape)
    else:
        if noise.df is not None:
            df = np.full(loc.shape[:2], noise.df)
        else:
            df = fit.posterior["df"].transpose("chain", "draw").values
        eps = rng.standard_t(df[:, :, None, None, None], loc.shape)
    return loc.copy(data=loc.values + scale * eps)
