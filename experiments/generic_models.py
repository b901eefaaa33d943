"""``reparam.fit`` on anyone's NumPyro model: plain NumPyro models, no tensorfact.

Models (``generic_models_lib``; data simulated with fixed numpy seeds):

1. additive tensor 6 x 4 x 10, ``y ~ N(mu + a_i + b_j + z_t + A_it + B_jt + C_ij, sigma)``
   (z and the rows of A, B Gaussian random walks; sampled in tensorfact's order mu, a, b, C,
   z, A, B; C's plates named ci, cj), (a) scales fixed at the truth (passed as
   an argument): the posterior is Gaussian, reference exact (Hessian of the potential in
   float64, dense solve); (b) scales sampled (HalfNormal priors): reference long NUTS on the
   hand-written non-centred model;
2. eight schools, centred; reference long NUTS on the non-centred model (target accept 0.95);
3. a normal hierarchy with 5 unbalanced groups (sizes 3, 5, 10, 20, 40), group sd and noise
   sd sampled;
4. a logistic random-intercept model (10 groups x 30 Bernoulli observations, one slope);
5. a Poisson log-linear hierarchy (12 groups x 6 counts with exposure and a covariate).

References for 1b-5: NUTS on the non-centred model, 4 chains x (1000 warmup + 2000 draws)
(eight schools 4 x (2000 + 5000)); their r-hat must be < 1.01. Per model, measured against
the reference over every latent element (location effects and scales, model coordinates):

* ``reparam.fit`` (automatic configuration, default settings, fixed key): fraction of sd
  ratios in [0.8, 1.25], median ratio, max |mean error| in reference sds, wall seconds (with
  compilation), from 4000 guide draws; the configuration it chose goes to the log;
* plain NumPyro ``AutoNormal`` SVI (Adam 0.01, 5000 steps), likewise;
* NUTS, 4 chains x (500 + 1000), sequential: on ``result.model`` (``result.nuts``, started at
  the guide median) and on the model as written (NumPyro's default start): min bulk ESS over
  latent model-coordinate elements per wall second (compilation included), max r-hat,
  divergences; for eight schools also the hand-written non-centred model, and sd(tau) of
  every method.

For 1a also the mean-field KL ceiling (``reparam.ceiling``, exact precision, 200 L-BFGS
steps) of the automatic configuration against hand-written tensorfact-like ones (every effect
shifted by all earlier ones, Helmert along i and j, sequence t, Markov on the contrasts /
dense in time), for the model's order and for the same model with C sampled last.

Group indices are NumPy's default int64, as users pass them.

``--quick`` shrinks SVI, NUTS and the references (2 chains) to debug the script (~7 minutes
on 2 cores: compilation dominates); the full run, references at the lengths above, takes
~13 minutes on 2 cores. Writes
``DIR/results.json`` and ``DIR/table.md``::

    PYTHONPATH=.:experiments python experiments/generic_models.py --out DIR [--quick]
        [--models SUBSTRING ...]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import jax
import numpy as np
import optax
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generic_models_lib as lib  # noqa: E402
from common import format_table, sd_ratio_table, write_json  # noqa: E402

import reparam  # noqa: E402
from reparam.infer.nuts import run_nuts  # noqa: E402

FULL = {"fit_steps": 3000, "autonormal_steps": 5000, "nuts": (4, 500, 1000),
        "reference_scale": 1.0, "reference_chains": None, "draws": 4000, "ceiling_steps": 200}
QUICK = {"fit_steps": 1000, "autonormal_steps": 1000, "nuts": (2, 200, 300),
         "reference_scale": 0.25, "reference_chains": 2, "draws": 1000, "ceiling_steps": 20}


def reference(problem: lib.Problem, settings: dict) -> dict:
    sites = list(lib.latent_shapes(problem.centred, problem.args))
    start = time.perf_counter()
    if problem.reference == "exact":
        exact = lib.exact_gaussian(problem.centred, problem.args)
        return {"kind": "exact Gaussian", "mean": exact.mean, "sd": exact.sd, "exact": exact,
                "sites": sites, "seconds": time.perf_counter() - start}
    if settings["reference_chains"]:
        problem.nuts_reference = (settings["reference_chains"], *problem.nuts_reference[1:])
    ref = lib.nuts_reference(problem, sites, scale=settings["reference_scale"])
    if not ref["max_rhat"] < 1.01:
        print(f"WARNING reference r-hat {ref['max_rhat']:.4f} >= 1.01", flush=True)
    return {"kind": "NUTS non-centred", "sites": sites, **ref}


def svi_summary(draws: dict, ref: dict, seconds: float, steps: int) -> dict:
    return {**lib.pooled_ratios(draws, ref["mean"], ref["sd"]), "seconds": seconds,
            "steps": steps, "per_site": sd_ratio_table(draws, ref["mean"], ref["sd"])}


def _fit(model, problem: lib.Problem, ref: dict, settings: dict):
    start = time.perf_counter()
    result = reparam.fit(model, *problem.args, rng_key=jax.random.PRNGKey(0),
                         num_steps=settings["fit_steps"])
    draws = result.sample(jax.random.PRNGKey(1), settings["draws"])
    row = svi_summary(draws, ref, time.perf_counter() - start, len(result.losses))
    row["config"] = str(result.config)
    row["final_loss"] = float(np.mean(result.losses[-100:]))
    print(f"auto config:\n{result.config}", flush=True)
    return row, result


def fit_reparam(problem: lib.Problem, ref: dict, settings: dict):
    """``reparam.fit`` with default settings; ``(row, result)``. Where it raises, the row
    holds the error and traceback (reported in the table) and ``result`` is ``None``."""
    try:
        return _fit(problem.centred, problem, ref, settings)
    except Exception as err:  # noqa: BLE001 - recorded in the table, reported
        failure = {"error": repr(err), "traceback": traceback.format_exc()}
        print(failure["traceback"], flush=True)
        return failure, None


def fit_autonormal(problem: lib.Problem, ref: dict, settings: dict) -> dict:
    model, steps = problem.centred, settings["autonormal_steps"]
    guide = AutoNormal(model)
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    run = SVI(model, guide, optax.adam(0.01), Trace_ELBO()).run(key, steps, *problem.args,
                                                                progress_bar=False)
    draws = Predictive(model, guide=guide, params=run.params, num_samples=settings["draws"],
                       return_sites=ref["sites"])(jax.random.fold_in(key, 1), *problem.args)
    seconds = time.perf_counter() - start
    row = svi_summary({k: np.asarray(v) for k, v in draws.items()}, ref, seconds, steps)
    row["final_loss"] = float(np.mean(np.asarray(run.losses)[-100:]))
    return row


def nuts_summary(run, ref: dict) -> dict:
    d = run.diagnostics
    flat = {k: run.samples[k].reshape((-1,) + run.samples[k].shape[2:]) for k in ref["sites"]}
    row = {"min_ess": d.min_ess, "seconds": d.seconds, "ess_per_second": d.ess_per_second,
           "max_rhat": d.max_rhat, "divergences": d.divergences, "mean_steps": d.mean_steps,
           "vs_reference": lib.pooled_ratios(flat, ref["mean"], ref["sd"])}
    if "tau" in flat:
        row["sd_tau"] = float(flat["tau"].std())
    return row


def run_nuts_all(problem: lib.Problem, result, ref: dict, settings: dict) -> dict:
    chains, warmup, samples = settings["nuts"]
    options = {"num_warmup": warmup, "num_samples": samples, "num_chains": chains}
    key = jax.random.PRNGKey(1)
    out = {}
    if result is not None:
        try:
            out["reparam"] = nuts_summary(result.nuts(key, chain_method="sequential",
                                                      warn=False, **options), ref)
        except Exception as err:  # noqa: BLE001
            out["reparam"] = {"error": repr(err), "traceback": traceback.format_exc()}
            print(out["reparam"]["traceback"], flush=True)
    out["plain"] = nuts_summary(run_nuts(problem.centred, *problem.args, rng_key=key,
                                         report_sites=ref["sites"], warn=False, **options), ref)
    if problem.name.startswith("eight schools"):
        out["plain non-centred"] = nuts_summary(run_nuts(
            problem.noncentred, *problem.args, rng_key=key, report_sites=ref["sites"],
            warn=False, **options), ref)
    return out


def hand_written(model, args: tuple):
    """tensorfact-like configurations: each effect after all earlier ones (model order),
    Helmert along i and j, sequence t."""
    order = list(lib.latent_shapes(model, args))
    config = {c: order[:k] for k, c in enumerate(order) if k}
    dims = {"z": ("t",), "A": ("i", "t"), "B": ("j", "t"), "C": ("i", "j")}
    common = {"rotate": {"i": "helmert", "j": "helmert"}, "sequence": "t", "dims": dims,
              "coefficients": "params"}
    return {
        "hand-written, markov contrasts (tensorfact)": reparam.decorrelate(
            model, config, markov="contrasts", **common),
        "hand-written, dense time": reparam.decorrelate(model, config, **common),
    }


def ceiling_row(label: str, decorrelated, exact: lib.ExactGaussian, args: tuple,
                steps: int) -> dict:
    try:
        plan = reparam.linear_plan(decorrelated, exact.mean, *args)
        result = reparam.ceiling(plan, exact.precision_over(plan.sites), steps=steps)
    except Exception as err:  # noqa: BLE001
        print(traceback.format_exc(), flush=True)
        return {"family": label, "error": repr(err), "traceback": traceback.format_exc()}
    ratios = np.concatenate([np.ravel(result.sds[s.name] / exact.sd[s.name])
                             for s in plan.sites])
    return {"family": label, "kl_projection": result.kl_history[0], "kl_optimised": result.kl,
            "plan_dim": plan.dim, "min_sd_ratio": float(ratios.min()),
            "in_band": float(np.mean((ratios >= 0.8) & (ratios <= 1.25))),
            "coefficients": int(sum(np.size(v) for v in result.coefficients.values()))}


def tensor_ceilings(problem: lib.Problem, ref: dict, steps: int) -> list[dict]:
    """Mean-field KL ceiling of the auto configuration and the hand-written ones, for the
    model's order (C before the time effects) and with C sampled last."""
    rows = []
    for order, model in (("C before z, A, B", problem.centred),
                         ("C last", lib.tensor_fixed_c_last)):
        exact = ref["exact"] if model is problem.centred else lib.exact_gaussian(
            model, problem.args)
        config = reparam.suggest_config(model, *problem.args)
        variants = {"auto (suggest_config)": reparam.decorrelate(model, config,
                                                                 coefficients="params"),
            **hand_written(model, problem.args)}
        for label, decorrelated in variants.items():
            rows.append({"order": order, **ceiling_row(label, decorrelated, exact,
                                                       problem.args, steps)})
    print(format_table(rows, ["order", "family", "kl_projection", "kl_optimised", "plan_dim",
                              "min_sd_ratio", "in_band", "coefficients"]), flush=True)
    return rows


def run_problem(problem: lib.Problem, settings: dict) -> dict:
    print(f"\n=== {problem.name} ===", flush=True)
    ref = reference(problem, settings)
    print(f"reference ({ref['kind']}): {ref['seconds']:.0f}s"
          + (f", r-hat {ref['max_rhat']:.4f}, min ESS {ref['min_ess']:.0f}, "
             f"divergences {ref['divergences']}" if "max_rhat" in ref else ""), flush=True)
    fit_row, result = fit_reparam(problem, ref, settings)
    autonormal = fit_autonormal(problem, ref, settings)
    nuts = run_nuts_all(problem, result, ref, settings)
    record = {"model": problem.name, "reparam_fit": fit_row, "autonormal": autonormal,
              "nuts": nuts, "reference": {k: v for k, v in ref.items() if k != "exact"}}
    if problem.reference == "exact":
        record["ceiling"] = tensor_ceilings(problem, ref, settings["ceiling_steps"])
    if "tau" in ref["sd"]:
        record["sd_tau"] = sd_tau(record, ref, result, settings)
    print_problem(record)
    return record


def sd_tau(record: dict, ref: dict, result, settings: dict) -> dict:
    out = {"reference": float(ref["sd"]["tau"])}
    if result is not None:
        out["reparam.fit guide"] = float(result.sample(jax.random.PRNGKey(1),
                                                       settings["draws"])["tau"].std())
    for label, row in record["nuts"].items():
        if "sd_tau" in row:
            out[f"NUTS {label}"] = row["sd_tau"]
    return out


def print_problem(record: dict) -> None:
    rows = []
    for label, row in (("reparam.fit", record["reparam_fit"]),
                       ("AutoNormal", record["autonormal"])):
        rows.append({"method": label, **{k: v for k, v in row.items() if not isinstance(
            v, (dict, str)) or k == "error"}})
    print(format_table(rows, ["method", "in_band", "median_ratio", "min_ratio", "max_ratio",
                              "max_mean_error_sd", "steps", "seconds", "error"]))
    nuts = [{"method": f"NUTS {k}", **v, **{f"ref_{q}": v.get("vs_reference", {}).get(q)
                                            for q in ("in_band", "max_mean_error_sd")}}
            for k, v in record["nuts"].items()]
    print(format_table(nuts, ["method", "min_ess", "seconds", "ess_per_second", "max_rhat",
                              "divergences", "mean_steps", "ref_in_band",
                              "ref_max_mean_error_sd", "error"]))
    for label in ("reparam_fit", "autonormal"):
        per_site = record[label].get("per_site", {})
        print(f"{label} sd ratio min/median/max, max |mean error| (sd) per site: " + "; ".join(
            f"{k} {v['sd_ratio_min']:.2f}/{v['sd_ratio_median']:.2f}/{v['sd_ratio_max']:.2f},"
            f" {v['mean_error_max']:.2f}" for k, v in per_site.items()))
    if "sd_tau" in record:
        print("sd(tau): " + ", ".join(f"{k} {v:.3f}" for k, v in record["sd_tau"].items()))
    print(flush=True)


def _cell(row: dict, key: str, fmt: str = "{:.3g}") -> str:
    value = row.get(key)
    if "error" in row:
        return "ERROR"
    return "-" if value is None else fmt.format(value)


def summary(records: list[dict]) -> str:
    head = ("| model | reparam.fit % in [0.8,1.25] | median ratio | max mean err (sd) | "
            "AutoNormal % in band | AN median ratio | NUTS ESS/s reparam / plain | "
            "max r-hat reparam / plain | divergences reparam / plain | "
            "seconds fit / AN / NUTS reparam / NUTS plain |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in records:
        fit, an = r["reparam_fit"], r["autonormal"]
        rn, pn = r["nuts"].get("reparam", {"error": "no fit"}), r["nuts"]["plain"]
        pct = "{:.0%}"
        name = r["model"]
        lines.append(
            f"| {name} | {_cell(fit, 'in_band', pct)} | {_cell(fit, 'median_ratio')} | "
            f"{_cell(fit, 'max_mean_error_sd')} | {_cell(an, 'in_band', pct)} | "
            f"{_cell(an, 'median_ratio')} | {_cell(rn, 'ess_per_second')} / "
            f"{_cell(pn, 'ess_per_second')} | {_cell(rn, 'max_rhat', '{:.3f}')} / "
            f"{_cell(pn, 'max_rhat', '{:.3f}')} | {_cell(rn, 'divergences', '{}')} / "
            f"{_cell(pn, 'divergences', '{}')} | {_cell(fit, 'seconds', '{:.0f}')} / "
            f"{_cell(an, 'seconds', '{:.0f}')} / {_cell(rn, 'seconds', '{:.0f}')} / "
            f"{_cell(pn, 'seconds', '{:.0f}')} |")
    return "\n".join(lines)


def notes(records: list[dict]) -> str:
    """sd(tau) per method and the KL ceilings (markdown)."""
    lines = [""]
    for r in records:
        if "sd_tau" in r:
            lines.append(f"- {r['model']}: sd(tau) " + ", ".join(
                f"{k} {v:.3f}" for k, v in r["sd_tau"].items()))
    for r in records:
        if r.get("ceiling"):
            lines += ["", f"Mean-field KL ceiling, {r['model']} (nats, exact precision):", "",
                      "| sampling order | family | KL at projection | KL optimised | "
                      "min sd ratio | coefficients |", "|---|---|---|---|---|---|"]
            lines += [f"| {c['order']} | {c['family']} | {_cell(c, 'kl_projection', '{:.4g}')}"
                      f" | {_cell(c, 'kl_optimised', '{:.4g}')} | "
                      f"{_cell(c, 'min_sd_ratio', '{:.3f}')} | {_cell(c, 'coefficients', '{}')} |"
                      for c in r["ceiling"]]
    return "\n".join(lines) + "\n"


def run(out: Path, quick: bool, only: list[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    settings = QUICK if quick else FULL
    start = time.perf_counter()
    print(f"reparam from {reparam.__file__}", flush=True)
    records = []
    for problem in lib.problems():
        if only and not any(word in problem.name for word in only):
            continue
        records.append(run_problem(problem, settings))
        write_json(out / "results.json", {"settings": settings, "quick": quick,
                                          "models": records})
    table = summary(records) + notes(records)
    seconds = time.perf_counter() - start
    text = table + f"\nwall time {seconds:.0f}s\n"
    (out / "table.md").write_text(text)
    write_json(out / "results.json", {"settings": settings, "quick": quick,
                                      "models": records, "wall_seconds": seconds,
                                      "reparam_file": reparam.__file__})
    print(text)
    return {"models": records, "wall_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="short runs, to debug")
    parser.add_argument("--models", nargs="*", help="run only models whose name has one of "
                        "these substrings")
    args = parser.parse_args()
    run(args.out, args.quick, args.models)


if __name__ == "__main__":
    main()
