"""Metrics, timing and plotting shared by the benchmark scripts (``docs/design.md`` section 5)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from numpyro.infer import SVI, Trace_ELBO


def steps_to_plateau(losses: np.ndarray, window: int = 200, tail: int = 2000) -> int | None:
    """First step after which the trailing mean of the loss (over the last ``window`` steps, or
    all steps so far during the first ``window``) stays within 1 nat of the mean of the last
    ``tail`` steps; ``None`` if the run is too short to tell. 0 means the loss starts there."""
    losses = np.asarray(losses, np.float64)
    if len(losses) < tail + window:
        return None
    sums = np.concatenate([[0.0], np.cumsum(losses)])
    ends = np.arange(1, len(losses) + 1)
    starts = np.maximum(ends - window, 0)
    trailing = (sums[ends] - sums[starts]) / (ends - starts)
    outside = np.nonzero(np.abs(trailing - losses[-tail:].mean()) > 1.0)[0]
    if len(outside) == 0:
        return 0
    last = int(outside[-1])  # the trailing mean ending at this step is still outside
    return last + 1 if last + 1 < len(losses) - tail else None


def sd_ratio_table(
    draws: Mapping[str, np.ndarray],
    reference_mean: Mapping[str, np.ndarray],
    reference_sd: Mapping[str, np.ndarray],
    band: tuple[float, float] = (0.8, 1.25),
) -> dict[str, dict[str, float]]:
    """Per effect: sd ratio min/median/max, fraction in ``band``, max |mean error| in sds."""
    table = {}
    for name, ref_sd in reference_sd.items():
        values = np.asarray(draws[name]).reshape((-1,) + np.shape(ref_sd))
        ratio = np.ravel(values.std(0) / ref_sd)
        error = np.ravel(np.abs(values.mean(0) - reference_mean[name]) / ref_sd)
        table[name] = {
            "sd_ratio_min": float(ratio.min()),
            "sd_ratio_median": float(np.median(ratio)),
            "sd_ratio_max": float(ratio.max()),
            "in_band": float(np.mean((ratio >= band[0]) & (ratio <= band[1]))),
            "mean_error_max": float(error.max()),
            "mean_error_median": float(np.median(error)),
        }
    return table


def ms_per_step(
    runs: Mapping[str, tuple[Callable, Callable, optax.GradientTransformation, tuple, dict]],
    *,
    steps: int = 500,
    repeats: int = 7,
    rng_key: jax.Array | None = None,
) -> dict[str, float]:
    """Median wall ms per compiled SVI step for each named (model, guide, optimizer, args,
    kwargs), interleaving the runs so that machine noise hits all of them alike."""
    key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    compiled = {}
    for name, (model, guide, optimizer, args, kwargs) in runs.items():
        svi = SVI(model, guide, optimizer, Trace_ELBO())
        state = svi.init(key, *args, **kwargs)

        def scan(state, svi=svi, args=args, kwargs=kwargs):
            def body(state, _):
                return svi.update(state, *args, **kwargs)

            return jax.lax.scan(body, state, None, length=steps)

        run = jax.jit(scan)
        jax.block_until_ready(run(state))
        compiled[name] = (run, state)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (run, state) in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(run(state))
            samples[name].append((time.perf_counter() - start) / steps * 1e3)
    return {name: float(np.median(values)) for name, values in samples.items()}


def plot_losses(
    curves: Mapping[str, np.ndarray], path: Path, title: str, smooth: int = 100
) -> None:
    """Loss traces (raw, faint) and trailing means on a log-step axis, one colour each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, losses in curves.items():
        losses = np.asarray(losses)
        steps = np.arange(1, len(losses) + 1)
        (line,) = ax.plot(steps, losses, alpha=0.2, lw=0.6)
        if len(losses) > smooth:
            mean = np.convolve(losses, np.ones(smooth) / smooth, mode="valid")
            ax.plot(steps[smooth - 1 :], mean, color=line.get_color(), lw=1.6, label=name)
        else:
            line.set_label(name)
    finite = np.concatenate([np.asarray(v)[len(v) // 10 :] for v in curves.values()])
    low, high = np.percentile(finite, [0.5, 99])
    ax.set_ylim(low - 0.05 * (high - low), high + 0.3 * (high - low))
    ax.set_xscale("log")
    ax.set_xlabel("SVI step")
    ax.set_ylabel("loss = -ELBO (nats)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_json(path: Path, payload: Any) -> None:
    def default(value):
        if isinstance(value, (np.floating, np.integer)):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        raise TypeError(type(value))

    path.write_text(json.dumps(payload, indent=2, default=default))


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table (for stdout and results files)."""
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)
