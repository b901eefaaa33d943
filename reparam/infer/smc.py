"""Sequential Monte Carlo on models written as ``numpyro.contrib.control_flow.scan`` transitions.

The model stays the one the user wrote: the ``scan`` call is intercepted
(:mod:`reparam.infer.smc_model`) and its body runs as the particle transition. The pieces:

* :mod:`reparam.infer.particles`: weights, ESS, systematic resampling, weighted summaries;
* :mod:`reparam.infer.filtering`: the proposals (bootstrap, locally optimal Gaussian) and the
  filtering recursion (its docstring has the equations);
* :mod:`reparam.infer.smoothing`: ancestral and backward-simulation smoothing, forecasting;
* :mod:`reparam.infer.pmmh`: particle marginal Metropolis-Hastings for the static parameters.

:func:`particle_filter` is the convenient call for fixed parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
from jax import Array

from reparam.infer.filtering import (
    FilterOutput,
    ParticleFilter,
    Proposal,
    build_particle_filter,
    summarize,
)
from reparam.infer.smoothing import forecast, smooth

__all__ = [
    "FilterOutput",
    "ParticleFilter",
    "ParticleFilterResult",
    "build_particle_filter",
    "forecast",
    "particle_filter",
]


class ParticleFilterResult(NamedTuple):
    """Result of :func:`particle_filter`.

    Attributes:
        log_evidence: the estimate of ``log p(y | theta)`` (observed body sites).
        ess: effective sample size per step, ``(T,)``.
        mean, sd: filtering mean and sd per site, ``(T, *shape)`` (of ``p(z_t | y_{0:t})``).
        quantiles: per site, ``(len(quantile_levels), T, *shape)``.
        quantile_levels: the levels of ``quantiles``.
        smoothed: per site, ``(num_trajectories, T, *shape)`` draws of the path from
            ``p(z_{0:T-1} | y)``: latent and deterministic body sites (ancestral) or latent
            sites (backward); empty when ``smoothing=None``.
        output: the raw :class:`FilterOutput`.
    """

    log_evidence: Array
    ess: Array
    mean: dict[str, Array]
    sd: dict[str, Array]
    quantiles: dict[str, Array]
    quantile_levels: tuple[float, ...]
    smoothed: dict[str, Array]
    output: FilterOutput


def particle_filter(
    model: Callable,
    *args: Any,
    num_particles: int,
    rng_key: Array,
    proposal: Proposal = "prior",
    resample_threshold: float = 0.5,
    smoothing: Literal["ancestral", "backward"] | None = "ancestral",
    num_trajectories: int = 100,
    quantiles: Sequence[float] = (0.05, 0.5, 0.95),
    **kwargs: Any,
) -> ParticleFilterResult:
    """Runs a particle filter on a ``scan`` model with its static parameters fixed.

    Fix the sites outside the body first, e.g. ``handlers.condition(model, {"q": 0.5})``
    (infer them with :func:`reparam.infer.pmmh.pmmh`). The equations are in
    :mod:`reparam.infer.filtering`; smoothing (:mod:`reparam.infer.smoothing`):
    ``"ancestral"`` traces the genealogy of final particles back (cheap; few distinct values
    at early steps), and ``"backward"`` is backward simulation, ``P(b_t = i | b_{t+1}) prop.
    to W_t^i p(z_{t+1}, y_{t+1} | c_t^i)`` (``O(num_trajectories N T)``; needs a body whose
    new carry is a function of its latent sites and ``x_t`` only). Forecasts from the result:
    :func:`reparam.infer.smoothing.forecast`.

    Args:
        model: the model; *args, **kwargs: its arguments (data included).
        num_particles: ``N``.
        rng_key: PRNG key (same key, same result).
        proposal: ``"prior"`` or ``"optimal"``.
        resample_threshold: resample when ``ESS < resample_threshold * N``.
        smoothing: ``"ancestral"``, ``"backward"`` or ``None``.
        num_trajectories: number of smoothed paths.
        quantiles: levels of the filtering quantiles.

    Raises:
        ValueError: latent sites outside the body left unfixed, and the errors of
            :func:`build_particle_filter` and of the smoother.
    """
    if smoothing not in ("ancestral", "backward", None):
        raise ValueError(f"smoothing must be 'ancestral', 'backward' or None, got {smoothing!r}.")
    pf = build_particle_filter(model, *args, num_particles=num_particles, proposal=proposal,
                               resample_threshold=resample_threshold, **kwargs)
    if pf.info.free:
        raise ValueError(
            f"reparam.particle_filter: latent site(s) {list(pf.info.free)} outside the scan "
            "body are not fixed. Fix them, e.g. numpyro.handlers.condition(model, "
            f"{{{', '.join(repr(n) + ': ...' for n in pf.info.free)}}}), or infer them with "
            "reparam.pmmh."
        )
    filter_key, smooth_key = jax.random.split(rng_key)
    output = jax.jit(pf.run)(filter_key)
    mean, sd, q = jax.jit(summarize, static_argnums=1)(output, tuple(quantiles))
    smoothed = {} if smoothing is None else smooth(pf, output, smooth_key, smoothing,
                                                   num_trajectories)
    return ParticleFilterResult(log_evidence=output.log_evidence, ess=output.ess, mean=mean,
                                sd=sd, quantiles=q, quantile_levels=tuple(quantiles),
                                smoothed=smoothed, output=output)
