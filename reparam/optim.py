"""Optimisers: SVI steps relative to guide scales, and the one deterministic L-BFGS.

Coordinates whose posterior sd is 0.003 and coordinates whose sd is 0.5 should both move in
units of their own spread; Adam alone moves every coordinate by about its learning rate
(:func:`relative_steps`). :func:`minimize` is L-BFGS on a compiled value and gradient, for
the deterministic optimisations (Laplace start, ceilings, reference posteriors), and
:func:`hessian_by_differences` / :func:`inverse_sds` give the spread at its optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.flatten_util import ravel_pytree
from numpyro.distributions import biject_to, constraints
from scipy import optimize

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
    fun: Callable[..., Array],
    x0: Any,
    *,
    args: tuple = (),
    max_iterations: int = 200,
    tolerance: float = 1e-6,
    callback: Callable[[int, float], None] | None = None,
    value_and_grad: Callable[..., tuple[Array, Any]] | None = None,
) -> Minimum:
    """Minimises a smooth JAX function by L-BFGS (SciPy's L-BFGS-B, no bounds) on its value and
    gradient compiled once, until the gradient's max-norm is below ``tolerance``, the relative
    decrease stalls (SciPy's ``ftol``) or ``max_iterations`` iterations ran. The one L-BFGS of
    the project (the Laplace start, the ceiling and the reference posterior use it);
    deterministic; call under ``jax.enable_x64`` for float64.

    Measured on B2's Laplace start (7 scales, a dense 1,161-dim Cholesky per evaluation):
    16.7 s for 27 iterations (33 evaluations), against 33 s for optax's L-BFGS with its zoom
    line search compiled in (34 iterations, ~1.4 evaluations each).

    Args:
        fun: the objective ``fun(x, *args)``, a pure JAX function of pytrees of arrays.
        x0: the start (a pytree of arrays).
        args: further arguments of ``fun``, held fixed (traced arguments of the compiled
            function, not constants).
        max_iterations: iteration limit.
        tolerance: stop once ``max |grad| <= tolerance``.
        callback: called as ``callback(iteration, value)`` after each iteration.
        value_and_grad: ``(fun(x, *args), its gradient)`` already compiled (e.g. a program
            shared between fits); default: ``fun``'s, compiled here.
    """
    flat0, unflatten = ravel_pytree(x0)
    dtype = flat0.dtype
    if value_and_grad is None:
        flat_value_and_grad = jax.jit(
            jax.value_and_grad(lambda flat, *a: fun(unflatten(flat), *a)))
    else:
        def flat_value_and_grad(flat, *a):
            value, grad = value_and_grad(unflatten(flat), *a)
            return value, ravel_pytree(grad)[0]

    def evaluate(flat: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = flat_value_and_grad(jnp.asarray(flat, dtype), *args)
        return float(value), np.asarray(grad, np.float64)

    value0, grad0 = evaluate(np.asarray(flat0))
    history = [value0]

    def record(intermediate_result: optimize.OptimizeResult) -> None:  # SciPy's keyword
        history.append(float(intermediate_result.fun))
        if callback is not None:
            callback(len(history) - 2, history[-1])

    if np.max(np.abs(grad0), initial=0.0) <= tolerance or max_iterations == 0:
        return Minimum(x=x0, value=value0, iterations=0, history=history, converged=True)
    result = optimize.minimize(
        evaluate, np.asarray(flat0, np.float64), jac=True, method="L-BFGS-B",
        callback=record, options={"maxiter": max_iterations, "gtol": tolerance},
    )
    converged = bool(np.max(np.abs(result.jac), initial=0.0) <= tolerance)
    return Minimum(x=unflatten(jnp.asarray(result.x, dtype)), value=float(result.fun),
                   iterations=int(result.nit), history=history, converged=converged)


def inverse_sds(hessian: np.ndarray) -> np.ndarray:
    """Sds ``sqrt(diag(H^-1))`` from the Hessian ``H`` of a negative log density at its mode
    (NaN where ``H`` is not positive definite); ``H`` is symmetrised first."""
    hessian = 0.5 * (hessian + hessian.T)
    try:
        np.linalg.cholesky(hessian)
    except np.linalg.LinAlgError:
        return np.full(hessian.shape[0], np.nan)
    return np.sqrt(np.diag(np.linalg.inv(hessian)))


def hessian_by_differences(value_and_grad: Callable, x: Array, *args: Any) -> np.ndarray:
    """The Hessian of ``fun`` at ``x`` (``value_and_grad(x, *args) = (fun, grad fun)``) by
    central differences of the compiled gradient (``2 d`` evaluations, step
    ``1e-5 (1 + |x_k|)``, float64: relative error ~1e-9), which spares
    compiling second derivatives of an objective that already holds derivatives (e.g. the
    Laplace objective's log-determinant of a Hessian)."""
    x = np.asarray(x, np.float64)
    columns = []
    for k, step in enumerate(1e-5 * (1.0 + np.abs(x))):
        shift = np.zeros_like(x)
        shift[k] = step
        plus, minus = (np.asarray(value_and_grad(jnp.asarray(x + sign * shift), *args)[1])
                       for sign in (1.0, -1.0))
        columns.append((plus - minus) / (2.0 * step))
    return np.stack(columns, axis=1) if columns else np.zeros((0, 0))
