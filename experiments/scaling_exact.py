"""Scaling of the exact collapsed likelihood: dense oracle vs the structured paths.

For the default model (B2 priors and truth, 10% of cells missing) it times one evaluation of
``log p(y_obs | h)`` plus its gradient in the 7 scales (float64, compiled, compile time
reported separately, the minimum over repeats):

* ``dense``: ``tensorfact.testing.dense.GaussianOracle.log_marginal`` (dense design and Cholesky,
  ``O(N dim^2 + dim^3)`` with ``dim = 1 + I + J + I J + T (1 + I + J)``), only as far as it fits;
* ``structured``: ``tensorfact.collapsed.CollapsedGaussian.log_marginal`` (block elimination of
  the static effects plus a block-tridiagonal Cholesky along time, ``O(T (p^3 + p^2 S + p S^2)
  + ns^3)`` with ``S = I J`` series, ``p = 1 + I + J``, ``ns = 1 + I + J + I J``);
* ``kronecker``: ``tensorfact.collapsed.KroneckerGaussian.log_marginal`` on the same tensor
  with every cell observed (it needs complete data and shared noise): four dense ``T x T``
  factors per evaluation, ``O(T^3)`` whatever ``I, J`` (the data enter through scatter
  matrices computed once, reported as ``setup_s``); timed up to ``--kronecker-max-steps``.

Table 1 grows ``T`` at B2's ``I x J = 20 x 10`` up to 1e6 cells (linear in ``T``); table 2
(``--series``) grows the number of series at fixed ``T`` to show the cost in ``I, J``. Where
both paths run, the absolute difference of their values is reported. Writes
``DIR/results.json`` and ``DIR/scaling_exact.png``.

    python experiments/scaling_exact.py --out results/scaling_exact [--quick]
"""

from __future__ import annotations

import argparse
import os

# One BLAS thread: on a shared CPU, OpenBLAS's worker threads spin and made each LAPACK call
# (Cholesky, triangular solves) 5-20x slower in CPU time (measured here); set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, write_json  # noqa: E402

from tensorfact.collapsed import CollapsedGaussian, KroneckerGaussian  # noqa: E402
from tensorfact.model.tensor import TensorModel  # noqa: E402
from tensorfact.simulate import B2_TRUTH, simulate_additive  # noqa: E402
from tensorfact.spec import default_spec  # noqa: E402
from tensorfact.testing.dense import GaussianOracle  # noqa: E402

COLUMNS = ["I", "J", "T", "cells", "path", "seconds", "compile_s", "setup_s",
           "abs_diff_vs_dense"]


def problem(sizes: dict[str, int], seed: int, missing: float):
    data, _ = simulate_additive(sizes, seed=seed, missing=missing)
    model = TensorModel(default_spec(data.dims), dict(zip(data.dims, data.shape, strict=True)))
    return model, data.values, np.isfinite(data.values)


def time_compiled(fn, args, budget: float = 3.0, max_repeats: int = 7):
    """Compile seconds, min and median seconds per call (repeats within ``budget`` seconds)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    times: list[float] = []
    while len(times) < max_repeats and (len(times) < 2 or sum(times) < budget):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return out, compile_s, float(np.min(times)), float(np.median(times))


def measure(sizes: dict[str, int], *, dense: bool, seed: int, missing: float,
            kronecker: bool = True) -> list[dict]:
    model, y, mask = problem(sizes, seed, missing)
    hyper = {k: jnp.asarray(v, jnp.float64) for k, v in B2_TRUTH.items() if k != "mu"}
    (ni, nj, nt), cells = sizes.values(), int(np.prod(list(sizes.values())))
    base = {"I": ni, "J": nj, "T": nt, "cells": cells, "observed": int(mask.sum())}
    rows = []
    structured = CollapsedGaussian(model, y, mask)
    data = jax.tree_util.tree_map(jnp.asarray, structured.data)
    fn = jax.jit(jax.value_and_grad(structured.log_marginal))
    (value, _), compile_s, best, median = time_compiled(fn, (hyper, data))
    rows.append({**base, "path": "structured", "seconds": best, "median_s": median,
                 "compile_s": compile_s, "value": float(value)})
    if dense:
        oracle = GaussianOracle(model, np.nan_to_num(y), mask)
        dense_fn = jax.jit(jax.value_and_grad(oracle.log_marginal))
        (dense_value, _), compile_s, best, median = time_compiled(dense_fn, (hyper,))
        diff = abs(float(dense_value) - float(value))
        rows.append({**base, "path": "dense", "seconds": best, "median_s": median,
                     "compile_s": compile_s, "value": float(dense_value),
                     "abs_diff_vs_dense": diff})
        rows[0]["abs_diff_vs_dense"] = diff
    if kronecker:
        complete = np.where(mask, y, 0.0)  # the same values, every cell observed
        start = time.perf_counter()
        kron = KroneckerGaussian(model, complete, np.ones_like(mask))
        setup_s = time.perf_counter() - start
        kron_data = jax.tree_util.tree_map(jnp.asarray, kron.data)
        kron_fn = jax.jit(jax.value_and_grad(kron.log_marginal))
        (kron_value, _), compile_s, best, median = time_compiled(kron_fn, (hyper, kron_data))
        rows.append({**base, "observed": cells, "path": "kronecker", "seconds": best,
                     "median_s": median, "compile_s": compile_s, "setup_s": setup_s,
                     "value": float(kron_value)})
    for row in rows:
        print(format_table([row], COLUMNS).splitlines()[1], flush=True)
    return rows


def plot(time_rows: list[dict], series_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if series_rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.4), squeeze=False)
    ax = axes[0, 0]
    for name, marker in [("structured", "o"), ("dense", "s"), ("kronecker", "^")]:
        rows = [r for r in time_rows if r["path"] == name]
        if rows:
            ax.plot([r["cells"] for r in rows], [r["seconds"] for r in rows], marker=marker,
                    label=name)
    rows = [r for r in time_rows if r["path"] == "structured"]
    cells = np.array([r["cells"] for r in rows], float)
    ax.plot(cells, rows[-1]["seconds"] * cells / cells[-1], "k:", lw=1, label="slope 1")
    ax.set(xscale="log", yscale="log", xlabel="cells (I x J x T, I=20, J=10)",
           ylabel="seconds per log p(y|h) + gradient", title="growing T")
    ax.legend()
    if series_rows:
        ax = axes[0, 1]
        for name, marker in [("structured", "o"), ("dense", "s"), ("kronecker", "^")]:
            rows = [r for r in series_rows if r["path"] == name]
            if rows:
                ax.plot([r["I"] * r["J"] for r in rows], [r["seconds"] for r in rows],
                        marker=marker, label=name)
        ax.set(xscale="log", yscale="log", xlabel=f"series I x J (T={series_rows[0]['T']})",
               ylabel="seconds", title="growing I x J")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run(out: Path, quick: bool, dense_max_cells: int, missing: float, seed: int,
        series: bool = False, kronecker_max_steps: int = 1000) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    steps = [10, 30, 100, 1000] if quick else [30, 100, 300, 1000, 5000]
    dense_max = min(dense_max_cells, 6000) if quick else dense_max_cells
    with jax.enable_x64(True):
        print("-- growing T (I=20, J=10) --\n" + "  ".join(COLUMNS), flush=True)
        time_rows = []
        for nt in steps:
            sizes = {"i": 20, "j": 10, "t": nt}
            time_rows += measure(sizes, dense=20 * 10 * nt <= dense_max, seed=seed,
                                 missing=missing, kronecker=nt <= kronecker_max_steps)
        series_rows = []
        if series:
            print("-- growing I x J (T=100) --\n" + "  ".join(COLUMNS), flush=True)
            for ni, nj in [(5, 4), (10, 5), (20, 10), (40, 20), (60, 30)]:
                sizes = {"i": ni, "j": nj, "t": 100}
                series_rows += measure(sizes, dense=ni * nj * 100 <= dense_max, seed=seed,
                                       missing=missing)
    payload = {
        "command": " ".join(sys.argv),
        "missing": missing,
        "devices": [str(d) for d in jax.devices()],
        "growing_T": time_rows,
        "growing_series": series_rows,
    }
    write_json(out / "results.json", payload)
    plot(time_rows, series_rows, out / "scaling_exact.png")
    text = format_table(time_rows, COLUMNS)
    if series_rows:
        text += "\n\n" + format_table(series_rows, COLUMNS)
    (out / "table.txt").write_text(text + "\n")
    print("\n" + text)
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument("--dense-max-cells", type=int, default=20000,
                        help="largest tensor for the dense path (its design is cells x dim)")
    parser.add_argument("--missing", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--series", action="store_true",
                        help="also the table growing I x J at T=100")
    parser.add_argument("--kronecker-max-steps", type=int, default=1000,
                        help="longest series timed on the Kronecker path (its cost is T^3)")
    args = parser.parse_args()
    run(args.out, args.quick, args.dense_max_cells, args.missing, args.seed, args.series,
        args.kronecker_max_steps)


if __name__ == "__main__":
    main()
