"""B3 scale: tensorfact's decorrelated and plain SVI beside plain NumPyro AutoNormal, by size.

The additive model of ``docs/design.md`` section 1 (tensorfact's default spec) on simulated
tensors with 10% of cells missing, at the B3 sizes of section 5. Each (size, method) runs in its
own process, so its peak resident memory is its own:

* ``tensorfact decorrelated``: ``tensorfact.fit(data)`` defaults (decorrelated mean-field SVI
  from the Gaussian start, coefficient refreshes);
* ``tensorfact plain``: ``tensorfact.fit(data, decorrelate=False)`` (matrix-free start above
  ``reparam.start.DENSE_LIMIT`` location dims);
* ``numpyro AutoNormal``: the same model (``tensorfact.model.tensor.TensorModel``) with NumPyro's
  ``AutoNormal`` and ``optax.adam(0.005)``, stepped by one jitted ``SVI.update``.

Per run: total wall seconds (compile included), seconds outside the SVI steps (start, draws),
ms per step (the SVI loop's wall time over its steps), steps to plateau (``common.py``; needs
at least 2,200 steps), refreshes, peak RSS. A decorrelated start that would not fit in memory is
refused by tensorfact with a message, reported as such. Writes ``DIR/results.json``,
``DIR/table.md`` and ``DIR/scaling.png`` (log-log total time and peak memory against cells).

    python experiments/benchmark_b3.py --out results/b3 [--quick] [--steps N] [--sizes K ...]

``--quick``: 6e3, 4.8e4 and 3.2e5 cells, 300 steps. Full: 6e3 ... 1e7 cells, 3,000 steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, steps_to_plateau, write_json  # noqa: E402

SIZES = {  # cells -> (i, j, t)
    "6e3": (20, 10, 30),
    "4.8e4": (40, 20, 60),
    "3.2e5": (80, 40, 100),
    "1e6": (100, 50, 200),
    "1e7": (200, 100, 500),
}
QUICK_SIZES = ("6e3", "4.8e4", "3.2e5")
METHODS = ("tensorfact decorrelated", "tensorfact plain", "numpyro AutoNormal")


def _data(size: str):
    import tensorfact

    i, j, t = SIZES[size]
    data, _ = tensorfact.simulate_additive({"i": i, "j": j, "t": t}, seed=0, missing=0.1)
    return data


def _tensorfact(size: str, steps: int, decorrelate: bool) -> dict:
    import tensorfact

    data = _data(size)
    started = time.perf_counter()
    try:
        fit = tensorfact.fit(data, seed=0, decorrelate=decorrelate, num_steps=steps,
                             num_draws=100, stop_at_plateau=False)
    except ValueError as err:
        return {"status": f"refused: {err}"}
    total = time.perf_counter() - started
    losses = np.asarray(fit.losses)
    return {
        "status": "ok", "total_s": total, "outside_steps_s": total - fit.info["svi_seconds"],
        "ms_per_step": 1e3 * fit.info["svi_seconds"] / len(losses),
        "steps": len(losses), "refreshes": len(fit.info["svi_refreshes"]),
        "steps_to_plateau": steps_to_plateau(losses), "final_loss": float(losses[-1]),
    }


def _numpyro(size: str, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    from tensorfact.model.tensor import TensorModel
    from tensorfact.spec import default_spec

    data = _data(size)
    started = time.perf_counter()
    model = TensorModel(default_spec(data.dims), dict(zip(data.dims, data.shape, strict=True)))
    y = jnp.asarray(np.nan_to_num(data.values), jnp.float32)
    mask = jnp.asarray(np.isfinite(data.values))
    svi = SVI(model, AutoNormal(model), optax.adam(0.005), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), y, mask)
    update = jax.jit(svi.update)
    state, loss = update(state, y, mask)  # compile
    jax.block_until_ready(loss)
    losses = [float(loss)]
    loop = time.perf_counter()
    for _ in range(steps - 1):
        state, loss = update(state, y, mask)
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses), np.float64)
    seconds = time.perf_counter() - loop
    total = time.perf_counter() - started
    return {
        "status": "ok", "total_s": total, "outside_steps_s": total - seconds,
        "ms_per_step": 1e3 * seconds / (steps - 1), "steps": steps, "refreshes": 0,
        "steps_to_plateau": steps_to_plateau(losses), "final_loss": float(losses[-1]),
    }


def worker(method: str, size: str, steps: int) -> dict:
    """One (method, size) run in this process; adds the process's peak RSS."""
    if method == "numpyro AutoNormal":
        row = _numpyro(size, steps)
    else:
        row = _tensorfact(size, steps, decorrelate=method == "tensorfact decorrelated")
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return row


def _run(method: str, size: str, steps: int, timeout: float) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--sizes", size,
               "--steps", str(steps)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": f"failed (exit {done.returncode}): {tail[0][:200]}"}
    return json.loads(lines[-1])


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in METHODS:
        done = [r for r in rows if r["method"] == method and r["status"] == "ok"]
        cells = [r["cells"] for r in done]
        axes[0].plot(cells, [r["total_s"] for r in done], "o-", label=method)
        axes[1].plot(cells, [r["peak_rss_gb"] for r in done], "o-", label=method)
    for ax, label in zip(axes, ("total seconds", "peak RSS (GB)"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel="cells", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle("B3 scaling (10% missing)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sizes", nargs="*", choices=sorted(SIZES))
    parser.add_argument("--methods", nargs="*", choices=METHODS)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (300 if args.quick else 3000)
    if args.worker:
        print(json.dumps(worker(args.worker, args.sizes[0], steps)))
        return
    if args.out is None:
        parser.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = args.sizes or (QUICK_SIZES if args.quick else tuple(SIZES))
    rows = []
    for size in sizes:
        for method in args.methods or METHODS:
            row = {"size": size, "cells": int(np.prod(SIZES[size])), "method": method,
                   **_run(method, size, steps, args.timeout)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_json(args.out / "results.json", {"rows": rows, "steps": steps})
    columns = ["size", "method", "status", "total_s", "outside_steps_s", "ms_per_step",
               "steps_to_plateau", "refreshes", "peak_rss_gb"]
    table = format_table([{**r, "status": r["status"][:60]} for r in rows], columns)
    (args.out / "table.md").write_text(table + "\n")
    _plot(rows, args.out / "scaling.png")
    print(table)


if __name__ == "__main__":
    main()
