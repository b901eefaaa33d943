"""Fit results: labelled posterior draws, ArviZ, summaries, predictions, plots, resume, save.

:class:`Fit` holds results only; it never trains in ``__init__`` (training happens in
:func:`tensorfact.fit` and :meth:`Fit.resume`, which returns a new fit). Draws are in model
coordinates with dims named after the input's dims and coordinates copied from it, plus
``chain`` and ``draw``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from tensorfact.build import TensorModel
from tensorfact.checks import check_flag, check_optimizer, check_positive_int
from tensorfact.data import TensorData
from tensorfact.spec import ModelSpec


def site_dims(model: TensorModel) -> dict[str, tuple[str, ...]]:
    """Dims of every named site of the model (locations and hyperparameters)."""
    spec = model.spec
    dims: dict[str, tuple[str, ...]] = {s.name: s.dims for s in model.location_sites}
    for effect in spec.effects:
        if getattr(effect, "prior", None) == "horseshoe":
            dims[f"lambda_{effect.name}"] = spec.effect_dims(effect)
    dims.update(model.noise_site_dims)  # per-series and time-varying noise sites
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


def check_finite_draws(draws: Mapping[str, Any], source: str) -> None:
    """Refuses posterior draws with NaN or infinite values (never returned silently).

    Raises:
        FloatingPointError: naming the sites.
    """
    bad = [k for k, v in draws.items() if not np.all(np.isfinite(np.asarray(v)))]
    if bad:
        raise FloatingPointError(
            f"{source} posterior draws of {bad} contain NaN or inf values. Train longer with a "
            "smaller learning rate, rescale the data, or try decorrelate=False."
        )


def svi_posterior(
    svi: Any, settings: Mapping[str, Any], model: TensorModel, data: TensorData
) -> xr.Dataset:
    """Draws ``settings["num_draws"]`` samples from a trained guide (key: the fit's key folded
    with 1) and labels them."""
    import jax

    key = jax.random.fold_in(np.asarray(settings["key"], np.uint32), 1)
    draws = svi.draws(key, settings["num_draws"], settings["returned"])
    draws = {k: v[None] for k, v in draws.items()}
    check_finite_draws(draws, "SVI")
    return posterior_dataset(draws, model, data)


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
        info: further facts about the run (timings, stopping reason, resumed steps, ...).

    Save with :meth:`save` and read back with :func:`tensorfact.load`; continue SVI training
    with :meth:`resume` (in the same session or after loading).
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
    _settings: dict[str, Any] = field(default_factory=dict, repr=False)
    _saved: dict[str, Any] | None = field(default=None, repr=False)

    # -- training state ----------------------------------------------------------------------
    @property
    def guide_params(self) -> dict[str, np.ndarray]:
        """The trained guide's parameters (constrained), e.g. ``mu_auto_loc``; empty if none."""
        if self._svi is not None:
            return {k: np.asarray(v) for k, v in self._svi.run.params.items()}
        return dict(self._saved["params"]) if self._saved else {}

    def _has_svi(self) -> bool:
        return self._svi is not None or bool(self._saved and self._saved.get("leaves"))

    def _svi_fit(self, optimizer: Any = None, resumable: bool = False) -> Any:
        """The trained SVI fit, restored from the saved state for a loaded fit."""
        if self._svi is not None:
            if optimizer is not None:
                raise ValueError(
                    "optimizer= is only for fits loaded from a file that were trained with a "
                    "custom optimizer; this fit resumes with the optimizer it was trained with."
                )
            return self._svi
        if not self._has_svi():
            raise ValueError(f"This {self.method} fit has no trained SVI guide.")
        from tensorfact.persist import restore_svi_fit

        svi = restore_svi_fit(self, optimizer, resumable)
        if svi.run.runner is not None:
            self._svi = svi
        return svi

    def resume(
        self,
        num_steps: int,
        *,
        stop_at_plateau: bool = False,
        optimizer: Any = None,
        progress_bar: bool = False,
    ) -> Fit:
        """Continues SVI training for ``num_steps`` more steps; returns a new fit.

        The optimiser state (moments, step count, learning-rate schedule) and the random key
        carry on and the loss trace continues, so ``fit(n).resume(m)`` equals ``fit(n + m)``
        bitwise when both run without plateau stopping (``stop_at_plateau=False`` in
        :func:`tensorfact.fit`). Posterior draws are redrawn from the updated guide with the
        fit's key. This fit is left unchanged. Fits loaded with :func:`tensorfact.load`
        resume too.

        Args:
            num_steps: further SVI steps (> 0).
            stop_at_plateau: stop early once loss and guide have settled.
            optimizer: only for a loaded fit that was trained with a custom ``optimizer=``
                (optax transformations cannot be saved): pass the same transformation.
            progress_bar: show a progress bar.

        Raises:
            ValueError: for a NUTS (or other non-SVI) fit, or a loaded fit trained with a
                custom optimizer when ``optimizer`` is missing.
            tensorfact.infer.NonFiniteLoss: if the loss becomes NaN or infinite.
        """
        check_positive_int("num_steps", num_steps)
        check_flag("stop_at_plateau", stop_at_plateau)
        check_flag("progress_bar", progress_bar)
        check_optimizer(optimizer)
        if self.method != "svi":
            raise ValueError(
                f"Only SVI fits can be resumed; this is a {self.method!r} fit. Resume the SVI "
                "fit instead and pass it to tensorfact.fit(..., method='nuts', from_fit=...)."
            )
        from tensorfact.infer import Plateau, resume_svi

        svi = self._svi_fit(optimizer, resumable=True)
        stopping = Plateau() if stop_at_plateau else None
        svi = resume_svi(svi, num_steps, stopping=stopping, progress_bar=progress_bar)
        run = svi.run
        info = {
            **self.info,
            "svi_steps": len(run.losses),
            "svi_stopped": run.stopped,
            "svi_seconds": float(self.info.get("svi_seconds", 0.0)) + run.seconds,
            "resumed": [*self.info.get("resumed", []), int(num_steps)],
        }
        return replace(
            self,
            posterior=svi_posterior(svi, self._settings, self.model, self.data),
            losses=np.asarray(run.losses),
            info=info,
            _svi=svi,
            _saved=None,
        )

    def save(self, path: str | PathLike) -> None:
        """Writes the fit to a netCDF file (see :func:`tensorfact.persist.save`)."""
        from tensorfact.persist import save

        save(self, path)

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
        # start from zeros over the data's dims: a spec need not have an effect on every dim
        dtype = np.result_type(*(self.posterior[e.name].dtype for e in self.spec.effects))
        total = self.data.to_dataarray(np.zeros(self.data.values.shape, dtype))
        for effect in self.spec.effects:
            total = total + self.posterior[effect.name]
        return total.transpose("chain", "draw", *self.data.dims)

    def predictive_draws(self, rng: np.random.Generator | None = None) -> xr.DataArray:
        """Posterior predictive draws of every cell (``chain, draw, <data dims>``), with the
        fit's noise model (Normal or Student-t, shared, per-series or time-varying scale).

        Args:
            rng: NumPy generator for the observation noise (default: seeded with the fit's
                seed).
        """
        from tensorfact.predictive import predictive_draws

        return predictive_draws(self, np.random.default_rng(self.seed) if rng is None else rng)

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
        draws = self.predictive_draws(rng).values
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
