"""Cost of one SVI step of the decorrelated tensor model, by family and size, beside plain
NumPyro AutoNormal on the same model (the per-step floor of the linear-cost issue: <= 1.5x).

The additive model of ``docs/design.md`` section 1 (tensorfact's default spec) on simulated
tensors with 10% of cells missing, at the B3 sizes. Per size, in one process, interleaved
(``common.ms_per_step``: median wall ms of a compiled ``lax.scan`` of SVI steps):

* ``numpyro AutoNormal``: ``TensorModel`` with NumPyro's ``AutoNormal`` and ``optax.adam``;
* ``markov contrasts``: the decorrelated model tensorfact fits (``TensorModel.decorrelated``:
  Markov coupling along time on the Helmert contrasts, dense on the mean chains;
  ``docs/design.md`` section 8.2), coefficients passed as arguments as in tensorfact's SVI;
* ``dense time``: the same parents and rotations with a dense ``T x T`` coupling along time
  for every row (the family before).

The coefficients are the family's initial values (the cost does not depend on them). Writes
``DIR/results.json`` and ``DIR/table.md``.

    python experiments/step_cost.py --out results/step_cost [--sizes 6e3 1e6 ...] [--steps N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers
from numpyro.infer.autoguide import AutoNormal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_b3 import SIZES, _data  # noqa: E402
from common import format_table, ms_per_step, write_json  # noqa: E402

import reparam  # noqa: E402
from reparam.infer.workflow import CoefficientModel  # noqa: E402
from tensorfact.model.tensor import TensorModel  # noqa: E402
from tensorfact.spec import default_spec  # noqa: E402


def families(model: TensorModel) -> dict[str, reparam.DecorrelateMessenger]:
    """The two decorrelated families compared (same parents, rotations and sites)."""
    spec = model.spec
    dims = {s.name: s.dims for s in model.location_sites}
    dense = reparam.decorrelate(
        model, model.decorrelation_config(True), rotate={d: "helmert" for d in spec.other_dims},
        sequence=spec.time, dims=dims,
    )
    return {"markov contrasts": model.decorrelated(True), "dense time": dense}


def initial_coefficients(decorrelated: reparam.DecorrelateMessenger, args: tuple) -> dict:
    """The coefficients (``numpyro.param`` sites) at their initial values."""
    trace = handlers.trace(handlers.seed(decorrelated, 0)).get_trace(*args)
    return {k: v["value"] for k, v in trace.items() if v["type"] == "param"}


def measure(size: str, steps: int, repeats: int) -> list[dict]:
    """ms per step of each method at one size."""
    data = _data(size)
    model = TensorModel(default_spec(data.dims), dict(zip(data.dims, data.shape, strict=True)))
    args = (jnp.asarray(np.nan_to_num(data.values), jnp.float32),
            jnp.asarray(np.isfinite(data.values)))
    optimizer = optax.adam(0.005)
    runs = {"numpyro AutoNormal": (model, AutoNormal(model), optimizer, args, {})}
    counts = {"numpyro AutoNormal": 0}
    for label, decorrelated in families(model).items():
        coefficients = initial_coefficients(decorrelated, args)
        counts[label] = int(sum(np.size(v) for v in coefficients.values()))
        wrapped = CoefficientModel(decorrelated)
        runs[label] = (wrapped, AutoNormal(wrapped), optimizer, args,
                       {"coefficients": coefficients})
    started = time.perf_counter()
    ms = ms_per_step(runs, steps=steps, repeats=repeats)
    seconds = time.perf_counter() - started
    base = ms["numpyro AutoNormal"]
    return [{"size": size, "cells": int(np.prod(data.shape)), "method": name,
             "ms_per_step": value, "vs_numpyro": value / base, "coefficients": counts[name],
             "seconds_incl_compile": seconds} for name, value in ms.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=50, help="steps per timed scan")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in options.sizes:
        rows += measure(size, options.steps, options.repeats)
        print(rows[-3:], flush=True)
        jax.clear_caches()
    write_json(options.out / "results.json", {"rows": rows, "steps": options.steps})
    table = format_table(rows, ["size", "cells", "method", "ms_per_step", "vs_numpyro",
                                "coefficients"])
    (options.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
