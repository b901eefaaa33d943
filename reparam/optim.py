"""Optimisers: SVI steps relative to guide scales, and the one deterministic L-BFGS.

Coordinates whose posterior sd is 0.003 and coordinates whose sd is 0.5 should both move in
units of their own spread; Adam alone moves every coordinate by about its learning rate
(:func:`relative_steps`). :func:`minimize` is optax's L-BFGS, compiled, for the deterministic
optimisations (Laplace start, ceilings, reference posteriors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import Array
from numpyro.distributions import biject_to, constraints

from reparam.names import GUIDE_LOC_SUFFIX, GUIDE_SCALE_SUFFIX


def relative_steps(
    loc_suffix: str = GUIDE_LOC_SUFFIX,
    scale_suffix: str = GUIDE_SCALE_SUFFIX,
    scale_constraint: Any = constraints.softplus_positive,
) -> optax.GradientTransformation:
    """Multiplies each guide-location update by that coordinate's current guide scale.

    Chain it after an optimiser: ``optax.chain(optax.adam(lr), relative_steps())``. Adam's step
    is about ``lr`` in absolute units whatever the curvature, which makes sharply determined
    coordinates jitter far outside their posterior spread; scaled, the step is ``lr`` posterior
    sds. Parameters without a matching scale pass through unchanged.

    Args:
        loc_suffix: suffix of location parameters (NumPyro's ``AutoNormal``: ``_auto_loc``).
        scale_suffix: suffix of the matching scale parameters.
        scale_constraint: constraint of the scale parameters (the optimiser sees them
            unconstrained).
    """
    to_scale = biject_to(scale_constraint)

    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: dict, state: optax.EmptyState, params: dict | None = None):
        if params is None:
            raise ValueError("relative_steps needs the current params; pass them to update().")
        scaled = dict(updates)
        for key, value in updates.items():
            if key.endswith(loc_suffix):
                scale_key = key[: -len(loc_suffix)] + scale_suffix
                if scale_key in params:
                    scaled[key] = value * to_scale(params[scale_key])
        return scaled, state

    return optax.GradientTransformation(init, update)


@dataclass(frozen=True)
class Minimum:
    """Result of :func:`minimize`.

    Attributes:
        x: the minimiser found (same pytree structure as the start).
        value: the objective there.
        iterations: L-BFGS iterations run.
        history: the objective after each iteration (the start's value first).
        converged: the gradient norm fell below the tolerance.
    """

    x: Any
    value: float
    iterations: int
    history: list[float]
    converged: bool


def minimize(
    fun: Callable[[Any], Array],
    x0: Any,
    *,
    max_iterations: int = 200,
    tolerance: float = 1e-6,
    callback: Callable[[int, float], None] | None = None,
) -> Minimum:
    """Minimises a smooth JAX function with optax's L-BFGS (zoom line search), one compiled
    step per iteration, until the gradient's max-norm is below ``tolerance`` or
    ``max_iterations`` steps ran. The one L-BFGS of the project (the Laplace start, the
    ceiling and the reference posterior use it); call under ``jax.enable_x64`` for float64.

    Args:
        fun: the objective, a pure JAX function of a pytree of arrays.
        x0: the start.
        max_iterations: step limit.
        tolerance: stop once ``max |grad| <= tolerance``.
        callback: called as ``callback(step, value)`` after each step.
    """
    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)

    @jax.jit
    def step(x, state):
        value, grad = value_and_grad(x, state=state)
        updates, state = optimizer.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        x = optax.apply_updates(x, updates)
        return x, state, optax.tree.get(state, "value"), _max_norm(optax.tree.get(state, "grad"))

    initial = jax.jit(jax.value_and_grad(fun))
    value, grad = initial(x0)
    x, state, history = x0, optimizer.init(x0), [float(value)]
    converged, done = bool(_max_norm(grad) <= tolerance), 0
    while not converged and done < max_iterations:
        x, state, value, norm = step(x, state)
        done += 1
        history.append(float(value))
        converged = bool(norm <= tolerance)
        if callback is not None:
            callback(done - 1, history[-1])
    return Minimum(x=x, value=history[-1], iterations=done, history=history,
                   converged=converged)


def _max_norm(tree: Any) -> Array:
    norms = [jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(tree) if leaf.size]
    return jnp.max(jnp.stack(norms)) if norms else jnp.zeros(())
