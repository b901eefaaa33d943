"""Particle marginal Metropolis-Hastings (PMMH) for the static parameters of a ``scan`` model.

The static parameters ``theta`` are the latent sites outside the ``scan`` body that the model
leaves unfixed. With ``u = T^{-1}(theta)`` their unconstrained values (``T = biject_to`` of each
site's support) and ``Z^(u)`` the particle filter's estimate of ``p(y | theta)``
(:mod:`reparam.infer.filtering`), the chain targets

    pi(u) prop. to  p(T(u)) |det dT/du| p(y_outer | T(u)) Z^(u)

by a Gaussian random walk ``u' = u + L e``, ``e ~ N(0, I)``, accepted with probability

    alpha = min(1, pi^(u') / pi^(u))   (the estimate at the current point is kept, never redrawn)

which leaves the exact posterior invariant for any number of particles (Andrieu, Doucet &
Holenstein 2010): the filter's noise only slows mixing. Adaptation during warmup only (the
draws after it come from a fixed kernel): ``L L^T = s^2 (2.38^2 / d) (Sigma + 1e-6 I)``, with
``Sigma`` the covariance of the warmup states of all chains after the first quarter of warmup
(``L L^T = s^2 * 0.1^2 I`` until there are enough of them) and ``log s`` moved by Robbins-Monro
towards the target acceptance rate: ``log s += (mean alpha - target) / k^0.6``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.flatten_util import ravel_pytree
from numpyro.distributions import biject_to

from reparam.infer.filtering import Proposal, build_particle_filter
from reparam.infer.smc_model import capture_scan
from reparam.infer.smoothing import ancestral_indices, gather_paths

_INIT_SCALE = 0.1


class PMMHResult(NamedTuple):
    """Result of :func:`pmmh`.

    Attributes:
        samples: site -> draws ``(chains, draws, *shape)``: the static parameters, the
            deterministic sites before the ``scan`` and, with ``trajectories=True``, one
            smoothed path of every latent body site per draw (``(chains, draws, T, *shape)``).
        log_evidence: the filter's ``log Z^`` at each draw, ``(chains, draws)``.
        accept_rate: acceptance rate after warmup per chain, ``(chains,)``.
        step_cov: the random walk's covariance after warmup (unconstrained, ``(d, d)``).
        seconds: wall time including compilation and warmup.
    """

    samples: dict[str, np.ndarray]
    log_evidence: np.ndarray
    accept_rate: np.ndarray
    step_cov: np.ndarray
    seconds: float


class _Adapt(NamedTuple):
    count: Array
    mean: Array
    m2: Array
    log_scale: Array


def _target(pf: Any, free: tuple[str, ...], unravel: Callable,
            trajectories: bool) -> Callable:
    """``(u, key) -> (log pi^(u), log Z^, extras)`` for one chain."""
    outer_det = pf.info.outer_deterministic

    def log_target(flat: Array, key: Array) -> tuple[Array, Array, dict]:
        values = unravel(flat)

        def constrain(msg: dict) -> Array | None:
            if msg["type"] == "sample" and msg["name"] in values and not msg["is_observed"]:
                return biject_to(msg["fn"].support)(values[msg["name"]])
            return None

        model_key, filter_key, path_key = jax.random.split(key, 3)
        call, before = capture_scan(pf.model, pf.args, pf.kwargs, model_key, constrain)
        log_outer = jnp.zeros(())
        for name, site in before.items():
            if site["type"] != "sample":
                continue
            log_outer = log_outer + jnp.sum(site["fn"].log_prob(site["value"]))
            if name in values:
                transform = biject_to(site["fn"].support)
                log_outer = log_outer + jnp.sum(
                    transform.log_abs_det_jacobian(values[name], site["value"]))
        output = pf.filter_call(call, filter_key)
        log_z = jnp.where(jnp.isnan(output.log_evidence), -jnp.inf, output.log_evidence)
        extras = {n: before[n]["value"] for n in (*free, *outer_det)}
        if trajectories:
            index = ancestral_indices(output, path_key, 1)
            latent = {n: output.particles[n] for n in pf.info.latent}
            extras.update({n: v[0] for n, v in gather_paths(latent, index).items()})
        return jnp.where(jnp.isfinite(log_z), log_outer + log_z, -jnp.inf), log_z, extras

    return log_target


def _initial_point(pf: Any, free: tuple[str, ...], init_params: Mapping | None,
                   rng_key: Array) -> dict[str, Array]:
    """Unconstrained start: ``init_params`` or the median of 15 prior draws of each site."""
    draws = [capture_scan(pf.model, pf.args, pf.kwargs, k)[1]
             for k in jax.random.split(rng_key, 15)]
    point = {}
    for name in free:
        support = draws[0][name]["fn"].support
        if init_params is not None and name in init_params:
            value = jnp.asarray(init_params[name])
        else:
            value = jnp.median(jnp.stack([d[name]["value"] for d in draws]), axis=0)
        point[name] = biject_to(support).inv(value)
    return point


def _proposal_chol(adapt: _Adapt, dim: int, min_count: int) -> Array:
    cov = adapt.m2 / jnp.maximum(adapt.count - 1, 1) + 1e-6 * jnp.eye(dim)
    cov = jnp.where(adapt.count >= min_count, (2.38**2 / dim) * cov,
                    _INIT_SCALE**2 * jnp.eye(dim))
    return jnp.exp(adapt.log_scale) * jnp.linalg.cholesky(cov)


def _update(adapt: _Adapt, states: Array, accept: Array, k: Array, target: float,
            collect: Array) -> _Adapt:
    """Pooled Welford update with all chains' states (when ``collect``) and Robbins-Monro."""
    batch = states.shape[0]
    mean_b = states.mean(0)
    centred = states - mean_b
    total = adapt.count + batch
    delta = mean_b - adapt.mean
    mean = adapt.mean + delta * batch / total
    m2 = adapt.m2 + centred.T @ centred + jnp.outer(delta, delta) * adapt.count * batch / total
    log_scale = adapt.log_scale + (jnp.mean(accept) - target) / (k + 1.0) ** 0.6
    return _Adapt(count=jnp.where(collect, total, adapt.count),
                  mean=jnp.where(collect, mean, adapt.mean),
                  m2=jnp.where(collect, m2, adapt.m2), log_scale=log_scale)


def _chain(log_target: Callable, init: Array, rng_key: Array, num_warmup: int,
           num_samples: int, target: float) -> tuple:
    """All chains, vectorised: ``init`` is ``(chains, d)``."""
    chains, dim = init.shape
    batched = jax.vmap(log_target)
    state0 = (init, *batched(init, jax.random.split(jax.random.fold_in(rng_key, 1), chains)))
    adapt0 = _Adapt(jnp.zeros(()), jnp.zeros(dim), jnp.zeros((dim, dim)), jnp.zeros(()))
    min_count = max(20, 2 * dim) * chains

    def step(carry: tuple, inputs: tuple) -> tuple[tuple, tuple]:
        (u, log_pi, log_z, extras), adapt = carry
        k, key = inputs
        move_key, filter_key, accept_key = jax.random.split(key, 3)
        chol = _proposal_chol(adapt, dim, min_count)
        proposal = u + jax.random.normal(move_key, u.shape) @ chol.T
        new_pi, new_z, new_extras = batched(proposal, jax.random.split(filter_key, chains))
        log_alpha = jnp.where(jnp.isfinite(new_pi), new_pi - log_pi, -jnp.inf)
        accept = jnp.log(jax.random.uniform(accept_key, (chains,))) < log_alpha
        pick = lambda new, old: jnp.where(  # noqa: E731
            accept.reshape((chains,) + (1,) * (new.ndim - 1)), new, old)
        state = jax.tree.map(pick, (proposal, new_pi, new_z, new_extras),
                             (u, log_pi, log_z, extras))
        warm = k < num_warmup
        updated = _update(adapt, state[0], jnp.exp(jnp.minimum(log_alpha, 0.0)), k, target,
                          k >= num_warmup // 4)
        adapt = jax.tree.map(lambda a, b: jnp.where(warm, a, b), updated, adapt)
        return (state, adapt), (state[2], state[3], accept)

    total = num_warmup + num_samples
    inputs = (jnp.arange(total), jax.random.split(rng_key, total))
    (_, adapt), (log_z, extras, accepted) = jax.lax.scan(step, (state0, adapt0), inputs)
    cov = _proposal_chol(adapt, dim, min_count)
    return log_z[num_warmup:], jax.tree.map(lambda a: a[num_warmup:], extras), \
        accepted[num_warmup:], cov @ cov.T


def pmmh(
    model: Callable,
    *args: Any,
    num_particles: int,
    rng_key: Array,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    proposal: Proposal = "prior",
    resample_threshold: float = 0.5,
    target_accept: float = 0.25,
    init_params: Mapping[str, Any] | None = None,
    trajectories: bool = False,
    **kwargs: Any,
) -> PMMHResult:
    """Particle marginal Metropolis-Hastings over the unfixed sites outside the ``scan`` body.

    The equations are in the module docstring. Choose ``num_particles`` so that the sd of
    ``log Z^`` near the posterior is about 1 (check with :func:`reparam.particle_filter` over
    a few keys); chains start at ``init_params`` (constrained values) or the prior median,
    each moved by ``U(-0.5, 0.5)`` per unconstrained coordinate.

    Args:
        model: a ``scan`` model (:mod:`reparam.infer.smc_model`); *args, **kwargs: its
            arguments.
        num_particles, proposal, resample_threshold: the filter's (:mod:`reparam.infer.filtering`).
        rng_key: PRNG key (same key, same result).
        num_warmup, num_samples, num_chains: chain lengths (vectorised chains).
        target_accept: the acceptance rate the warmup adapts the step size towards.
        init_params: starting values of (some of) the parameters.
        trajectories: also draw one ancestral path of the latent body sites per draw.

    Raises:
        ValueError: when the model leaves no site outside the body unfixed, and the errors of
            :func:`reparam.infer.smc.build_particle_filter`.
    """
    pf = build_particle_filter(model, *args, num_particles=num_particles, proposal=proposal,
                               resample_threshold=resample_threshold, **kwargs)
    free = pf.info.free
    if not free:
        raise ValueError("reparam.pmmh: every site outside the scan body is fixed; there is "
                         "nothing to infer (use reparam.particle_filter).")
    init_key, jitter_key, run_key = jax.random.split(rng_key, 3)
    start = time.perf_counter()
    point = _initial_point(pf, free, init_params, init_key)
    flat, unravel = ravel_pytree(point)
    init = flat + jax.random.uniform(jitter_key, (num_chains, flat.shape[0]), flat.dtype,
                                     -0.5, 0.5)
    log_target = _target(pf, free, unravel, trajectories)
    run = jax.jit(_chain, static_argnums=(0, 3, 4, 5))
    log_z, extras, accepted, cov = run(log_target, init, run_key, num_warmup, num_samples,
                                       target_accept)
    samples = {n: np.swapaxes(np.asarray(v), 0, 1) for n, v in extras.items()}
    seconds = time.perf_counter() - start
    return PMMHResult(samples=samples, log_evidence=np.asarray(log_z).T,
                      accept_rate=np.asarray(accepted).mean(0), step_cov=np.asarray(cov),
                      seconds=seconds)
