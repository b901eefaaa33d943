"""Benchmark B2: the full additive model on a 20 x 10 x 30 tensor (6000 cells).

Truth mu = 2, s_a = s_b = s_C = 1, s_z = s_A = s_B = 0.2, sigma = 0.1 (``simulate_additive``,
seed 0); priors of the default specification. Compared in one process:

* ``AutoNormal`` and ``AutoLowRankMultivariateNormal`` (rank 10) on the plain model, NumPyro
  defaults with Adam 0.01;
* decorrelated mean-field SVI (tensorfact's workflow: Laplace start, coefficients at the exact
  local conditional, Adam with guide-relative steps), and the same with the coefficients also
  trained by SGD;
* plain (centred) NUTS and NUTS on the decorrelated model with the SVI coefficients frozen.

Reference: the exact conditional Gaussian with the 7 scales integrated by importance sampling
around their Laplace approximation (``tensorfact.testing.reference``), cross-checked by a long
NUTS run on the decorrelated model. Also reports the chosen family's ceiling (and the unrotated
family's) at the scales' mode, and ms per SVI step against the plain model.

    python experiments/benchmark_b2.py --out results/b2 [--quick]
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
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    format_table,
    ms_per_step,
    plot_losses,
    sd_ratio_table,
    steps_to_plateau,
    write_json,
)

import reparam  # noqa: E402
from reparam.infer import CoefficientModel, fit_nuts, fit_svi, run_nuts  # noqa: E402
from reparam.infer.workflow import default_optimizer  # noqa: E402
from tensorfact.model.tensor import TensorModel  # noqa: E402
from tensorfact.simulate import B2_SIZES, simulate_additive  # noqa: E402
from tensorfact.spec import default_spec  # noqa: E402
from tensorfact.testing.dense import GaussianOracle  # noqa: E402
from tensorfact.testing.reference import importance_reference  # noqa: E402


def load_problem(seed: int = 0):
    data, truth = simulate_additive(B2_SIZES, seed=seed)
    y = np.nan_to_num(data.values).astype(np.float32)
    mask = np.isfinite(data.values)
    model = TensorModel(default_spec(data.dims), dict(zip(data.dims, data.shape, strict=True)))
    return model, y, mask, truth


def reference(model, y, mask, out: Path, num_draws: int):
    cache = out / "reference.npz"
    if cache.exists():
        stored = np.load(cache)
        mean = {k[5:]: stored[k] for k in stored.files if k.startswith("mean_")}
        sd = {k[3:]: stored[k] for k in stored.files if k.startswith("sd_")}
        mode = {k[5:]: stored[k] for k in stored.files if k.startswith("mode_")}
        return mean, sd, mode, float(stored["ess"])
    ref = importance_reference(model, y, mask, num_draws=num_draws)
    np.savez(
        cache,
        ess=ref.ess,
        **{f"mean_{k}": v for k, v in ref.mean.items()},
        **{f"sd_{k}": v for k, v in ref.sd.items()},
        **{f"mode_{k}": v for k, v in ref.hyper_mode.items()},
    )
    return ref.mean, ref.sd, ref.hyper_mode, ref.ess


def svi_row(name, draws, losses, ref_mean, ref_sd, seconds, **extra):
    table = sd_ratio_table(draws, ref_mean, ref_sd)
    return {
        "method": name,
        "per_effect": table,
        "min_in_band": min(v["in_band"] for v in table.values()),
        "worst_sd_ratio": min(v["sd_ratio_min"] for v in table.values()),
        "max_mean_error_sd": max(v["mean_error_max"] for v in table.values()),
        "plateau_step": steps_to_plateau(losses),
        "steps": len(losses),
        "final_loss": float(np.mean(losses[-500:])),
        "seconds": seconds,
        **extra,
    }


def plain_svi(model, guide_class, args, steps, key, ref_mean, ref_sd, name, **guide_kwargs):
    guide = guide_class(model, **guide_kwargs)
    start = time.perf_counter()
    result = SVI(model, guide, optax.adam(0.01), Trace_ELBO()).run(
        key, steps, *args, progress_bar=False
    )
    seconds = time.perf_counter() - start
    draws = Predictive(model, guide=guide, params=result.params, num_samples=4000,
                       return_sites=list(ref_sd))(jax.random.fold_in(key, 1), *args)
    losses = np.asarray(result.losses)
    return svi_row(name, draws, losses, ref_mean, ref_sd, seconds), losses


def ceilings(model, args, point, mode, y, mask):
    """KL and implied sds of the rotated (chosen) and unrotated families at the scale mode."""
    oracle = GaussianOracle(model, y, mask)
    posterior = oracle.posterior(mode)
    rows = {}
    variants = {
        "helmert + dense time (chosen)": model.decorrelated(True),
        "same parents, no rotation/time coupling": reparam.decorrelate(
            model, model.decorrelation_config(True),
            dims={s.name: s.dims for s in model.location_sites},
        ),
    }
    for label, decorrelated in variants.items():
        plan = reparam.LocalGaussian(decorrelated, point, *args).plan
        result = reparam.ceiling(plan, posterior.precision, steps=0)
        ratios = np.concatenate(
            [np.ravel(result.sds[k] / posterior.sd[k]) for k in posterior.sd]
        )
        rows[label] = {
            "kl_at_projection": result.kl,
            "min_sd_ratio": float(ratios.min()),
            "fraction_in_band": float(np.mean((ratios >= 0.8) & (ratios <= 1.25))),
            "mu_sd_ratio": float(result.sds["mu"] / posterior.sd["mu"]),
        }
    return rows


def run(out: Path, quick: bool, plain_steps: int | None = None,
        plain_nuts_settings: tuple[int, int, int] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    model, y, mask, _ = load_problem()
    args = (jnp.asarray(y), jnp.asarray(mask))
    sites = [s.name for s in model.location_sites]
    hyper_sites = ["s_a", "s_b", "s_C", "s_z", "s_A", "s_B", "sigma"]
    key = jax.random.PRNGKey(0)
    plain_steps = plain_steps or (10_000 if quick else 100_000)
    dec_steps = 5000
    chains, warmup, samples = (2, 300, 300) if quick else (4, 500, 1000)
    plain_chains, plain_warmup, plain_samples = plain_nuts_settings or (chains, warmup, samples)

    t0 = time.perf_counter()
    ref_mean, ref_sd, mode, ess = reference(model, y, mask, out, 200 if quick else 800)
    print(f"reference: importance ESS {ess:.0f}, {time.perf_counter() - t0:.0f}s", flush=True)

    rows, curves = [], {}
    row, curves["AutoNormal (plain)"] = plain_svi(
        model, AutoNormal, args, plain_steps, key, ref_mean, ref_sd, "AutoNormal")
    rows.append(row)
    row, curves["AutoLowRankMVN rank 10 (plain)"] = plain_svi(
        model, AutoLowRankMultivariateNormal, args, plain_steps, key, ref_mean, ref_sd,
        "AutoLowRankMVN (rank 10)", rank=10)
    rows.append(row)
    print("plain SVI done", flush=True)

    decorrelated = model.decorrelated(True)
    point = model.initial_point(y, mask)
    start = time.perf_counter()
    fit = fit_svi(decorrelated, *args, point=point, rng_key=key, num_steps=dec_steps)
    seconds = time.perf_counter() - start
    draws = fit.draws(jax.random.fold_in(key, 1), 4000, sites)
    rows.append(svi_row("decorrelated mean-field", draws, fit.run.losses, ref_mean, ref_sd,
                        seconds, training_seconds=fit.run.seconds,
                        setup_seconds=seconds - fit.run.seconds))
    curves["decorrelated mean-field"] = fit.run.losses

    start = time.perf_counter()
    learned = fit_svi(decorrelated, *args, point=point, rng_key=key, num_steps=dec_steps,
                      coefficient_learning_rate=1e-3)
    draws_learned = learned.draws(jax.random.fold_in(key, 1), 4000, sites)
    rows.append(svi_row("decorrelated, xi also SGD (lr 1e-3)", draws_learned,
                        learned.run.losses, ref_mean, ref_sd, time.perf_counter() - start))
    print("decorrelated SVI done", flush=True)

    frozen = CoefficientModel(decorrelated)
    timing = ms_per_step({
        "plain AutoNormal": (model, AutoNormal(model), optax.adam(0.01), args, {}),
        "decorrelated AutoNormal": (
            frozen, AutoNormal(frozen), default_optimizer(0.005, True), args,
            {"coefficients": fit.coefficients}),
    })
    overhead = timing["decorrelated AutoNormal"] / timing["plain AutoNormal"]
    print(f"ms/step {timing}, overhead {overhead:.2f}x", flush=True)

    median = fit.median_point()
    nuts_rows = []
    plain_nuts = run_nuts(model, *args, rng_key=jax.random.PRNGKey(1), num_warmup=plain_warmup,
                          num_samples=plain_samples, num_chains=plain_chains,
                          report_sites=sites + hyper_sites,
                          init_values={k: median[k] for k in sites + hyper_sites}, warn=False)
    dec_init = fit.guide.median(fit.run.params)
    dec_nuts = fit_nuts(decorrelated, *args, coefficients=fit.coefficients, init_values=dec_init,
                        rng_key=jax.random.PRNGKey(1), num_warmup=warmup, num_samples=samples,
                        num_chains=chains, report_sites=sites + hyper_sites, warn=False)
    for name, nuts in (("plain NUTS", plain_nuts), ("decorrelated NUTS (frozen xi)", dec_nuts)):
        d = nuts.diagnostics
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in nuts.samples.items()}
        table = sd_ratio_table(flat, ref_mean, ref_sd)
        nuts_rows.append({
            "method": name, "seconds": d.seconds, "min_bulk_ess": d.min_ess,
            "ess_per_second": d.ess_per_second, "max_rhat": d.max_rhat,
            "divergences": d.divergences, "mean_leapfrog_steps": d.mean_steps,
            "min_in_band": min(v["in_band"] for v in table.values()),
            "max_mean_error_sd": max(v["mean_error_max"] for v in table.values()),
            "per_effect": table,
        })
    ess_ratio = nuts_rows[1]["ess_per_second"] / max(nuts_rows[0]["ess_per_second"], 1e-12)
    print("NUTS done", flush=True)

    cross_check = None
    if not quick:
        long_run = fit_nuts(decorrelated, *args, coefficients=fit.coefficients,
                            init_values=dec_init, rng_key=jax.random.PRNGKey(7),
                            num_warmup=1000, num_samples=4000, num_chains=4,
                            report_sites=sites, warn=False)
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in long_run.samples.items()}
        table = sd_ratio_table(flat, ref_mean, ref_sd)
        cross_check = {
            "draws": 16000, "min_bulk_ess": long_run.diagnostics.min_ess,
            "max_rhat": long_run.diagnostics.max_rhat,
            "sd_ratio_range": [min(v["sd_ratio_min"] for v in table.values()),
                               max(v["sd_ratio_max"] for v in table.values())],
            "max_mean_error_sd": max(v["mean_error_max"] for v in table.values()),
        }

    ceiling_rows = ceilings(model, args, point, mode, y, mask)
    payload = {
        "quick": quick,
        "reference": {"importance_ess": ess, "hyper_mode": mode,
                      "sd_examples": {k: float(np.ravel(v)[0]) for k, v in ref_sd.items()},
                      "long_nuts_cross_check": cross_check},
        "svi": rows,
        "ms_per_step": timing,
        "step_overhead": overhead,
        "nuts": nuts_rows,
        "nuts_ess_per_second_ratio": ess_ratio,
        "ceiling": ceiling_rows,
        "settings": {"plain_steps": plain_steps, "decorrelated_steps": dec_steps,
                     "nuts": {"chains": chains, "warmup": warmup, "samples": samples},
                     "plain_nuts": {"chains": plain_chains, "warmup": plain_warmup,
                                    "samples": plain_samples}},
    }
    write_json(out / "results.json", payload)
    plot_losses(curves, out / "elbo_b2.png", "B2 (20 x 10 x 30): loss, plain vs decorrelated")
    text = "\n\n".join([
        format_table(rows, ["method", "min_in_band", "worst_sd_ratio", "max_mean_error_sd",
                            "plateau_step", "steps", "final_loss", "seconds"]),
        "\n".join(f"{r['method']}: " + ", ".join(
            f"{k} {v['sd_ratio_min']:.2f}/{v['sd_ratio_median']:.2f}/{v['sd_ratio_max']:.2f} "
            f"in-band {v['in_band']:.2f}" for k, v in r["per_effect"].items()) for r in rows),
        f"ms per SVI step: {timing}; overhead {overhead:.2f}x",
        format_table(nuts_rows, ["method", "seconds", "min_bulk_ess", "ess_per_second",
                                 "max_rhat", "divergences", "mean_leapfrog_steps",
                                 "min_in_band", "max_mean_error_sd"]),
        f"NUTS min bulk ESS/s ratio (decorrelated / plain): {ess_ratio:.0f}x",
        f"long NUTS cross-check: {cross_check}",
        "ceiling at the scales' mode: " + str(ceiling_rows),
    ])
    (out / "table.txt").write_text(text + "\n")
    print(text)
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="fewer steps, chains and draws")
    parser.add_argument("--plain-steps", type=int, default=None,
                        help="SVI steps of the plain guides (default 100000, quick 10000)")
    parser.add_argument("--plain-nuts", type=int, nargs=3, default=None,
                        metavar=("CHAINS", "WARMUP", "SAMPLES"),
                        help="shorter plain NUTS run (it takes ~1000 leapfrog steps/iteration); "
                        "ESS/s is a rate, so the comparison stays like for like")
    args = parser.parse_args()
    run(args.out, args.quick, args.plain_steps,
        tuple(args.plain_nuts) if args.plain_nuts else None)


if __name__ == "__main__":
    main()
