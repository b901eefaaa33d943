"""Laplace-approximate mode of the sites that are not decorrelated (e.g. scale hyperparameters).

Constrained sites that the decorrelation involves (a scale as a parent) count among those
sites: they are optimised, not integrated out.

The decorrelation coefficients depend on the values of the other latent sites ``h`` (for an
additive model: the prior scales decide how a ridge is split between effects). Coefficients
computed at a poor ``h`` feed back into a poor ``h`` during SVI, so training starts from

    h* = argmax_h  log p(y, x_h, h) - 1/2 log det P(h)

where ``x_h`` is the involved sites' mode given ``h`` (one Newton step, exact for a Gaussian
likelihood, recognised by its precision not moving with a Newton step; :data:`INNER_NEWTON`
steps from the conditional mode at the start otherwise) and
``P(h)`` their precision: the Laplace approximation of ``log p(y, h)`` with the involved sites
integrated out (exact for a Gaussian likelihood). Everything is in unconstrained
coordinates (the potential includes the Jacobians), so ``h*`` is a posterior mode of the
unconstrained ``h``; the inverse Hessian there gives its local spread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import constrain_fn, potential_energy

from reparam.local.analysis import LocalGaussian, as_float64, check_dense_fits
from reparam.local.factor import positive_curvature
from reparam.optim import hessian_by_differences, inverse_sds, minimize

MAX_SPREAD_DIM = 64
INNER_NEWTON = 10  # Newton steps to x_h inside the objective for a non-Gaussian likelihood


@dataclass(frozen=True)
class LaplaceMode:
    """Result of :func:`laplace_mode`.

    Attributes:
        point: all latent sites in model coordinates: other sites at ``h*``, involved sites at
            their conditional mode given ``h*``.
        unconstrained_sd: approximate posterior sd of each other site in unconstrained space
            (Laplace; NaN when not available: indefinite, or more than 64 dims).
        log_marginal: the Laplace objective at ``h*`` (``log p(y, h*)`` up to a constant).
        iterations: optimiser iterations used.
    """

    point: dict[str, np.ndarray]
    unconstrained_sd: dict[str, np.ndarray]
    log_marginal: float
    iterations: int


def integrated(plan: Any) -> np.ndarray:
    """Mask over the involved coordinates integrated out by the Laplace step: those of
    real-valued sites. A constrained involved site (a scale as parent or child) is optimised
    with the other sites instead: its curvature along a funnel is no Gaussian's."""
    return np.concatenate([np.full(s.size, s.real_support) for s in plan.sites])


def inner_steps(local: LocalGaussian, point: Mapping[str, Any]) -> int:
    """Newton steps to ``x_h`` in the objective: 1 where the involved sites are Gaussian given
    the others (``local.exact_newton``, or the local precision the same at ``point`` and one
    Newton step on: the potential is quadratic in them), else :data:`INNER_NEWTON`."""
    if local.exact_newton:
        return 1
    moved, before = local.newton(point)
    after = positive_curvature(local.precision(moved))
    scale = float(np.max(np.abs(before))) if before.size else 0.0
    return 1 if np.allclose(after, before, rtol=1e-6, atol=1e-9 * scale) else INNER_NEWTON


def _objective(local: LocalGaussian, unflatten: Callable,
               steps: int) -> tuple[Callable, Callable]:
    """``(objective, fun)`` as programs of the model's arguments (``f(args, kwargs, ...)``,
    :meth:`LocalGaussian._compiled`): ``objective(other, unconstrained)`` returns the negative
    Laplace objective ``-log p(y, x_h, h) + 1/2 log det P(h)`` and ``x_h``, the involved sites'
    Newton step (rotated coordinates); ``fun(flat, unconstrained)`` is that value at the
    flattened other sites ``h``."""
    plan, model = local.plan, local.model

    def objective(args, kwargs, other: dict[str, Array], unconstrained: dict[str, Array]):
        base = {**unconstrained, **other}
        z0 = plan.rotate(plan.join({s.name: base[s.name] for s in plan.sites}))

        def potential(z_flat):
            values = plan.split(plan.rotate(z_flat, inverse=True))
            return potential_energy(model.fn, args, kwargs, {**base, **values})

        moved = np.flatnonzero(integrated(plan))  # static: the real-valued involved sites

        def newton(z):
            gradient = jax.grad(potential)(z)[moved]
            chol = jnp.linalg.cholesky(jax.hessian(potential)(z)[jnp.ix_(moved, moved)])
            step = jax.scipy.linalg.cho_solve((chol, True), gradient)
            return z.at[moved].add(-step), chol

        z = z0
        if steps > 1:  # a non-Gaussian likelihood: the conditional mode takes more steps
            z = jax.lax.fori_loop(0, steps - 1, lambda _, z: newton(z)[0], z0)
        z, chol = newton(z)
        return potential(z) + jnp.sum(jnp.log(jnp.diag(chol))), z

    def fun(args, kwargs, flat: Array, unconstrained: dict[str, Array]) -> Array:
        return objective(args, kwargs, unflatten(flat), unconstrained)[0]

    return objective, fun


def laplace_mode(
    local: LocalGaussian, point: Mapping[str, Any], *, max_iterations: int = 200
) -> LaplaceMode:
    """Maximises the Laplace-approximate marginal over the sites not decorrelated.

    Args:
        local: the :class:`LocalGaussian` of a decorrelated model.
        point: starting values of all latent sites (model coordinates).
        max_iterations: L-BFGS iteration limit (:func:`reparam.optim.minimize`).

    Raises:
        ValueError: if the objective is not finite at ``point``, or the involved sites' dense
            precision would not fit in memory (:func:`~reparam.local.analysis.check_dense_fits`).
    """
    plan = local.plan
    check_dense_fits(plan.dim)  # its objective holds the involved sites' dense Hessian
    involved = {s.name for s in plan.sites if s.real_support}  # integrated out

    with jax.enable_x64(True):
        unconstrained = local.unconstrained(as_float64(point))
        names = sorted(k for k in unconstrained if k not in involved)
        x0, unflatten = ravel_pytree({k: unconstrained[k] for k in names})
        x0 = np.asarray(x0)
        # compiled once per model, plan and argument shapes (reparam.programs.PROGRAMS): a
        # second fit of the same model shape reuses them (the model's arguments are traced)
        steps = inner_steps(local, point)
        objective, fun = _objective(local, unflatten, steps)
        evaluate = local._compiled(f"laplace_value_{steps}", lambda: fun)
        value0 = float(evaluate(jnp.asarray(x0), unconstrained))
        if not np.isfinite(value0):
            raise ValueError(
                "The Laplace objective is not finite at the starting point; give starting "
                "values inside the support with a positive-definite local precision."
            )
        if names:
            value_and_grad = local._compiled(
                f"laplace_value_and_grad_{steps}", lambda: jax.value_and_grad(fun, argnums=2))
            result = minimize(evaluate, jnp.asarray(x0), args=(unconstrained,),
                              max_iterations=max_iterations, value_and_grad=value_and_grad)
            best, value, iterations = result.x, result.value, result.iterations
            sd_flat = np.full(len(x0), np.nan)
            if len(x0) <= MAX_SPREAD_DIM:  # Hessian of the objective at the mode
                sd_flat = inverse_sds(hessian_by_differences(value_and_grad, best,
                                                                  unconstrained))
        else:  # nothing to optimise: the mode is the involved sites' Newton step
            best, value, iterations, sd_flat = jnp.asarray(x0), value0, 0, np.zeros(0)
        other = unflatten(best)
        _, z_mode = local._compiled(f"laplace_mode_{steps}", lambda: objective)(
            other, unconstrained)
        values = plan.split(plan.rotate(z_mode, inverse=True))
        constrained = constrain_fn(local.model.fn, local.args, local.kwargs,
                                   {**unconstrained, **other, **values})
        return LaplaceMode(
            point={k: np.asarray(v) for k, v in constrained.items()},
            unconstrained_sd={k: np.asarray(v) for k, v in unflatten(jnp.asarray(sd_flat)).items()},
            log_marginal=-value,
            iterations=iterations,
        )
