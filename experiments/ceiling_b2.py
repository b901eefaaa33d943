"""Ceiling of decorrelation families on B2: the best mean-field fit each family can reach.

With the scales fixed at their true values the posterior of the location effects is Gaussian
(``tensorfact.testing.dense``). For each family and each fraction of missing cells this computes,
deterministically (``reparam.ceiling``), the KL of the best mean-field Gaussian in the family's
coordinates at the projected exact conditional (and after ``--steps`` L-BFGS iterations), and
the implied marginal sds against the exact ones: minimum ratio and fraction of elements within
[0.8, 1.25]. Families:

* chosen: Helmert rotation along the non-time dims, every effect shifted by all earlier ones,
  Markov coupling along time on the contrasts and dense on the mean chains (tensorfact's
  default, ``markov="contrasts"``);
* chosen, block start coefficients: the default family at the coefficients of the block start
  (``tensorfact.model.block_gaussian``: Helmert blocks with the observed weight per time step,
  no dense matrix) instead of the projection of the exact factor;
* dense time: the same with a dense lower-triangular coupling along time for every row (the
  default before);
* band 3: the same with couplings along time limited to lags <= 3;
* markov band k: Helmert rotation and all earlier parents, the within-site coupling in the
  Markov (bidiagonal inverse) form and parent couplings along time banded to offsets <= k:
  ``O(T)`` coefficients and apply per row (``reparam.family``);
* no time coupling: rotations and shifts, but no coupling along time;
* unrotated: the same parents without rotations or time coupling (``docs/design.md``'s naive
  family).

    python experiments/ceiling_b2.py --out results/ceiling [--quick] [--steps N]
        [--missing 0 0.1 0.3] [--families markov]  (substring filter on the family labels)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, write_json  # noqa: E402

import reparam  # noqa: E402
from tensorfact.model.block_gaussian import BlockGaussian  # noqa: E402
from tensorfact.model.tensor import TensorModel  # noqa: E402
from tensorfact.simulate import B2_SIZES, B2_TRUTH, simulate_additive  # noqa: E402
from tensorfact.spec import default_spec  # noqa: E402
from tensorfact.testing.dense import GaussianOracle  # noqa: E402


def families(model: TensorModel) -> dict[str, reparam.DecorrelateMessenger]:
    spec = model.spec
    config = model.decorrelation_config(True)
    dims = {s.name: s.dims for s in model.location_sites}
    rotate = {d: "helmert" for d in spec.other_dims}
    no_within = {k: reparam.Affine(tuple(v), within=False) for k, v in config.items()}
    return {
        "chosen (helmert, markov contrasts)": model.decorrelated(True),
        "dense time": reparam.decorrelate(model, config, rotate=rotate, sequence=spec.time,
                                          dims=dims),
        "band 3": reparam.decorrelate(model, config, rotate=rotate, sequence=spec.time,
                                      band=3, dims=dims),
        **{f"markov band {band}": reparam.decorrelate(
            model, config, rotate=rotate, sequence=spec.time, band=band, markov=True, dims=dims)
           for band in (1, 3, 8)},
        "no time coupling": reparam.decorrelate(model, no_within, rotate=rotate, dims=dims),
        "unrotated": reparam.decorrelate(model, no_within, dims=dims),
    }


def _variants(model: TensorModel, point: dict, args: tuple):
    """``(label, initial coefficients or None for the exact projection, family)``; the default
    family also with the coefficients of the block start (``BlockGaussian``)."""
    for label, decorrelated in families(model).items():
        yield label, None, decorrelated
        if label.startswith("chosen"):
            block = BlockGaussian(decorrelated, model, point, *args)
            plan = block.plan
            linear = {f"{n}_{k}" for n, f in plan.families.items() for k in f.param_shapes()}
            coefficients = block.coefficients(point)
            yield ("chosen, block start coefficients",
                   {k: v for k, v in coefficients.items() if k in linear}, decorrelated)


def run(out: Path, quick: bool, steps: int, missing_levels=None, only=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if missing_levels is None:
        missing_levels = (0.0, 0.2) if quick else (0.0, 0.02, 0.08, 0.2)
    for missing in missing_levels:
        data, _ = simulate_additive(B2_SIZES, seed=0, missing=missing)
        y = np.nan_to_num(data.values).astype(np.float32)
        mask = np.isfinite(data.values)
        model = TensorModel(default_spec(data.dims), dict(zip(data.dims, data.shape, strict=True)))
        hyper = {k: v for k, v in B2_TRUTH.items() if k != "mu"}
        posterior = GaussianOracle(model, y, mask).posterior(hyper)
        point = {**model.initial_point(y, mask), **hyper}
        args = (jnp.asarray(y), jnp.asarray(mask))
        for label, init, decorrelated in _variants(model, point, args):
            if only and not any(word in label for word in only):
                continue
            plan = reparam.LocalGaussian(decorrelated, point, *args).plan
            start = time.perf_counter()
            result = reparam.ceiling(plan, posterior.precision, steps=steps, init=init)
            ratios = np.concatenate(
                [np.ravel(result.sds[k] / posterior.sd[k]) for k in posterior.sd]
            )
            rows.append({
                "missing": missing,
                "family": label,
                "kl_projection": result.kl_history[0],
                "kl_optimised": result.kl,
                "min_sd_ratio": float(ratios.min()),
                "mu_sd_ratio": float(np.ravel(result.sds["mu"] / posterior.sd["mu"])[0]),
                "in_band": float(np.mean((ratios >= 0.8) & (ratios <= 1.25))),
                "coefficients": int(sum(np.size(v) for v in result.coefficients.values())),
                "seconds": time.perf_counter() - start,
            })
            print(rows[-1], flush=True)
    payload = {"rows": rows, "lbfgs_steps": steps, "quick": quick}
    write_json(out / "results.json", payload)
    table = format_table(rows, ["missing", "family", "kl_projection", "kl_optimised",
                                "min_sd_ratio", "mu_sd_ratio", "in_band", "coefficients"])
    (out / "table.txt").write_text(table + "\n")
    print(table)
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="two missing levels")
    parser.add_argument("--steps", type=int, default=30, help="L-BFGS iterations")
    parser.add_argument("--missing", type=float, nargs="*", help="fractions of cells missing")
    parser.add_argument("--families", nargs="*", help="run only families whose label has one "
                        "of these words")
    args = parser.parse_args()
    run(args.out, args.quick, args.steps, args.missing, args.families)


if __name__ == "__main__":
    main()
