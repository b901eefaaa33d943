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

Because ``m`` and ``L`` depend on the observed body sites, a path is a function of its whitened
values *and the data*. :func:`draw_paths` uses a path given from outside (e.g. posterior draws
substituted by ``Predictive(..., condition_deterministic=True)``) as it is, and
:func:`check_data_present` refuses to recompute one from given whitened values when the body
observes nothing but has latent sites depending on the path (its data passed as ``None``):
that would silently use the prior's map. A body that observes some of its data sites but not
others cannot be told apart from one fitted that way; give the path there too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import Array
from jax.extend.core import Literal
from jax.flatten_util import ravel_pytree
from numpyro import handlers

from reparam.control_flow import ScanCall
from reparam.names import JACOBIAN_SUFFIX, WHITENED_SUFFIX


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


class _WhitenedPrior(dist.Independent):
    """``N(0, I)`` of a whole whitened path, noting whether NumPyro asked it for a draw (it is
    not asked when the value is given: substituted, replayed or conditioned)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__(dist.Normal(0.0, 1.0).expand(shape), len(shape))
        self.drawn = False

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        self.drawn = True
        return super().sample(key, sample_shape)

    def sample_with_intermediates(self, key: Array, sample_shape: tuple[int, ...] = ()):
        self.drawn = True
        return super().sample_with_intermediates(key, sample_shape)


def draw_paths(
    call: ScanCall, step_shapes: Mapping[str, tuple[int, ...]], body_observed: bool
) -> dict[str, Array]:
    """Draws the whitened sites of the configured sites before the loop and returns their
    paths (recorded as deterministic sites; a path given from outside, e.g. by ``Predictive``
    with ``condition_deterministic=True``, is used as given).

    Args:
        call: the ``scan`` call.
        step_shapes: configured site -> shape of one step's value.
        body_observed: whether the body has an observed site in this call.

    Raises:
        ValueError: when a path would be recomputed from given whitened values without the
            data that its map conditions on (see :func:`check_data_present`).
    """
    names = tuple(step_shapes)
    if not names:
        return {}
    shapes = {name: (call.length, *shape) for name, shape in step_shapes.items()}
    priors = {name: _WhitenedPrior(shape) for name, shape in shapes.items()}
    whitened = {name: numpyro.sample(name + WHITENED_SUFFIX, priors[name]) for name in names}
    density = body_log_density(call.f, call.init, call.xs, call.length, call.reverse, names)
    paths, log_det = conditional_map(density, shapes, whitened)
    standard = sum(jnp.sum(dist.Normal(0.0, 1.0).log_prob(u)) for u in whitened.values())
    numpyro.factor(names[0] + WHITENED_SUFFIX + JACOBIAN_SUFFIX, log_det - standard)
    recorded = {name: numpyro.deterministic(name, paths[name]) for name in names}
    recomputed = [n for n in names if recorded[n] is paths[n] and not priors[n].drawn]
    if recomputed and not body_observed:
        check_data_present(call, step_shapes, recomputed)
    return recorded


def check_data_present(
    call: ScanCall, step_shapes: Mapping[str, tuple[int, ...]], recomputed: list[str]
) -> None:
    """Refuses to recompute paths from given whitened values when the body observes nothing
    but has latent sites that depend on the paths: those are the data the map conditioned on
    when the whitened values were drawn (e.g. ``y`` passed as ``None`` to ``Predictive``), and
    without them ``x = m + L^{-T} u`` would use the prior's ``m, L``: a draw far off the
    posterior. (A body that never observes anything, e.g. a transition whose likelihood is
    outside the loop, has no such sites and is let through.)

    Raises:
        ValueError: naming the sites and the ways to give the path.
    """
    dependents = path_dependent_sites(call, step_shapes)
    if not dependents:
        return
    whitened = [name + WHITENED_SUFFIX for name in recomputed]
    raise ValueError(
        f"GaussianConditional cannot recompute {recomputed} from the given {whitened}: the "
        f"scan body observes nothing in this call, but its latent site(s) {dependents} depend "
        f"on {recomputed}, so they are data the map x = m + L^-T u conditions on (here "
        "presumably passed as None, e.g. for posterior predictive). Without them x would be "
        "computed with the prior's map and come out far off the posterior. Give the path "
        f"itself: Predictive(model, posterior_samples=samples, condition_deterministic=True) "
        f"with {recomputed} in samples (MCMC's get_samples() has them; after SVI, draw them "
        "with the data first, e.g. Predictive(model, guide=guide, params=params, "
        "num_samples=n)(key, data)), or pass the data."
    )


def path_dependent_sites(call: ScanCall, step_shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Latent body sites (other than ``step_shapes``' names) whose distribution depends on the
    configured sites' values, within a step or through the carry (read from the jaxpr of one
    step: no numbers are computed)."""
    names = tuple(step_shapes)
    counts: dict[str, int] = {}

    def step(carry: Any, x: Any, values: Mapping[str, Array]) -> tuple[list, list]:
        with handlers.block():
            seeded = handlers.seed(call.f, rng_seed=0)
            tracer = handlers.trace(handlers.substitute(seeded, data=dict(values)))
            new_carry, _ = tracer(carry, x)
        leaves = []
        for name, site in tracer.trace.items():
            if site["type"] == "sample" and not site["is_observed"] and name not in names:
                fn_leaves = [a for a in jax.tree.leaves(site["fn"]) if isinstance(a, jax.Array)]
                counts[name] = len(fn_leaves)
                leaves += fn_leaves
        return jax.tree.leaves(new_carry), leaves

    values = {name: jnp.zeros(shape) for name, shape in step_shapes.items()}
    jaxpr = jax.make_jaxpr(step)(call.init, call.first_input, values).jaxpr
    num_carry = len(jax.tree.leaves(call.init))
    fixed = [False] * len(jax.tree.leaves(call.first_input)) + [True] * len(names)
    carry = [False] * num_carry
    while True:  # carry elements that depend on the paths, through any number of steps
        out = _dependent_outputs(jaxpr, carry + fixed)
        updated = [a or b for a, b in zip(carry, out[:num_carry], strict=True)]
        if updated == carry:
            break
        carry = updated
    found, start = [], num_carry
    for name, count in counts.items():
        if any(out[start : start + count]):
            found.append(name)
        start += count
    return found


def _dependent_outputs(jaxpr: Any, dependent_inputs: list[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on the inputs flagged (forward, conservative)."""
    dependent = {v for v, flag in zip(jaxpr.invars, dependent_inputs, strict=True) if flag}
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, Literal) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
    return [not isinstance(v, Literal) and v in dependent for v in jaxpr.outvars]
