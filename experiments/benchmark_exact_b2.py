"""Benchmark B2 for exact inference: collapsed NUTS vs plain NUTS vs decorrelated SVI/NUTS.

B2 (20 x 10 x 30, truth and priors of ``benchmark_b2.py``, same data). Compared in one process:

* collapsed NUTS (``tensorfact.collapsed``): NUTS over the 7 scales with the location effects
  integrated out exactly, then one exact conditional draw of the effects per draw; B2 is
  complete, so ``algebra="auto"`` takes the Kronecker path (``--algebra kalman`` forces the
  Kalman-structured one);
* plain (centred) NUTS on the model, started at the decorrelated SVI median;
* decorrelated mean-field SVI (tensorfact's default workflow);
* NUTS on the decorrelated model with the SVI coefficients frozen.

Reference: the importance-sampled exact posterior of ``benchmark_b2.py`` (cached as
``OUT/reference.npz``; ``--reference`` reuses another run's cache). Targets checked: collapsed
NUTS max r-hat <= 1.01, its min bulk ESS/s (all effects and scales, wall time including compile,
warmup and the conditional draws) at least 1000x plain NUTS, and posterior sds within
[0.9, 1.1] of the reference for >= 95% of effect elements.

    python experiments/benchmark_exact_b2.py --out results/exact_b2 [--quick]
        [--algebra auto|kronecker|kalman] [--plain-nuts CHAINS WARMUP SAMPLES]
"""

from __future__ import annotations

import argparse
import os

# One BLAS thread: on a shared CPU, OpenBLAS's worker threads spin and made each LAPACK call
# (Cholesky, triangular solves) 5-20x slower in CPU time (measured here); set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_b2 import load_problem, reference  # noqa: E402
from common import format_table, sd_ratio_table, write_json  # noqa: E402

from reparam.infer import fit_nuts, fit_svi, run_nuts  # noqa: E402
from tensorfact.collapsed import collapsed_nuts  # noqa: E402

HYPER_SITES = ["s_a", "s_b", "s_C", "s_z", "s_A", "s_B", "sigma"]
COLUMNS = ["method", "seconds", "min_bulk_ess", "ess_per_second", "max_rhat", "divergences",
           "mean_leapfrog_steps", "min_in_band", "in_0.9_1.1", "max_mean_error_sd"]


def accuracy(draws, ref_mean, ref_sd) -> dict:
    """sd-ratio table per effect plus the fraction of all elements with ratio in [0.9, 1.1]."""
    flat = {k: np.asarray(v).reshape((-1,) + np.shape(ref_sd[k])) for k, v in draws.items()
            if k in ref_sd}
    table = sd_ratio_table(flat, ref_mean, ref_sd)
    ratios = np.concatenate([np.ravel(flat[k].std(0) / ref_sd[k]) for k in ref_sd])
    return {
        "per_effect": table,
        "min_in_band": min(v["in_band"] for v in table.values()),
        "in_0.9_1.1": float(np.mean((ratios >= 0.9) & (ratios <= 1.1))),
        "sd_ratio_range": [float(ratios.min()), float(ratios.max())],
        "max_mean_error_sd": max(v["mean_error_max"] for v in table.values()),
    }


def nuts_row(name, samples, diagnostics, ref_mean, ref_sd) -> dict:
    d = diagnostics
    return {"method": name, "seconds": d.seconds, "min_bulk_ess": d.min_ess,
            "ess_per_second": d.ess_per_second, "max_rhat": d.max_rhat,
            "divergences": d.divergences, "mean_leapfrog_steps": d.mean_steps,
            **accuracy(samples, ref_mean, ref_sd)}


def run(out: Path, quick: bool, reference_cache: Path | None, algebra: str = "auto",
        plain_nuts: tuple[int, int, int] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if reference_cache is not None and reference_cache.exists():
        if not (out / "reference.npz").exists():
            shutil.copy(reference_cache, out / "reference.npz")
    model, y, mask, _ = load_problem()
    args = (jnp.asarray(y), jnp.asarray(mask))
    sites = [s.name for s in model.location_sites]
    report = sites + HYPER_SITES
    chains, warmup, samples = (2, 300, 300) if quick else (4, 500, 1000)
    plain_chains, plain_warmup, plain_samples = plain_nuts or (
        (2, 100, 100) if quick else (chains, warmup, samples))
    t0 = time.perf_counter()
    ref_mean, ref_sd, mode, ess = reference(model, y, mask, out, 200 if quick else 800)
    print(f"reference: importance ESS {ess:.0f}, {time.perf_counter() - t0:.0f}s", flush=True)

    rows = []
    collapsed = collapsed_nuts(
        model, y, mask, rng_key=jax.random.PRNGKey(1), num_warmup=warmup, num_samples=samples,
        num_chains=chains, init_values=hyper_start_arrays(model, y, mask), report_sites=report,
        warn=False, algebra=algebra,
    )
    rows.append(nuts_row(f"collapsed NUTS (exact, {collapsed.algebra})", collapsed.samples,
                         collapsed.diagnostics, ref_mean, ref_sd))
    print(format_table(rows[-1:], COLUMNS), flush=True)

    decorrelated = model.decorrelated(True)
    point = model.initial_point(y, mask)
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    fit = fit_svi(decorrelated, *args, point=point, rng_key=key, num_steps=5000)
    draws = fit.draws(jax.random.fold_in(key, 1), 4000, sites)
    seconds = time.perf_counter() - start
    rows.append({"method": "decorrelated mean-field SVI", "seconds": seconds,
                 **accuracy(draws, ref_mean, ref_sd)})
    print(format_table(rows[-1:], COLUMNS), flush=True)

    dec_nuts = fit_nuts(decorrelated, *args, coefficients=fit.coefficients,
                        init_values=fit.guide.median(fit.run.params),
                        rng_key=jax.random.PRNGKey(1), num_warmup=warmup, num_samples=samples,
                        num_chains=chains, report_sites=report, warn=False)
    rows.append(nuts_row("decorrelated NUTS (frozen xi)", dec_nuts.samples,
                         dec_nuts.diagnostics, ref_mean, ref_sd))
    print(format_table(rows[-1:], COLUMNS), flush=True)

    median = fit.median_point()
    plain = run_nuts(model, *args, rng_key=jax.random.PRNGKey(1), num_warmup=plain_warmup,
                     num_samples=plain_samples, num_chains=plain_chains, report_sites=report,
                     init_values={k: median[k] for k in report}, warn=False)
    rows.append(nuts_row("plain NUTS (centred)", plain.samples, plain.diagnostics, ref_mean,
                         ref_sd))
    print(format_table(rows[-1:], COLUMNS), flush=True)

    ratio = rows[0]["ess_per_second"] / max(rows[3]["ess_per_second"], 1e-12)
    ratio_dec = rows[0]["ess_per_second"] / max(rows[2]["ess_per_second"], 1e-12)
    targets = {
        "collapsed max r-hat <= 1.01": rows[0]["max_rhat"] <= 1.01,
        "collapsed ESS/s >= 1000x plain NUTS": ratio >= 1000,
        "collapsed sds in [0.9, 1.1] for >= 95% of elements": rows[0]["in_0.9_1.1"] >= 0.95,
    }
    payload = {
        "quick": quick,
        "command": " ".join(sys.argv),
        "reference": {"importance_ess": ess, "hyper_mode": mode},
        "rows": rows,
        "collapsed_draw_seconds": collapsed.draw_seconds,
        "collapsed_hyper_only": vars(collapsed.hyper_diagnostics),
        "ess_per_second_ratio_vs_plain": ratio,
        "ess_per_second_ratio_vs_decorrelated_nuts": ratio_dec,
        "targets": targets,
        "settings": {"chains": chains, "warmup": warmup, "samples": samples,
                     "plain_nuts": [plain_chains, plain_warmup, plain_samples],
                     "svi_steps": 5000, "algebra": collapsed.algebra},
    }
    write_json(out / "results.json", payload)
    text = "\n\n".join([
        format_table(rows, COLUMNS),
        "\n".join(f"{r['method']}: sd ratio range {r['sd_ratio_range'][0]:.3f}-"
                  f"{r['sd_ratio_range'][1]:.3f}; " + ", ".join(
                      f"{k} {v['sd_ratio_min']:.2f}/{v['sd_ratio_median']:.2f}/"
                      f"{v['sd_ratio_max']:.2f}" for k, v in r["per_effect"].items())
                  for r in rows),
        f"collapsed / plain NUTS min bulk ESS/s: {ratio:.0f}x; collapsed / decorrelated NUTS: "
        f"{ratio_dec:.1f}x",
        "targets: " + "; ".join(f"{k}: {'MET' if v else 'NOT MET'}" for k, v in targets.items()),
        f"settings: {payload['settings']}; reference importance ESS {ess:.0f}",
    ])
    (out / "table.txt").write_text(text + "\n")
    print(text)
    return payload


def hyper_start_arrays(model, y, mask):
    """Data-scaled hyperparameter start (as ``tensorfact.fit(method="exact")`` uses)."""
    return model.initial_hyperparameters(y, mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true",
                        help="2 chains x (300 warmup + 300 draws); plain NUTS 2 x (100 + 100)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="an existing reference.npz (e.g. results/b2/reference.npz) to reuse")
    parser.add_argument("--algebra", choices=("auto", "kronecker", "kalman"), default="auto",
                        help="collapsed linear algebra (default auto: Kronecker on complete data)")
    parser.add_argument("--plain-nuts", type=int, nargs=3, default=None,
                        metavar=("CHAINS", "WARMUP", "SAMPLES"),
                        help="plain NUTS settings (default: as collapsed; --quick 2 100 100)")
    args = parser.parse_args()
    run(args.out, args.quick, args.reference, args.algebra,
        tuple(args.plain_nuts) if args.plain_nuts else None)


if __name__ == "__main__":
    main()
