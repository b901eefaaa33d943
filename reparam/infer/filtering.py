"""The particle filter's core: proposals and the filtering recursion over a ``scan`` body.

For a model of the form of :mod:`reparam.infer.smc_model` with the values outside the body
(``theta``) fixed, the filter runs ``N`` particles through the body, step by step::

    resample:   if ESS(W_{t-1}) < tau N:  a_t^i ~ systematic(W_{t-1}),  W_{t-1}^i = 1 / N
    propagate:  z_t^i ~ q(z_t | c_{t-1}^{a_t^i}, y_t),   c_t^i = step(c_{t-1}^{a_t^i}, x_t)
    weight:     w_t^i = p(z_t^i | c) p(y_t | z_t^i, c) / q(z_t^i | c, y_t)
    evidence:   log Z_t = log Z_{t-1} + log sum_i W_{t-1}^i w_t^i,   W_t^i prop. to W_{t-1}^i w_t^i

``log Z_T`` estimates ``log p(y_{0:T-1} | theta)`` (the body's observed sites only; ``Z_T`` is
unbiased). Proposals ``q``:

* ``"prior"`` (bootstrap): ``q = p(z_t | c_{t-1})``, so ``w_t = p(y_t | z_t, c_{t-1})``.
* ``"optimal"``: the Gaussian ``q = N(m, H^{-1})`` of one Newton step of ``l(z) = log p(z | c)
  + log p(y_t | z, c)`` from the prior mean ``z0``: ``H = -l''(z0)``, ``m = z0 + H^{-1} l'(z0)``
  (the map of :mod:`reparam.scan.conditional` on a single step). When the body is
  linear-Gaussian in ``z_t`` this is exactly ``p(z_t | c_{t-1}, y_t)``, the locally optimal
  proposal, and ``w_t = p(y_t | c_{t-1})`` does not depend on the draw. For other bodies with
  real-support latents it is a Laplace-type proposal and the weights stay exact importance
  weights (they need ``H`` positive definite; a particle where it is not gets weight 0).

Everything is vectorised: ``vmap`` over particles inside ``jax.lax.scan`` over steps.
:func:`build_particle_filter` returns the builder whose :meth:`ParticleFilter.run` is a pure,
``jit``/``vmap``-able function of a key; :func:`reparam.infer.smc.particle_filter` is the
convenient call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import Array

from reparam.control_flow import ScanCall
from reparam.infer.particles import (
    effective_sample_size,
    normalize,
    systematic_resample,
    weighted_mean,
    weighted_quantiles,
    weighted_sd,
)
from reparam.infer.smc_model import (
    ScanModel,
    capture_scan,
    inspect_model,
    log_density_terms,
    recorded_values,
    run_body,
)
from reparam.scan.conditional import conditional_map

Proposal = Literal["prior", "optimal"]


class FilterOutput(NamedTuple):
    """Raw output of :meth:`ParticleFilter.run` (``T`` steps, ``N`` particles).

    Attributes:
        log_evidence: ``log Z_T``.
        increments: ``log Z_t - log Z_{t-1}`` per step, ``(T,)``.
        ess: ``1 / sum_i (W_t^i)^2`` after weighting at step ``t``, ``(T,)``.
        resampled: whether the particles were resampled before step ``t``, ``(T,)``.
        particles: latent and deterministic body site -> values ``(T, N, *shape)``.
        log_weights: normalised ``log W_t^i``, ``(T, N)``.
        ancestors: ``a_t^i`` (index into step ``t - 1``), ``(T, N)``.
        carries: the carry after step ``t``, leaves ``(T, N, ...)``.
    """

    log_evidence: Array
    increments: Array
    ess: Array
    resampled: Array
    particles: dict[str, Array]
    log_weights: Array
    ancestors: Array
    carries: Any


@dataclass(frozen=True, eq=False)
class ParticleFilter:
    """A particle filter for one model and its arguments (from :func:`build_particle_filter`).

    Attributes:
        info: what the model's trace showed (:class:`reparam.infer.smc_model.ScanModel`).
    """

    model: Callable
    args: tuple
    kwargs: dict
    info: ScanModel
    num_particles: int
    proposal: Proposal
    resample_threshold: float
    recorded: tuple[str, ...] = field(default=())

    def run(self, rng_key: Array) -> FilterOutput:
        """Runs the model up to its ``scan`` and filters (values outside the body as the model
        fixes them). Same key, same result."""
        model_key, filter_key = jax.random.split(rng_key)
        call, _ = capture_scan(self.model, self.args, self.kwargs, model_key)
        return self.filter_call(call, filter_key)

    def filter_call(self, call: ScanCall, rng_key: Array) -> FilterOutput:
        """Filters the ``scan`` call ``call`` (e.g. captured at other outer values)."""
        if self.proposal == "optimal":
            move = _optimal_move(call.f, self.info.latent, self.recorded)
        else:
            move = _bootstrap_move(call.f, self.recorded)
        return _filter(move, call, self.num_particles, self.resample_threshold, rng_key)


def build_particle_filter(
    model: Callable,
    *args: Any,
    num_particles: int,
    proposal: Proposal = "prior",
    resample_threshold: float = 0.5,
    **kwargs: Any,
) -> ParticleFilter:
    """Inspects ``model`` (one eager trace) and returns its :class:`ParticleFilter`.

    Args:
        model: a NumPyro model calling ``numpyro.contrib.control_flow.scan`` once, with
            observed sites inside the body.
        *args, **kwargs: the model's arguments (the data included).
        num_particles: ``N``.
        proposal: ``"prior"`` (bootstrap) or ``"optimal"`` (see the module docstring).
        resample_threshold: ``tau``: resample when ``ESS < tau N`` (``1``: every step).

    Raises:
        ValueError: for the model errors of :func:`reparam.infer.smc_model.inspect_model`, an
            unknown proposal, or ``"optimal"`` with a latent body site without real support
            (discrete, or constrained: those need ``"prior"``).
        TypeError: for a non-integer ``num_particles``.
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, int):
        raise TypeError(f"num_particles must be an int, got {num_particles!r}.")
    if num_particles < 1:
        raise ValueError(f"num_particles must be positive, got {num_particles}.")
    if proposal not in ("prior", "optimal"):
        raise ValueError(f"proposal must be 'prior' or 'optimal', got {proposal!r}.")
    if not 0.0 <= resample_threshold <= 1.0:
        raise ValueError(f"resample_threshold must be in [0, 1], got {resample_threshold}.")
    info = inspect_model(model, args, kwargs)
    if not info.latent:
        raise ValueError("reparam.particle_filter: the scan body has no latent site to filter.")
    constrained = [n for n, real in info.real_support.items() if not real]
    if proposal == "optimal" and constrained:
        raise ValueError(
            f"proposal='optimal' needs real-support (continuous, unconstrained) latent body "
            f"sites; {constrained} are discrete or constrained. Use proposal='prior' (the "
            "bootstrap filter supports any latent site), or write the site on the real line "
            "(e.g. a log-scale Normal instead of LogNormal)."
        )
    return ParticleFilter(model, args, kwargs, info, num_particles, proposal,
                          resample_threshold, (*info.latent, *info.deterministic))


def _bootstrap_move(f: Callable, recorded: tuple[str, ...]) -> Callable:
    def move(carry: Any, x_t: Any, key: Array) -> tuple[Any, dict, Array]:
        new_carry, _, trace = run_body(f, carry, x_t, key)
        _, observed = log_density_terms(trace)
        return new_carry, recorded_values(trace, recorded), observed

    return move


def _prior_center(f: Callable, carry: Any, x_t: Any, names: Sequence[str]) -> dict[str, Array]:
    """The latent sites at their prior means given ``carry`` (each given the earlier ones)."""

    def at_mean(msg: dict) -> Array | None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return None
        mean = jnp.broadcast_to(msg["fn"].mean, msg["fn"].shape())
        return jnp.where(jnp.isfinite(mean), mean, 0.0)

    _, _, trace = run_body(f, carry, x_t, jax.random.PRNGKey(0), substitute_fn=at_mean)
    return {n: jnp.asarray(trace[n]["value"]) for n in names}


def _optimal_move(f: Callable, shapes: Mapping[str, tuple[int, ...]],
                  recorded: tuple[str, ...]) -> Callable:
    names = tuple(shapes)
    one_step = {n: (1, *shape) for n, shape in shapes.items()}

    def move(carry: Any, x_t: Any, key: Array) -> tuple[Any, dict, Array]:
        center = _prior_center(f, carry, x_t, names)

        def shifted(paths: Mapping[str, Array]) -> Array:  # l(z0 + paths), one step
            values = {n: paths[n][0] + center[n] for n in names}
            return sum(log_density_terms(run_body(f, carry, x_t, key, values=values)[2]))

        keys = jax.random.split(key, len(names) + 1)
        u = {n: jax.random.normal(k, one_step[n]) for n, k in zip(names, keys[1:], strict=True)}
        offsets, log_det = conditional_map(shifted, one_step, u)
        values = {n: offsets[n][0] + center[n] for n in names}
        new_carry, _, trace = run_body(f, carry, x_t, keys[0], values=values)
        latent, observed = log_density_terms(trace)
        log_q = sum(jnp.sum(dist.Normal(0.0, 1.0).log_prob(v)) for v in u.values()) - log_det
        increment = latent + observed - log_q
        increment = jnp.where(jnp.isnan(increment), -jnp.inf, increment)
        return new_carry, recorded_values(trace, recorded), increment

    return move


def _filter(move: Callable, call: ScanCall, num: int, threshold: float,
            rng_key: Array) -> FilterOutput:
    """The ``lax.scan`` over steps of the module docstring's recursion."""

    def strong(a: Any) -> Array:
        a = jnp.asarray(a, jnp.asarray(a).dtype)
        return jnp.broadcast_to(a, (num, *a.shape))

    carry0 = jax.tree.map(strong, call.init)
    log_w0 = jnp.full((num,), -jnp.log(num))

    def step(state: tuple, inputs: tuple) -> tuple[tuple, tuple]:
        carry, log_w = state
        x_t, key = inputs
        resample_key, move_key = jax.random.split(key)
        resample = effective_sample_size(log_w) < threshold * num
        ancestors = jnp.where(resample, systematic_resample(resample_key, log_w),
                              jnp.arange(num))
        carry = jax.tree.map(lambda a: a[ancestors], carry)
        log_w = jnp.where(resample, -jnp.log(num), log_w)
        keys = jax.random.split(move_key, num)
        new_carry, values, increment = jax.vmap(move, in_axes=(0, None, 0))(carry, x_t, keys)
        log_w, log_increment = normalize(log_w + increment)
        ess = effective_sample_size(log_w)
        return (new_carry, log_w), (log_increment, ess, resample, values, log_w, ancestors,
                                    new_carry)

    keys = jax.random.split(rng_key, call.length)
    _, stacked = jax.lax.scan(step, (carry0, log_w0), (call.xs, keys), length=call.length)
    increments, ess, resampled, values, log_w, ancestors, carries = stacked
    return FilterOutput(log_evidence=jnp.sum(increments), increments=increments, ess=ess,
                        resampled=resampled, particles=values, log_weights=log_w,
                        ancestors=ancestors, carries=carries)


def summarize(output: FilterOutput, levels: Sequence[float]) -> tuple[dict, dict, dict]:
    """Filtering means, sds and quantiles per step of every recorded site."""
    mean, sd, quantiles = {}, {}, {}
    for name, values in output.particles.items():
        values = values.astype(jnp.result_type(float))
        mean[name] = jax.vmap(weighted_mean)(values, output.log_weights)
        sd[name] = jax.vmap(weighted_sd)(values, output.log_weights)
        q = jax.vmap(lambda v, w: weighted_quantiles(v, w, levels))(values, output.log_weights)
        quantiles[name] = jnp.moveaxis(q, 1, 0)
    return mean, sd, quantiles
