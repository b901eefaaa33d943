"""Smoothed trajectories and forecasts from a particle filter (:mod:`reparam.infer.smc`).

* Ancestral tracing: draw ``b_{T-1} ~ W_{T-1}`` and follow ``b_{t-1} = a_t^{b_t}``; the path
  ``(z_t^{b_t})_t`` is a draw from the filter's approximation of ``p(z_{0:T-1} | y)`` (exact as
  ``N -> infinity``; few distinct values at early steps: path degeneracy).
* Backward simulation (FFBSi): ``b_{T-1} ~ W_{T-1}``, then for ``t = T-2..0``
  ``P(b_t = i) prop. to W_t^i p(z_{t+1}^{b_{t+1}}, y_{t+1} | c_t^i)``, the body's density of
  the next step given particle ``i``'s carry. This needs the carry to be Markov in the latent
  sites: the new carry a function of the step's latent values and ``x_t`` only (checked on the
  body's jaxpr), else re-attaching ``z_{t+1}`` to another ancestor would change every later
  carry.
* Forecast: draw particles from the last filtering distribution and run the model's own body
  forward with ``future_xs`` (``None``: the observed sites are sampled).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from reparam.control_flow import ScanCall
from reparam.infer.filtering import FilterOutput, ParticleFilter
from reparam.infer.smc_model import capture_scan, inspect_model, log_density_terms, run_body
from reparam.scan.conditional import _dependent_outputs


def ancestral_indices(output: FilterOutput, rng_key: Array, num: int) -> Array:
    """Particle index of each of ``num`` traced-back paths at every step, ``(T, num)``."""
    last = jax.random.categorical(rng_key, output.log_weights[-1], shape=(num,))

    def back(b: Array, ancestors_t: Array) -> tuple[Array, Array]:
        return ancestors_t[b], b

    first, later = jax.lax.scan(back, last, output.ancestors[1:], reverse=True)
    return jnp.concatenate([first[None], later])


def gather_paths(values: dict[str, Array], indices: Array) -> dict[str, Array]:
    """``values[n][t, indices[t, m]]`` as ``(num, T, *shape)`` per site."""
    return {n: jnp.swapaxes(jax.vmap(lambda v, i: v[i])(v, indices), 0, 1)
            for n, v in values.items()}


def check_markov(call: ScanCall, latent: tuple[str, ...]) -> None:
    """Refuses backward simulation when the body's new carry depends on the old carry
    beyond the latent sites (read from the jaxpr of one step; nothing is computed).

    Raises:
        ValueError: naming the fix (``smoothing="ancestral"``).
    """
    def step(carry: Any, x: Any, values: dict) -> list:
        return jax.tree.leaves(run_body(call.f, carry, x, jax.random.PRNGKey(0), values)[0])

    values = {n: jnp.zeros(s) for n, s in _latent_shapes(call, latent).items()}
    jaxpr = jax.make_jaxpr(step)(call.init, call.first_input, values).jaxpr
    flags = ([True] * len(jax.tree.leaves(call.init))
             + [False] * (len(jax.tree.leaves(call.first_input)) + len(latent)))
    if any(_dependent_outputs(jaxpr, flags)):
        raise ValueError(
            "smoothing='backward' needs a body whose new carry is a function of the step's "
            f"latent sites {list(latent)} (and x_t) only; this body's carry also depends on "
            "the previous carry (a deterministic state such as mu_t = beta mu_{t-1} + x_t), "
            "so backward simulation does not apply. Use smoothing='ancestral', or sample the "
            "whole state in the body."
        )


def _latent_shapes(call: ScanCall, latent: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from reparam.scan.strategies import probe_body

    sites = probe_body(call.f, call.init, call.first_input).sites
    return {n: sites[n].shape for n in latent}


def backward_indices(call: ScanCall, output: FilterOutput, latent: tuple[str, ...],
                     rng_key: Array, num: int) -> Array:
    """Backward-simulation indices ``(T, num)`` (module docstring; ``O(num N T)``)."""
    keys = jax.random.split(rng_key, call.length)
    last = jax.random.categorical(keys[-1], output.log_weights[-1], shape=(num,))
    values = {n: output.particles[n] for n in latent}

    def log_transition(carry: Any, x: Any, z: dict) -> Array:
        _, _, trace = run_body(call.f, carry, x, jax.random.PRNGKey(0), values=z)
        return sum(log_density_terms(trace))

    def step(state: tuple, inputs: tuple) -> tuple[tuple, Array]:
        _, z_next = state
        carry_t, log_w_t, x_next, z_t, key = inputs
        pairwise = jax.vmap(jax.vmap(log_transition, (0, None, None)), (None, None, 0))
        logits = log_w_t[None] + pairwise(carry_t, x_next, z_next)  # (num, N)
        b = jax.random.categorical(key, logits, axis=-1)
        return (b, {n: v[b] for n, v in z_t.items()}), b

    head = lambda a: a[:-1]  # noqa: E731
    inputs = (jax.tree.map(head, output.carries), output.log_weights[:-1],
              jax.tree.map(lambda a: a[1:], call.xs), jax.tree.map(head, values), keys[:-1])
    start = (last, {n: v[-1][last] for n, v in values.items()})
    _, earlier = jax.lax.scan(step, start, inputs, reverse=True)
    return jnp.concatenate([earlier, last[None]])


def smooth(pf: ParticleFilter, output: FilterOutput, rng_key: Array, method: str,
           num: int) -> dict[str, Array]:
    """Smoothed paths ``(num, T, *shape)``: every recorded site (``"ancestral"``) or the
    latent sites (``"backward"``).

    Raises:
        ValueError: for an unknown method, or backward simulation on a non-Markov carry.
    """
    if method == "ancestral":
        return jax.jit(gather_paths)(output.particles,
                                     ancestral_indices(output, rng_key, num))
    if method != "backward":
        raise ValueError(f"smoothing must be 'ancestral', 'backward' or None, got {method!r}.")
    latent = tuple(pf.info.latent)
    call, _ = capture_scan(pf.model, pf.args, pf.kwargs, jax.random.PRNGKey(0))
    check_markov(call, latent)

    def run(output: FilterOutput, key: Array) -> dict[str, Array]:
        call, _ = capture_scan(pf.model, pf.args, pf.kwargs, jax.random.PRNGKey(0))
        indices = backward_indices(call, output, latent, key, num)
        return gather_paths({n: output.particles[n] for n in latent}, indices)

    return jax.jit(run)(output, rng_key)


def forecast(
    model: Callable,
    *args: Any,
    filtered: Any,
    num_steps: int,
    rng_key: Array,
    num_draws: int | None = None,
    future_xs: Any = None,
    **kwargs: Any,
) -> dict[str, Array]:
    """Forecasts ``num_steps`` steps past the data with the model's own transition.

    Draws ``num_draws`` particles ``i ~ W_{T-1}`` (default ``N``) and runs the body from their
    carries ``c_{T-1}^i`` on ``future_xs`` (a pytree with leading axis ``num_steps``, or
    ``None``: the body gets ``x_t = None``, so sites observed through ``xs`` are sampled).

    Args:
        model, *args, **kwargs: the model and the arguments given to the filter.
        filtered: the filter's result.
        num_steps: forecast horizon ``h``.
        rng_key: PRNG key.

    Returns:
        Every sample and deterministic body site -> ``(num_draws, h, *shape)``.

    Raises:
        ValueError: when latent sites outside the body are not fixed.
    """
    output = getattr(filtered, "output", filtered)
    info = inspect_model(model, args, kwargs)
    if info.free:
        raise ValueError(f"forecast: fix the sites {list(info.free)} outside the scan body "
                         "(the same model as given to the filter).")
    num_draws = num_draws or output.log_weights.shape[1]
    model_key, draw_key, run_key = jax.random.split(rng_key, 3)

    def run(output: FilterOutput) -> dict[str, Array]:
        call, _ = capture_scan(model, args, kwargs, model_key)
        index = jax.random.categorical(draw_key, output.log_weights[-1], shape=(num_draws,))
        carry = jax.tree.map(lambda a: a[-1][index], output.carries)

        def step(carry: Any, inputs: tuple) -> tuple[Any, dict]:
            x_t, key = inputs

            def one(c: Any, k: Array) -> tuple[Any, dict]:
                new, _, trace = run_body(call.f, c, x_t, k)
                return new, {n: s["value"] for n, s in trace.items()
                             if s["type"] in ("sample", "deterministic")}

            return jax.vmap(one)(carry, jax.random.split(key, num_draws))

        keys = jax.random.split(run_key, num_steps)
        _, values = jax.lax.scan(step, carry, (future_xs, keys), length=num_steps)
        return {n: jnp.swapaxes(v, 0, 1) for n, v in values.items()}

    return jax.jit(run)(output)
