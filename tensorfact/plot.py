"""Plots: ELBO convergence (one or several fits) and effects with credible bands.

matplotlib is imported inside the functions, so importing tensorfact does not load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reparam.names import SHIFT_INFIX, WITHIN_KEY, child_param


def _axes(ax: Any) -> Any:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    return ax


def plot_elbo(
    fits: Sequence[Any],
    labels: Sequence[str] | None = None,
    ax: Any = None,
    *,
    log_steps: bool = True,
    smooth: int = 100,
) -> Any:
    """Overlays the SVI loss traces (-ELBO) of several fits.

    Each trace is drawn faintly with its ``smooth``-step trailing mean on top. The y-range
    ignores the first tenth of each trace, so the converged part stays readable.

    Args:
        fits: fits with ``losses`` (e.g. decorrelation on and off).
        labels: legend labels (default: from each fit's decorrelation setting).
        ax: matplotlib axes to draw on (default: a new figure).
        log_steps: logarithmic step axis.
        smooth: window of the trailing mean.

    Returns:
        The axes.

    Raises:
        ValueError: if a fit has no loss trace (e.g. NUTS without SVI) or labels mismatch.
    """
    fits = list(fits)
    if labels is not None and len(labels) != len(fits):
        raise ValueError(f"{len(labels)} labels for {len(fits)} fits.")
    ax = _axes(ax)
    tails = []
    for k, fit in enumerate(fits):
        if fit.losses is None or len(fit.losses) == 0:
            raise ValueError("This fit has no SVI loss trace to plot.")
        losses = np.asarray(fit.losses)
        label = labels[k] if labels is not None else _default_label(fit)
        steps = np.arange(1, len(losses) + 1)
        (line,) = ax.plot(steps, losses, alpha=0.25, lw=0.6)
        if len(losses) > smooth > 1:
            mean = np.convolve(losses, np.ones(smooth) / smooth, mode="valid")
            ax.plot(steps[smooth - 1 :], mean, color=line.get_color(), lw=1.8, label=label)
        else:
            line.set_label(label)
        tails.append(losses[len(losses) // 10 :])
    low, high = np.percentile(np.concatenate(tails), [0.5, 99.5])
    pad = 0.05 * (high - low) if high > low else 1.0
    ax.set_ylim(low - pad, high + 4 * pad)
    if log_steps:
        ax.set_xscale("log")
    ax.set_xlabel("SVI step")
    ax.set_ylabel("loss = -ELBO (nats)")
    ax.legend()
    return ax


def decorrelated_effects(fit: Any) -> list[str]:
    """The effects a fit actually decorrelated: switched on (``fit.decorrelate``) and a
    decorrelated child of the model, i.e. with coefficients of its own in ``fit.coefficients``
    (``f"{effect}_shift_{parent}"`` or ``f"{effect}_within"``). The first effect without time
    dims (the grand mean ``mu`` of the default spec) has no parents and is never a child,
    whatever its switch says."""
    coefficients = getattr(fit, "coefficients", None) or {}

    def child(name: str) -> bool:
        within = child_param(name, WITHIN_KEY)
        return any(k == within or k.startswith(name + SHIFT_INFIX) for k in coefficients)

    return [name for name, on in fit.decorrelate.items() if on and child(name)]


def _default_label(fit: Any) -> str:
    """Legend label from what the fit decorrelated (see :func:`decorrelated_effects`):
    ``"decorrelated"`` when every switch is on, ``"plain (no decorrelation)"`` when no effect
    was decorrelated, else ``"decorrelated: "`` and the decorrelated effects."""
    on = decorrelated_effects(fit)
    if not on:
        return "plain (no decorrelation)"
    if all(fit.decorrelate.values()):
        return "decorrelated"
    return "decorrelated: " + ", ".join(on)


def plot_effect(fit: Any, name: str, ax: Any = None, *, prob: float = 0.9,
                max_series: int = 6) -> Any:
    """Posterior mean and central ``prob`` band of an effect, labelled by coords.

    Effects over time are drawn against the time coordinate, one line per row (up to
    ``max_series`` rows); other effects as points with interval bars.
    """
    if name not in fit.posterior:
        raise ValueError(f"Unknown effect {name!r}; available: {list(fit.posterior.data_vars)}.")
    ax = _axes(ax)
    values = fit.posterior[name].stack(sample=("chain", "draw"))
    lower, upper = (1 - prob) / 2, (1 + prob) / 2
    mean = values.mean("sample")
    band = values.quantile([lower, upper], dim="sample")
    time = fit.spec.time
    if time in values.dims:
        rows = [d for d in mean.dims if d != time]
        series = [{}] if not rows else [
            {rows[0]: label} for label in mean[rows[0]].values[:max_series]
        ]
        x = mean[time].values
        for selection in series:
            m = mean.sel(selection)
            b = band.sel(selection)
            (line,) = ax.plot(x, m.values, label=", ".join(str(v) for v in selection.values())
                              or name)
            ax.fill_between(x, b.isel(quantile=0).values, b.isel(quantile=1).values,
                            color=line.get_color(), alpha=0.2)
        ax.set_xlabel(time)
        if np.issubdtype(np.asarray(x).dtype, np.integer):
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if rows:
            ax.legend(title=rows[0], fontsize="small")
    else:
        flat_mean = np.ravel(mean.values)
        flat_band = band.values.reshape(2, -1)
        labels = [str(v) for v in np.ravel(mean[mean.dims[0]].values)] if mean.dims else [name]
        if len(mean.dims) > 1:
            labels = [str(k) for k in range(flat_mean.size)]
        x = np.arange(flat_mean.size)
        ax.errorbar(x, flat_mean, yerr=[flat_mean - flat_band[0], flat_band[1] - flat_mean],
                    fmt="o", ms=3)
        if len(labels) <= 30:
            ax.set_xticks(x, labels, rotation=60, fontsize="small")
    ax.set_title(f"{name}: posterior mean and {prob:.0%} band")
    return ax
