"""Fit results: labelled posterior draws, ArviZ, summaries, predictions and plots.

:class:`Fit` holds results only; it never trains in ``__init__`` (training happens in
:func:`tensorfact.fit`). Draws are in model coordinates with dims named after the input's dims
and coordinates copied from it, plus ``chain`` and ``draw``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from tensorfact.build import TensorModel
from tensorfact.data import TensorData
from tensorfact.spec import ModelSpec


def site_dims(model: TensorModel) -> dict[str, tuple[str, ...]]:
    """Dims of every named site of the model (locations and hyperparameters)."""
    spec = model.spec
    dims: dict[str, tuple[str, ...]] = {s.name: s.dims for s in model.location_sites}
    for effect in spec.effects:
        if getattr(effect, "prior", None) == "horseshoe":
            dims[f"lambda_{effect.name}"] = spec.effect_dims(effect)
    if spec.noise.per_series:
        dims["log_sigma_series"] = spec.other_dims
        dims["sigma_series"] = spec.other_dims
    return dims


def posterior_dataset(
    draws: Mapping[str, np.ndarray], model: TensorModel, data: TensorData
) -> xr.Dataset:
    """Labels draws (arrays with leading ``chain, draw`` axes) as an ``xarray.Dataset``."""
    dims = site_dims(model)
    variables = {}
    for name, value in draws.items():
        value = np.asarray(value)
        site = dims.get(name, ())
        if value.ndim != 2 + len(site):
            continue  # not a named model site (e.g. an auxiliary variable)
        coords = {d: data.coords[d] for d in site}
        variables[name] = xr.DataArray(value, dims=("chain", "draw", *site), coords=coords)
    dataset = xr.Dataset(variables)
    return dataset.assign_coords(
        chain=np.arange(dataset.sizes["chain"]), draw=np.arange(dataset.sizes["draw"])
    )


@dataclass
class Fit:
    """Result of :func:`tensorfact.fit`.

    Attributes:
        method: ``"svi"``, ``"nuts"`` or ``"exact"``.
        spec: the model specification.
        data: the validated data (a copy of the input).
        posterior: draws in model coordinates (``chain, draw, <dims>``).
        decorrelate: effect name -> whether its decorrelation was on.
        losses: SVI loss trace (``None`` for methods without SVI).
        coefficients: decorrelation coefficients (``numpy`` arrays), for inspection.
        diagnostics: NUTS diagnostics (divergences, r-hat, ESS) when NUTS ran.
        seed: the seed used.
        info: further facts about the run (timings, stopping reason, ...).
    """

    method: str
    spec: ModelSpec
    data: TensorData
    posterior: xr.Dataset
    decorrelate: dict[str, bool]
    losses: np.ndarray | None = None
    coefficients: dict[str, np.ndarray] = field(default_factory=dict)
    diagnostics: Any = None
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    _svi: Any = field(default=None, repr=False)

    # -- views ------------------------------------------------------------------------------
    @property
    def model(self) -> TensorModel:
        return TensorModel(self.spec, self.data.sizes)

    @property
    def effects(self) -> tuple[str, ...]:
        return self.spec.effect_names

    def to_inference_data(self) -> Any:
        """ArviZ ``InferenceData`` with ``posterior`` and ``observed_data`` groups."""
        import arviz as az

        observed = xr.Dataset({self.data.name: self.data.to_dataarray()})
        return az.InferenceData(posterior=self.posterior, observed_data=observed)

    def summary(
        self, effects: Sequence[str] | None = None, *, prob: float = 0.9
    ) -> pd.DataFrame:
        """Posterior mean, sd and central ``prob`` interval per element (ArviZ labels).

        Args:
            effects: variables to include (default: every effect and hyperparameter).
            prob: probability mass of the equal-tailed interval.
        """
        names = list(effects) if effects is not None else list(self.posterior.data_vars)
        unknown = [n for n in names if n not in self.posterior]
        if unknown:
            raise ValueError(
                f"Unknown variables {unknown}; available: {list(self.posterior.data_vars)}."
            )
        if not 0 < prob < 1:
            raise ValueError(f"prob must be in (0, 1), got {prob}.")
        import arviz as az

        kind = "all" if self.method in ("nuts", "exact") else "stats"
        table = az.summary(self.to_inference_data(), var_names=names, kind=kind, hdi_prob=prob)
        lower, upper = (1 - prob) / 2, (1 + prob) / 2
        stacked = self.posterior[names].stack(sample=("chain", "draw"))
        quantiles = {
            f"q{lower:.3g}": [], f"q{upper:.3g}": [],
        }
        for name in names:
            q = stacked[name].quantile([lower, upper], dim="sample").values
            quantiles[f"q{lower:.3g}"].extend(np.ravel(q[0]))
            quantiles[f"q{upper:.3g}"].extend(np.ravel(q[1]))
        table = table.drop(columns=[c for c in table.columns if c.startswith("hdi")])
        for column, values in quantiles.items():
            table[column] = values
        return table

    def linear_predictor(self) -> xr.DataArray:
        """Draws of the cell means ``sum_e effect_e`` (``chain, draw, <data dims>``)."""
        total = 0.0
        for effect in self.spec.effects:
            total = total + self.posterior[effect.name]
        return total.transpose("chain", "draw", *self.data.dims)

    def predict(
        self,
        *,
        quantiles: Sequence[float] | None = None,
        seed: int | None = None,
    ) -> xr.DataArray:
        """Posterior predictive for every cell, including cells that were missing.

        Args:
            quantiles: if given, return these predictive quantiles (new leading dim
                ``quantile``); otherwise the predictive mean, shaped like the input.
            seed: seed for the observation noise draws (default: the fit's seed).

        Returns:
            A DataArray with the input's dims and coords.
        """
        mean = self.linear_predictor()
        if quantiles is None:
            return self.data.to_dataarray(mean.mean(("chain", "draw")).values)
        quantiles = [float(q) for q in quantiles]
        if not all(0 < q < 1 for q in quantiles):
            raise ValueError(f"quantiles must lie in (0, 1), got {quantiles}.")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        if self.spec.noise.per_series:
            sigma = self.posterior["sigma_series"].broadcast_like(mean)
        else:
            sigma = self.posterior["sigma"].broadcast_like(mean)
        draws = mean.values + sigma.values * rng.standard_normal(mean.shape)
        values = np.quantile(draws.reshape((-1,) + draws.shape[2:]), quantiles, axis=0)
        return self.data.to_dataarray(values, leading={"quantile": quantiles})

    # -- plots (matplotlib imported lazily) ---------------------------------------------------
    def plot_elbo(self, ax: Any = None, *, log_steps: bool = True, smooth: int = 100,
                  label: str | None = None) -> Any:
        """Loss trace (-ELBO) with a smoothed line; see :func:`tensorfact.plot_elbo`."""
        from tensorfact.plot import plot_elbo

        return plot_elbo([self], labels=[label] if label else None, ax=ax,
                         log_steps=log_steps, smooth=smooth)

    def plot_effect(self, name: str, ax: Any = None, *, prob: float = 0.9,
                    max_series: int = 6) -> Any:
        """Temporal (or any) effect with its posterior mean and central ``prob`` band."""
        from tensorfact.plot import plot_effect

        return plot_effect(self, name, ax=ax, prob=prob, max_series=max_series)
