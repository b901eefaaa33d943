"""NUTS runs with ArviZ diagnostics (divergences, r-hat, bulk ESS, ESS per second)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from numpyro.infer import MCMC, NUTS
from numpyro.infer.initialization import init_to_value

from reparam.decorrelation import freeze


@dataclass(frozen=True)
class NUTSDiagnostics:
    """Convergence summary of a NUTS run.

    Attributes:
        divergences: number of divergent transitions after warmup.
        max_rhat: largest rank-normalised split r-hat over the reported sites' elements (NaN
            with one chain).
        min_ess: smallest bulk ESS over the reported sites' elements.
        mean_steps: mean leapfrog steps per iteration after warmup.
        seconds: wall time including compilation and warmup.
    """

    divergences: int
    max_rhat: float
    min_ess: float
    mean_steps: float
    seconds: float

    @property
    def ess_per_second(self) -> float:
        return self.min_ess / self.seconds

    @classmethod
    def measure(
        cls,
        samples: Mapping[str, np.ndarray],
        sites: Sequence[str] | None,
        diverging: Any,
        num_steps: Any,
        seconds: float,
    ) -> NUTSDiagnostics:
        """Diagnostics of draws ``samples`` (``chain, draw, ...``) over ``sites`` (default:
        all), with the run's per-iteration divergence flags and leapfrog step counts."""
        max_rhat, min_ess = diagnose(samples, list(sites) if sites is not None else list(samples))
        return cls(divergences=int(np.sum(diverging)), max_rhat=max_rhat, min_ess=min_ess,
                   mean_steps=float(np.mean(num_steps)), seconds=seconds)


@dataclass
class NUTSRun:
    """Result of :func:`run_nuts`: draws grouped by chain (``chain, draw, ...``)."""

    samples: dict[str, np.ndarray]
    diagnostics: NUTSDiagnostics
    mcmc: MCMC


def diagnose(samples: Mapping[str, np.ndarray], sites: Sequence[str]) -> tuple[float, float]:
    """Max r-hat and min bulk ESS over the elements of ``sites`` (arrays ``chain, draw, ...``)."""
    import arviz as az  # imported here: arviz loads matplotlib

    data = az.from_dict(posterior={k: np.asarray(samples[k]) for k in sites})
    ess = az.ess(data, method="bulk")
    min_ess = min(float(ess[k].min()) for k in sites)
    if next(iter(samples.values())).shape[0] < 2:
        return float("nan"), min_ess
    rhat = az.rhat(data)
    return max(float(rhat[k].max()) for k in sites), min_ess


def run_nuts(
    model: Callable,
    *args: Any,
    rng_key: jax.Array,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 4,
    init_values: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    report_sites: Sequence[str] | None = None,
    dense_mass: bool = False,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    chain_method: str = "sequential",
    progress_bar: bool = False,
    warn: bool = True,
    **kwargs: Any,
) -> NUTSRun:
    """Runs NUTS and computes diagnostics with ArviZ.

    Args:
        model: a NumPyro model without ``numpyro.param`` sites (e.g. ``reparam.freeze``-d).
        *args, **kwargs: model arguments.
        rng_key: PRNG key.
        init_values: starting values (the model's sample-site names).
        params: values for the model's remaining ``numpyro.param`` sites, e.g. all of an SVI
            run's params (``svi.run.params``): a learnable centring of a scan site
            (``f"{x}_centered"``) then runs NUTS at the value SVI learned instead of its
            initial value. Names that are not param sites of the model are ignored (guide
            params), as in :func:`reparam.freeze`.
        report_sites: sites whose r-hat/ESS are reported (default: all sample sites).
        warn: emit ``RuntimeWarning`` for divergences, r-hat > 1.01 or bulk ESS < 100.
    """
    if params:
        model = freeze(model, params)
    init = init_to_value(values=dict(init_values)) if init_values is not None else None
    kernel_kwargs = {"init_strategy": init} if init is not None else {}
    kernel = NUTS(
        model,
        dense_mass=dense_mass,
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        **kernel_kwargs,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress_bar,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There are not enough devices")
        mcmc.run(rng_key, *args, extra_fields=("diverging", "num_steps"), **kwargs)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    seconds = time.perf_counter() - start
    extra = mcmc.get_extra_fields()
    diagnostics = NUTSDiagnostics.measure(samples, report_sites, extra["diverging"],
                                          extra["num_steps"], seconds)
    if warn:
        warn_if_unhealthy(diagnostics)
    return NUTSRun(samples=samples, diagnostics=diagnostics, mcmc=mcmc)


def warn_if_unhealthy(
    diagnostics: NUTSDiagnostics, stacklevel: int = 3, advice: str | None = None
) -> None:
    """Warns (``RuntimeWarning``) with the numbers when a run looks unreliable: divergent
    transitions, r-hat above 1.01 or bulk ESS below 100.

    Args:
        diagnostics: the run's diagnostics.
        stacklevel: passed to ``warnings.warn`` (3: the caller of the function that calls
            this one).
        advice: what to change, replacing the generic advice.
    """
    problems = []
    if diagnostics.divergences:
        problems.append(f"{diagnostics.divergences} divergent transitions")
    if np.isfinite(diagnostics.max_rhat) and diagnostics.max_rhat > 1.01:
        problems.append(f"max r-hat {diagnostics.max_rhat:.3f} > 1.01")
    if diagnostics.min_ess < 100:
        problems.append(f"min bulk ESS {diagnostics.min_ess:.0f} < 100")
    if problems:
        warnings.warn(
            "NUTS diagnostics: " + "; ".join(problems) + ". " + (
                advice or "Run longer (more warmup/samples), raise target_accept_prob, or check "
                "the decorrelation."
            ),
            RuntimeWarning,
            stacklevel=stacklevel,
        )
