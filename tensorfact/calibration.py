"""Held-out predictive calibration: hide observed cells, refit, score the predictive there.

:func:`calibrate` hides two kinds of observed cells, refits the model on the rest and asks how
well the posterior predictive (observation noise included, :meth:`Fit.predictive_draws`)
describes the hidden values:

* ``"random"``: a random fraction of the observed cells (tests the noise model and the
  interpolation of the effects);
* ``"forecast"``: the last ``horizon`` observed time steps of a random fraction of the
  ``(i, j)`` series (tests the temporal effects' extrapolation and their uncertainty).

Scores per kind, over its ``n`` hidden cells with values ``y`` and predictive draws ``x``:

* coverage of the central ``level`` interval (the predictive quantiles ``(1 -+ level) / 2``),
  with the binomial standard error under the nominal rate, ``sqrt(level (1 - level) / n)``;
* ``PIT = #{x_s < y} / S``, the predictive CDF at the held-out value (uniform when calibrated);
* ``CRPS = E|X - y| - E|X - X'| / 2`` (energy form; lower is better), estimated from the ``S``
  sorted draws ``x_(1) <= ... <= x_(S)`` as ``mean_s |x_s - y| - sum_s (2s - S - 1) x_(s) / S^2``
  (``O(S log S)`` per cell);
* RMSE of the predictive mean, and RMSE and CRPS of the additive baseline
  (:func:`additive_baseline`), with the ratios model / baseline.

Cells are scored as if independent; the hidden cells of one fit share its posterior, so the
standard errors are approximate and the 3-SE flags (:attr:`Calibration.flagged`) a screen,
not a test. :func:`tensorfact.results.ppc.ppc` (``Fit.ppc()``) is the in-sample companion:
residual scale and autocorrelation per series against the model's noise scale.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from tensorfact.api import check_inputs
from tensorfact.api import fit as fit_model
from tensorfact.checks import MAX_SEED
from tensorfact.results.fit import Fit
from tensorfact.spec import ModelSpec

KINDS: tuple[str, ...] = ("random", "forecast")


@dataclass(frozen=True, eq=False)
class Calibration:
    """Result of :func:`calibrate`.

    Attributes:
        table: one row per kind (index ``kind``); columns ``cells``, ``coverage_<L>`` and
            ``se_<L>`` per level ``L`` in percent (e.g. ``coverage_90``), ``crps``,
            ``crps_baseline``, ``crps_ratio``, ``rmse``, ``rmse_baseline``, ``rmse_ratio``.
        pit: kind -> PIT value of every hidden cell of that kind (in ``[0, 1]``).
        fit: the fit of the training cells (the data with the hidden cells set to NaN).
        masks: kind -> boolean array shaped like the data, ``True`` on its hidden cells.
        levels: the nominal levels of the central intervals.
    """

    table: pd.DataFrame
    pit: dict[str, np.ndarray]
    fit: Fit
    masks: dict[str, np.ndarray]
    levels: tuple[float, ...]

    @property
    def flagged(self) -> list[tuple[str, float]]:
        """``(kind, level)`` pairs whose coverage is more than 3 standard errors from
        ``level``."""
        out = []
        for kind, row in self.table.iterrows():
            for level in self.levels:
                gap = abs(row[f"coverage_{_pct(level)}"] - level)
                if gap > 3 * row[f"se_{_pct(level)}"]:
                    out.append((str(kind), level))
        return out

    def __str__(self) -> str:
        lines = ["Held-out predictive calibration (coverage of central intervals; "
                 "CRPS and RMSE vs the additive baseline)",
                 self.table.to_string(float_format=lambda v: f"{v:.3g}")]
        flags = ", ".join(f"{k} {_pct(lv)}%" for k, lv in self.flagged) or "none"
        lines.append(f"coverage more than 3 SE from nominal: {flags}")
        return "\n".join(lines)

    def plot_pit(self, ax: Any = None, bins: int = 10) -> Any:
        """PIT histograms (density), one per kind, with the uniform density as a line.

        Args:
            ax: one matplotlib ``Axes`` per kind (a sequence, or one ``Axes`` for one kind);
                default: a new figure with a row of axes.
            bins: histogram bins over ``[0, 1]``.

        Returns:
            The axes, a list in the order of ``table``'s rows.
        """
        kinds = list(self.pit)
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3), squeeze=False)
            ax = list(ax[0])
        axes = list(ax) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
        if len(axes) != len(kinds):
            raise ValueError(f"plot_pit needs {len(kinds)} axes (one per kind {kinds}), got "
                             f"{len(axes)}; pass ax=None for a new figure.")
        for axis, kind in zip(axes, kinds, strict=True):
            axis.hist(self.pit[kind], bins=bins, range=(0, 1), density=True, alpha=0.7)
            axis.axhline(1.0, color="black", linestyle="--", linewidth=1)
            axis.set(title=f"{kind} ({self.pit[kind].size} cells)", xlabel="PIT",
                     ylabel="density", xlim=(0, 1))
        return axes


def calibrate(
    data: Any,
    spec: ModelSpec | None = None,
    *,
    holdout: float = 0.1,
    forecast: float = 0.25,
    horizon: int = 3,
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    levels: Sequence[float] = (0.5, 0.8, 0.9),
    **fit_kwargs: Any,
) -> Calibration:
    """Hides observed cells, refits with :func:`tensorfact.fit` and scores the held-out
    predictive (module docstring for the scores).

    Args:
        data: the data as for :func:`tensorfact.fit` (a 3-dim ``xarray.DataArray``; NaN =
            missing); never modified.
        spec: the model (default: :func:`tensorfact.default_spec`); its time dim (or
            ``time=``) is the one the forecast cells run along.
        holdout: fraction of the observed cells hidden at random (kind ``"random"``).
        forecast: fraction of the series with at least ``2 * horizon`` observed steps whose
            last ``horizon`` observed steps are hidden (kind ``"forecast"``).
        horizon: forecast steps per chosen series, ``1 <= horizon <`` the time dim's length.
        kinds: the kinds to hide and score, from ``("random", "forecast")``.
        seed: integer seed of the choice of cells, of the refit and of the predictive noise.
        levels: nominal levels of the central predictive intervals, each in ``(0, 1)``.
        **fit_kwargs: further arguments of :func:`tensorfact.fit` (``num_steps``, ``method``,
            ``time``, ...).

    Returns:
        A :class:`Calibration`.

    Raises:
        ValueError: a bad argument, or too few observed cells to hide any of a kind (each
            message names the argument and the fix); TypeError: arguments of the wrong type.
            Errors of :func:`tensorfact.fit` propagate.
    """
    kinds, levels = _check_arguments(holdout, forecast, horizon, kinds, seed, levels)
    tensor, spec, _ = check_inputs(
        data, spec, dims=fit_kwargs.pop("dims", None), time=fit_kwargs.get("time"),
        decorrelate=fit_kwargs.get("decorrelate", True),
    )
    axis = tensor.dims.index(spec.time)
    steps = tensor.values.shape[axis]
    if horizon >= steps:
        raise ValueError(f"horizon={horizon} must be smaller than the {steps} steps of the time "
                         f"dim {spec.time!r}; pass a smaller horizon.")
    random, ahead = holdout_masks(
        tensor.values, seed, holdout if "random" in kinds else 0.0,
        forecast if "forecast" in kinds else 0.0, horizon, time_axis=axis,
    )
    masks = {kind: {"random": random, "forecast": ahead}[kind] for kind in kinds}
    _check_masks(masks, holdout, forecast, horizon)
    train = tensor.values.copy()
    train[random | ahead] = np.nan
    refit = fit_model(tensor.to_dataarray(train), spec, seed=seed, **fit_kwargs)
    draws = refit.predictive_draws(np.random.default_rng(seed)).values
    draws = draws.reshape(-1, *draws.shape[2:])
    mean = refit.predict().values
    base, base_sd = additive_baseline(train, time_axis=axis)
    rows, pits = {}, {}
    for kind, mask in masks.items():
        y = tensor.values[mask]
        rows[kind], pits[kind] = _score(draws[:, mask], mean[mask], base[mask], base_sd, y,
                                        levels)
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("kind")
    return Calibration(table=table, pit=pits, fit=refit, masks=masks, levels=levels)


def holdout_masks(
    data: Any, seed: int, random_fraction: float = 0.1, series_fraction: float = 0.25,
    horizon: int = 3, *, time_axis: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (shaped like ``data``) of the random and the forecast hidden cells.

    Forecast cells: the last ``horizon`` observed steps of a random ``series_fraction`` of the
    ``(i, j)`` series having at least ``2 * horizon`` observed steps. Random cells: a random
    ``random_fraction`` of the observed cells (the count rounded), drawn outside the forecast
    cells. Cells whose hiding would leave an entry of any dim without an observation stay in
    training (so the training data are valid input of :func:`tensorfact.fit`).

    Args:
        data: an array or DataArray, NaN = missing.
        seed: seed of the choice.
        random_fraction, series_fraction: in ``[0, 1]``; 0 hides nothing of that kind.
        horizon: forecast steps per chosen series.
        time_axis: the time axis of ``data``.
    """
    rng = np.random.default_rng(seed)
    observed = np.moveaxis(np.isfinite(np.asarray(data, dtype=float)), time_axis, -1)
    forecast = np.zeros_like(observed)
    eligible = np.argwhere(observed.sum(-1) >= 2 * horizon)
    chosen = eligible[rng.permutation(len(eligible))[: int(round(series_fraction * len(eligible)))]]
    for i, j in chosen:
        forecast[i, j, np.nonzero(observed[i, j])[0][-horizon:]] = True
    candidates = np.argwhere(observed & ~forecast)
    count = int(round(random_fraction * observed.sum()))
    picked = candidates[rng.permutation(len(candidates))[:count]]
    random = np.zeros_like(observed)
    random[tuple(picked.T)] = True
    for mask in (forecast, random):  # keep every slice identified
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            empty = ~(observed & ~forecast & ~random).any(axis=other)
            if empty.any():
                index: list[Any] = [slice(None)] * 3
                index[axis] = np.nonzero(empty)[0]
                mask[tuple(index)] = False
    return np.moveaxis(random, -1, time_axis), np.moveaxis(forecast, -1, time_axis)


def additive_baseline(train: np.ndarray, time_axis: int = -1) -> tuple[np.ndarray, float]:
    """The two-way additive fit of the training cells on (series, time step), for every cell.

        base[i,j,t] = ybar[i,j,.] + ybar[.,.,t] - ybar[.,.,.]

    (means over the observed training cells; the least-squares two-way fit when they are
    complete). A series without training cells takes the grand mean as its mean. Its
    predictive distribution is ``Normal(base, s)``, ``s`` the root mean square of
    ``y - base`` over the training cells.

    Args:
        train: the training values, NaN where missing or hidden.
        time_axis: the time axis.

    Returns:
        ``base`` (shaped like ``train``) and ``s``.
    """
    y = np.moveaxis(train, time_axis, -1)
    observed = np.isfinite(y)
    filled = np.where(observed, y, 0.0)
    grand = filled.sum() / observed.sum()
    counts = observed.sum(-1)
    series = np.where(counts > 0, filled.sum(-1) / np.maximum(counts, 1), grand)
    steps = filled.sum((0, 1)) / np.maximum(observed.sum((0, 1)), 1)
    base = series[:, :, None] + steps[None, None, :] - grand
    scale = float(np.sqrt(np.mean((y - base)[observed] ** 2)))
    return np.moveaxis(base, -1, time_axis), scale


def crps_from_draws(draws: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample CRPS ``E|X - y| - E|X - X'| / 2`` of each column of ``draws`` at ``y``.

    With the sorted draws ``x_(1) <= ... <= x_(S)``, ``E|X - X'| / 2 = sum_s (2s - S - 1)
    x_(s) / S^2`` (the empirical distribution's, ``X'`` an independent copy), so a cell costs
    ``O(S log S)`` time and ``O(S)`` memory.

    Args:
        draws: ``(S, n)`` predictive draws of ``n`` cells.
        y: ``(n,)`` observed values.
    """
    x = np.sort(np.asarray(draws, dtype=float), axis=0)
    size = x.shape[0]
    weights = (2.0 * np.arange(1, size + 1) - size - 1) / size**2
    return np.mean(np.abs(x - y), axis=0) - weights @ x


def crps_normal(mean: Any, sd: Any, y: Any) -> np.ndarray:
    """Closed-form CRPS of ``Normal(mean, sd)`` at ``y``:
    ``sd (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))``, ``z = (y - mean) / sd``."""
    z = (np.asarray(y) - mean) / sd
    return sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))


# -- helpers ------------------------------------------------------------------------------------
def _score(
    draws: np.ndarray, mean: np.ndarray, base: np.ndarray, base_sd: float, y: np.ndarray,
    levels: tuple[float, ...],
) -> tuple[dict[str, float], np.ndarray]:
    """Table row and PIT values of one kind (``draws`` ``(S, n)``, the rest ``(n,)``)."""
    n = y.size
    row: dict[str, float] = {"cells": n}
    for level in levels:
        low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        row[f"coverage_{_pct(level)}"] = float(np.mean((y >= low) & (y <= high)))
    for level in levels:
        row[f"se_{_pct(level)}"] = math.sqrt(level * (1 - level) / n)
    row["crps"] = float(np.mean(crps_from_draws(draws, y)))
    row["crps_baseline"] = float(np.mean(crps_normal(base, base_sd, y)))
    row["crps_ratio"] = row["crps"] / row["crps_baseline"]
    row["rmse"] = float(np.sqrt(np.mean((mean - y) ** 2)))
    row["rmse_baseline"] = float(np.sqrt(np.mean((base - y) ** 2)))
    row["rmse_ratio"] = row["rmse"] / row["rmse_baseline"]
    return row, np.mean(draws < y, axis=0)


def _pct(level: float) -> str:
    return f"{100 * level:g}"


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1), got {value!r}; pass e.g. "
                        f"{name}=0.1.")
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie in (0, 1) (a fraction), got {value!r}; pass e.g. "
                         f"{name}=0.1.")


def _check_arguments(
    holdout: Any, forecast: Any, horizon: Any, kinds: Any, seed: Any, levels: Any
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Checks :func:`calibrate`'s own arguments; returns ``kinds`` and ``levels`` as tuples."""
    _check_fraction("holdout", holdout)
    _check_fraction("forecast", forecast)
    if isinstance(horizon, (bool, np.bool_)) or not isinstance(horizon, (int, np.integer)):
        raise TypeError(f"horizon must be an integer, got {horizon!r}; pass e.g. horizon=3.")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 (time steps to forecast), got {horizon}; "
                         "pass e.g. horizon=3.")
    if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
        raise ValueError(f"kinds must be a non-empty sequence of {KINDS}, got {kinds!r}; pass "
                         "e.g. kinds=('random',).")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds: unknown or repeated kinds in {list(kinds)!r}; use distinct "
                         f"kinds from {KINDS}.")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}; pass e.g. seed=0.")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}.")
    if isinstance(levels, str) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(f"levels must be a non-empty sequence of numbers in (0, 1), got "
                         f"{levels!r}; pass e.g. levels=(0.5, 0.9).")
    for level in levels:
        _check_fraction("each of levels", level)
    if len({_pct(lv) for lv in levels}) != len(levels):
        raise ValueError(f"levels must be distinct, got {list(levels)}.")
    return tuple(kinds), tuple(float(lv) for lv in levels)


def _check_masks(
    masks: dict[str, np.ndarray], holdout: float, forecast: float, horizon: int
) -> None:
    """Refuses a kind with no hidden cell (too few observed cells to hide one)."""
    fixes = {
        "random": f"raise holdout (now {holdout}) or pass data with more observed cells",
        "forecast": (f"raise forecast (now {forecast}), lower horizon (now {horizon}; a series "
                     f"needs {2 * horizon} observed steps) or pass longer series"),
    }
    for kind, mask in masks.items():
        if not mask.any():
            raise ValueError(f"Too few observed cells to hide any for kind {kind!r} (every "
                             f"candidate is needed to keep the data identified); {fixes[kind]}"
                             ", or drop the kind from kinds.")
