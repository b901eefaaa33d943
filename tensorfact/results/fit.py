"""The result of a fit: labelled posterior draws, ArviZ, summaries, predictions, plots, resume,
save.

:class:`Fit` holds results only; it never trains in ``__init__``. Draws are in model
coordinates with dims named after the input's dims and coordinates copied from it, plus
``chain`` and ``draw``. :meth:`Fit.resume` continues training through the resumer the method
that made the fit attached (:mod:`tensorfact.methods.svi`), so this module knows no method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from tensorfact.checks import check_flag, check_optimizer, check_positive_int
from tensorfact.data import TensorData
from tensorfact.results.record import FitRecord
from tensorfact.spec import ModelSpec

Resumer = Callable[..., "Fit"]
"""``resumer(fit, num_steps, *, stop_at_plateau, optimizer, progress_bar) -> Fit``."""


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
        seed: the integer seed used; ``None`` for a fit seeded with a JAX key (the key is in
            the fit's record and seeds the predictive noise).
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
    seed: int | None = 0
    info: dict[str, Any] = field(default_factory=dict)
    _svi: Any = field(default=None, repr=False)
    _record: FitRecord | None = field(default=None, repr=False)
    _saved: dict[str, Any] | None = field(default=None, repr=False)
    _resumer: Resumer | None = field(default=None, repr=False, compare=False)

    # -- training state ----------------------------------------------------------------------
    @property
    def guide_params(self) -> dict[str, np.ndarray]:
        """The trained guide's parameters (constrained), e.g. ``mu_auto_loc``; empty if none."""
        if self._svi is not None:
            return {k: np.asarray(v) for k, v in self._svi.run.params.items()}
        return dict(self._saved["params"]) if self._saved else {}

    def _has_svi(self) -> bool:
        return self._svi is not None or bool(self._saved and self._saved.get("leaves"))

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
            ValueError: for a NUTS (or other non-SVI) fit, a fit without a trained guide, or a
                loaded fit trained with a custom optimizer when ``optimizer`` is missing.
            reparam.infer.NonFiniteLoss: if the loss becomes NaN or infinite.
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
        if self._resumer is None or not self._has_svi():
            raise ValueError(
                "This fit has no trained SVI guide to resume (it was not made by "
                "tensorfact.fit or tensorfact.load); fit the data with method='svi'."
            )
        return self._resumer(self, num_steps, stop_at_plateau=stop_at_plateau,
                             optimizer=optimizer, progress_bar=progress_bar)

    def save(self, path: str | PathLike) -> None:
        """Writes the fit to a netCDF file (see :func:`tensorfact.results.io.save`)."""
        from tensorfact.results.io import save

        save(self, path)

    # -- views ------------------------------------------------------------------------------
    @property
    def effects(self) -> tuple[str, ...]:
        """The effect names of the specification."""
        return self.spec.effect_names

    def to_inference_data(self) -> Any:
        """ArviZ ``InferenceData`` with ``posterior`` and ``observed_data`` groups."""
        import arviz as az

        observed = xr.Dataset({self.data.name: self.data.to_dataarray()})
        return az.InferenceData(posterior=self.posterior, observed_data=observed)

    def summary(
        self, effects: Sequence[str] | None = None, *, prob: float = 0.9
    ) -> pd.DataFrame:
        """Posterior mean, sd and central ``prob`` interval per element (ArviZ labels); for
        NUTS-based fits also ESS and r-hat.

        Args:
            effects: variables to include (default: every effect and hyperparameter).
            prob: probability mass of the equal-tailed interval.

        Raises:
            ValueError: unknown variables, or ``prob`` outside (0, 1).
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
        low, high = [], []
        for name in names:
            q = stacked[name].quantile([lower, upper], dim="sample").values
            low.extend(np.ravel(q[0]))
            high.extend(np.ravel(q[1]))
        table = table.drop(columns=[c for c in table.columns if c.startswith("hdi")])
        table[f"q{lower:.3g}"], table[f"q{upper:.3g}"] = low, high
        return table

    def linear_predictor(self) -> xr.DataArray:
        """Draws of the cell means ``sum_e effect_e`` (``chain, draw, <data dims>``)."""
        # start from zeros over the data's dims: a spec need not have an effect on every dim
        dtype = np.result_type(*(self.posterior[e.name].dtype for e in self.spec.effects))
        total = self.data.to_dataarray(np.zeros(self.data.values.shape, dtype))
        for effect in self.spec.effects:
            total = total + self.posterior[effect.name]
        return total.transpose("chain", "draw", *self.data.dims)

    def noise_seed(self) -> int | list[int]:
        """The seed of the predictive noise: the fit's integer seed, or for a fit seeded with
        a JAX key that key's two words (so fits with different keys draw different noise).

        Raises:
            ValueError: for a fit with neither (built by hand with ``seed=None``).
        """
        if self.seed is not None:
            return int(self.seed)
        if self._record is not None:
            return [int(k) for k in self._record.key]
        raise ValueError("This fit has no seed; pass seed= to predict() or predictive_draws().")

    def predictive_draws(self, rng: np.random.Generator | None = None) -> xr.DataArray:
        """Posterior predictive draws of every cell (``chain, draw, <data dims>``), with the
        fit's noise model (Normal or Student-t, shared, per-series or time-varying scale;
        :mod:`tensorfact.results.predictive`).

        Args:
            rng: NumPy generator for the observation noise (default: seeded with
                :meth:`noise_seed`).
        """
        from tensorfact.results.predictive import predictive_draws

        rng = np.random.default_rng(self.noise_seed()) if rng is None else rng
        return predictive_draws(self, rng)

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
            seed: seed for the observation noise draws (default: :meth:`noise_seed`).

        Returns:
            A DataArray with the input's dims and coords.

        Raises:
            ValueError: quantiles outside (0, 1).
        """
        mean = self.linear_predictor()
        if quantiles is None:
            return self.data.to_dataarray(mean.mean(("chain", "draw")).values)
        quantiles = [float(q) for q in quantiles]
        if not all(0 < q < 1 for q in quantiles):
            raise ValueError(f"quantiles must lie in (0, 1), got {quantiles}.")
        rng = np.random.default_rng(self.noise_seed() if seed is None else seed)
        draws = self.predictive_draws(rng).values
        values = np.quantile(draws.reshape((-1,) + draws.shape[2:]), quantiles, axis=0)
        return self.data.to_dataarray(values, leading={"quantile": quantiles})

    # -- checks ---------------------------------------------------------------------------
    def ppc(self) -> xr.Dataset:
        """Residual scale vs the model's noise scale and residual lag-1 autocorrelation per
        ``(i, j)`` series of the observed cells (:func:`tensorfact.results.ppc.ppc`); the
        held-out check is :func:`tensorfact.calibrate` (it refits, so it lives above the
        fit methods, not on the result)."""
        from tensorfact.results.ppc import ppc

        return ppc(self)

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
