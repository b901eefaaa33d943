"""The ceiling of a decorrelation family: the best mean-field fit it can reach.

For a Gaussian target with precision ``P`` over the involved sites and the family's sampling
map ``z = F(theta) u``, the best mean-field Gaussian over ``u`` has variances
``D = 1 / diag(F^T P F)`` and KL ``1/2 sum log diag(F^T P F) - 1/2 log det P`` (``det F = 1``).
Minimising it over ``theta`` deterministically (L-BFGS, no Monte Carlo) gives the best any
optimiser could reach in that family; the implied marginal sds ``sqrt(diag(F D F^T))`` show
whether that optimum is honest along the ridges. Use it to choose a family before tuning
optimisers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from reparam.local.analysis import exact_local_target, optimal_factor, projector
from reparam.local.plan import LinearPlan
from reparam.optim import minimize


@dataclass(frozen=True)
class Ceiling:
    """Best mean-field fit reachable by a family for a Gaussian target.

    Attributes:
        kl: KL(q || target) in nats at the returned coefficients.
        sds: implied marginal sds in model coordinates, site name -> array.
        coefficients: the coefficients reaching ``kl``.
        kl_history: KL after each optimiser step (first entry: the projected init).
    """

    kl: float
    sds: dict[str, np.ndarray]
    coefficients: dict[str, np.ndarray]
    kl_history: list[float]


def _mean_field_kl(sampling: Array, precision: Array, logdet: Array) -> tuple[Array, Array]:
    diag_pu = jnp.einsum("ik,ij,jk->k", sampling, precision, sampling)
    return 0.5 * jnp.sum(jnp.log(diag_pu)) - 0.5 * logdet, diag_pu


def ceiling(
    plan: LinearPlan,
    precision_model: np.ndarray,
    *,
    steps: int = 200,
    init: Mapping[str, Array] | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> Ceiling:
    """Minimises the family's mean-field KL to a Gaussian target with L-BFGS (deterministic).

    Args:
        plan: from :func:`linear_plan`.
        precision_model: target precision over ``plan.sites`` in model (unconstrained)
            coordinates, flattened in ``plan`` order.
        steps: L-BFGS iterations (0: evaluate the projected exact factor only).
        init: starting coefficients (default: projection of the exact conditional map).
        callback: called as ``callback(step, kl)``.
    """
    with jax.enable_x64(True):
        precision = plan.rotate_matrix(jnp.asarray(precision_model, jnp.float64))
        logdet = jnp.linalg.slogdet(precision)[1]
        if init is None:
            target = exact_local_target(plan, optimal_factor(np.asarray(precision)))
            init = jax.jit(projector(plan))(jnp.asarray(target, jnp.float64))
        theta = {k: jnp.asarray(v, jnp.float64) for k, v in init.items()}

        def loss(c):
            return _mean_field_kl(plan.sampling_matrix(c), precision, logdet)[0]

        result = minimize(loss, theta, max_iterations=steps, tolerance=0.0, callback=callback)
        theta, history = result.x, result.history

        @jax.jit
        def summarise(theta):
            sampling = plan.sampling_matrix(theta)
            kl, diag_pu = _mean_field_kl(sampling, precision, logdet)
            cov_z = (sampling / diag_pu[None, :]) @ sampling.T
            back = jax.vmap(lambda v: plan.rotate(v, inverse=True))
            cov_x = back(back(cov_z).T).T
            return kl, plan.split(jnp.sqrt(jnp.diag(cov_x)))

        kl, sds = summarise(theta)
        return Ceiling(
            kl=float(kl),
            sds={k: np.asarray(v) for k, v in sds.items()},
            coefficients={k: np.asarray(v) for k, v in theta.items()},
            kl_history=history,
        )

