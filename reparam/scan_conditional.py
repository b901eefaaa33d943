"""The Gaussian-conditional map of :class:`reparam.scan.GaussianConditional` (whole paths).

For a ``scan`` whose configured body sites ``x`` (stacked over the steps into one vector ``z``)
enter the body's log density ``l(z) = log p(z | theta) + log p(y_obs | z, theta)`` (``theta``:
everything the body closes over, i.e. values sampled before the loop), the map is

    z = m + L^{-T} u,   H = -d^2 l / dz^2 at z = 0 = L L^T,   m = H^{-1} dl/dz at z = 0,

a Newton step from ``0`` and the Cholesky factor of the precision, both functions of ``theta``
only (never of ``u``). ``log|det dz/du| = -sum log diag L``. When the body is linear-Gaussian
in ``x`` given ``theta`` (every state-space model with Gaussian noise and Gaussian
observations), ``m`` and ``H^{-1}`` are the exact conditional mean and covariance of the path
given ``theta`` and the data, so ``u | theta, y ~ N(0, I)`` exactly: the posterior of the path
is whitened for every ``theta`` (the affine coefficients are recomputed in closed form at each
``theta`` rather than learned once), and a mean-field guide over ``(theta, u)`` loses nothing
along the path. For other bodies the map is a Laplace-style preconditioner and the
reparameterization stays exact (the Jacobian is accounted for).

Observed body sites and the configured sites enter ``l``; other latent body sites (or the
body's ``y`` under prior predictive, where it is not observed) are held at a fixed draw while
computing ``m`` and ``L``, so the map stays a function of ``theta`` alone. The cost is one dense
``n x n`` Hessian and Cholesky per model evaluation (``n = T x`` the step's size): meant for
paths of up to a few thousand elements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from jax.flatten_util import ravel_pytree
from numpyro import handlers


def body_log_density(
    f: Callable,
    init: Any,
    xs: Any,
    length: int,
    reverse: bool,
    names: tuple[str, ...],
) -> Callable[[Mapping[str, Array]], Array]:
    """``paths -> l(paths)``: the body's log density of the configured sites ``names`` (values
    ``paths[name]`` of shape ``(T, *step shape)``) and of its observed sites.

    The body runs under ``handlers.block`` (invisible to the model's handlers) with a fixed
    seed for any other latent site.
    """

    def one_step(carry: Any, inputs: Any) -> tuple[Any, Array]:
        x_t, values = inputs
        with handlers.block():
            tracer = handlers.trace(
                handlers.substitute(handlers.seed(f, rng_seed=0), data=dict(values))
            )
            new_carry, _ = tracer(carry, x_t)
        total = jnp.zeros(())
        for name, site in tracer.trace.items():
            if site["type"] == "sample" and (name in names or site["is_observed"]):
                total = total + jnp.sum(site["fn"].log_prob(site["value"]))
        new_carry = jax.tree.map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), new_carry,
                                 carry)
        return new_carry, total

    def log_density(paths: Mapping[str, Array]) -> Array:
        carry = jax.tree.map(lambda a: jnp.asarray(a, jnp.asarray(a).dtype), init)  # strong
        _, terms = jax.lax.scan(one_step, carry, (xs, dict(paths)), length=length,
                                reverse=reverse)
        return jnp.sum(terms)

    return log_density


def conditional_map(
    log_density: Callable[[Mapping[str, Array]], Array],
    shapes: Mapping[str, tuple[int, ...]],
    whitened: Mapping[str, Array],
) -> tuple[dict[str, Array], Array]:
    """Maps whitened values ``u`` (``whitened[name]``, shape ``shapes[name]``) to the paths.

    Returns:
        ``(paths, log_det)`` with ``paths = m + L^{-T} u`` (see the module docstring) and
        ``log_det = log|det d paths / du| = -sum log diag L``.
    """
    zero = {name: jnp.zeros(shape) for name, shape in shapes.items()}
    flat_zero, unravel = ravel_pytree(zero)

    def flat_log_density(flat: Array) -> Array:
        return log_density(unravel(flat))

    gradient = jax.grad(flat_log_density)(flat_zero)
    precision = -jax.jacfwd(jax.grad(flat_log_density))(flat_zero)
    precision = 0.5 * (precision + precision.T)
    chol = jnp.linalg.cholesky(precision)
    mean = jax.scipy.linalg.cho_solve((chol, True), gradient)
    flat_u, _ = ravel_pytree({name: whitened[name] for name in shapes})
    offset = jax.scipy.linalg.solve_triangular(chol.T, flat_u, lower=False)
    log_det = -jnp.sum(jnp.log(jnp.diag(chol)))
    return unravel(mean + offset), log_det
