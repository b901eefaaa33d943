"""Local Gaussian analysis of a decorrelated model and its optimal coefficients.

Around a point, the posterior of the involved sites is approximately Gaussian with precision
``P`` (the Hessian of the potential in rotated, unconstrained coordinates ``z``; exact for a
Gaussian likelihood with the other sites fixed). The family of :mod:`reparam.family` maps the
auxiliary ``u`` to ``z = F(theta) u``, unit lower triangular: each child is
``z_c = (I + W_c) u_c - S_c(z_parents)``.

With every coefficient free, a mean-field Gaussian over ``u`` is exact: write
``P = N^T D^{-1} N`` (LDL in reversed order, ``N`` unit lower triangular, ``u = N z``); row
block ``c`` of ``N`` holds the conditional regression of ``z_c`` on earlier sites after
marginalising later ones, ``P_cc^{-1} P_c,<c``, so the exact per-child map is
``I + W_c = N_cc^{-1}`` and ``S_c = N_cc^{-1} N_c,<c``. Its least-squares projection onto the
family's free coefficients is the principled initialisation returned by
:func:`gaussian_coefficients` and :meth:`LocalGaussian.coefficients`. The best mean-field sds
for ``u`` are then ``diag(F^T P F)^{-1/2}`` (:meth:`LocalGaussian.aux_point`).

All linear algebra runs in float64 (inside ``jax.enable_x64``) because posterior ridges make
``P`` too ill-conditioned for float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import Array
from numpyro import handlers
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from reparam.decenter import prior_scale
from reparam.handler import DecorrelateMessenger
from reparam.local.factor import cholesky, optimal_factor, positive_curvature
from reparam.local.plan import LinearPlan, linear_plan
from reparam.programs import PROGRAMS, Arguments, ProgramKey, model_key


class LocalGaussian:
    """The local Gaussian view of a decorrelated model, compiled once and reused.

    For a point (values of all latent sites in model coordinates) it computes the precision of
    the involved sites, the exact conditional coefficients projected onto the family, and the
    matching mean-field guide in auxiliary coordinates. Its programs are compiled once per
    model, plan and argument shapes in this process (the model's arguments are traced), so a
    refresh during training, or another fit of the same model, costs one Hessian evaluation.

    Args:
        model: a model returned by :func:`reparam.decorrelate`.
        point: a point fixing the sites' shapes (values are not used beyond that).
        *args, **kwargs: the model's arguments (held fixed).
    """

    def __init__(
        self, model: DecorrelateMessenger, point: Mapping[str, Any], *args: Any, **kwargs: Any
    ) -> None:
        self.model = model
        self.plan = linear_plan(model, point, *args, **kwargs)
        self.args, self.kwargs = args, kwargs
        self._arguments = Arguments.split(args, kwargs)
        self._jitted: dict[str, Callable] = {}

    def _compiled(self, name: str, build: Callable[[], Callable]) -> Callable:
        """The compiled ``build()``, a function ``f(args, kwargs, *inputs)``, called with this
        instance's model arguments (traced, not constants: a program is shared with every
        analysis of the same model, plan and argument shapes in this process,
        :data:`reparam.programs.PROGRAMS`)."""
        if name not in self._jitted:
            arguments, inner = self._arguments, build()

            def run(arrays, *inputs):
                return inner(*arguments.join(arrays), *inputs)

            model = model_key(self.model)
            key = None
            if model is not None and arguments.shareable:
                plan = tuple((site.name, site.size) for site in self.plan.sites)
                key = ProgramKey(kind=f"local_{name}", model=model, settings=(plan,),
                                 arguments=arguments.key)
            self._jitted[name] = PROGRAMS.get(key, lambda: jax.jit(run))
        program = self._jitted[name]
        return lambda *inputs: program(self._arguments.arrays, *inputs)

    def unconstrained(self, point: Mapping[str, Array]) -> dict[str, Array]:
        return unconstrain_fn(self.model.fn, self.args, self.kwargs, dict(point))

    def expansion(self, point: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Second-order expansion of the potential at ``point`` in rotated coordinates.

        Returns ``(z, gradient, precision)`` over the involved sites (float64); sites not
        involved in the decorrelation are held at their values in ``point``.
        """
        plan, model = self.plan, self.model
        check_dense_fits(plan.dim)

        def build():
            def expand(args, kwargs, point):
                unconstrained = unconstrain_fn(model.fn, args, kwargs, dict(point))
                z0 = plan.rotate(plan.join({s.name: unconstrained[s.name] for s in plan.sites}))

                def potential(z_flat):
                    values = plan.split(plan.rotate(z_flat, inverse=True))
                    return potential_energy(model.fn, args, kwargs, {**unconstrained, **values})

                return z0, jax.grad(potential)(z0), jax.hessian(potential)(z0)

            return expand

        with jax.enable_x64(True):
            z, gradient, precision = self._compiled("expansion", build)(as_float64(point))
            return np.asarray(z), np.asarray(gradient), np.asarray(precision)

    exact_newton = False  # one Newton step reaches the conditional mode (Gaussian surrogate)

    def potential(self, point: Mapping[str, Any]) -> float:
        """The model's potential (negative log joint, unconstrained) at ``point`` (float64)."""
        model = self.model

        def build():
            def evaluate(args, kwargs, point):
                unconstrained = unconstrain_fn(model.fn, args, kwargs, dict(point))
                return potential_energy(model.fn, args, kwargs, unconstrained)

            return evaluate

        with jax.enable_x64(True):
            return float(self._compiled("potential", build)(as_float64(point)))

    def precision(self, point: Mapping[str, Any]) -> np.ndarray:
        """Hessian of the potential in rotated unconstrained coordinates (float64)."""
        return self.expansion(point)[2]

    def newton(self, point: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """One Newton step of the involved sites towards the local Gaussian mean.

        Returns the updated point (model coordinates; other sites unchanged) and the precision
        at the original point (its saddle-free form where it is indefinite:
        :func:`~reparam.local.factor.positive_curvature`). For a Gaussian likelihood with
        the other sites fixed this is the exact conditional mean. Involved sites with
        constrained support (a scale as a parent or child) are held where they are: a Newton
        step along a scale away from the mode can run down a funnel; the real-valued sites
        move to their conditional mode given them.
        """
        z, gradient, precision = self.expansion(point)
        precision = positive_curvature(precision)
        plan, model = self.plan, self.model
        movable = np.concatenate([np.full(s.size, s.real_support) for s in plan.sites])
        step = np.zeros_like(gradient)
        if movable.any():
            chol = cholesky(precision[np.ix_(movable, movable)])
            step[movable] = scipy.linalg.cho_solve((chol, True), gradient[movable])

        def build():
            def to_model(args, kwargs, point, z_new):
                unconstrained = unconstrain_fn(model.fn, args, kwargs, dict(point))
                values = plan.split(plan.rotate(z_new, inverse=True))
                return constrain_fn(model.fn, args, kwargs, {**unconstrained, **values})

            return to_model

        with jax.enable_x64(True):
            moved = self._compiled("to_model", build)(as_float64(point), jnp.asarray(z - step))
        new_point = dict(point)
        new_point.update({s.name: np.asarray(moved[s.name]) for s in plan.sites})
        return new_point, precision

    def coefficients(
        self, point: Mapping[str, Any], *, precision: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Exact conditional coefficients at ``point``, projected onto the family (float64)."""
        if precision is None:
            precision = self.precision(point)
        target = exact_local_target(self.plan, optimal_factor(positive_curvature(precision)))
        with jax.enable_x64(True):
            project = self._compiled("project", lambda: _without_arguments(projector(self.plan)))
            projected = project(jnp.asarray(target, jnp.float64))
            return {k: np.asarray(v) for k, v in projected.items()}

    def aux_point(
        self,
        point: Mapping[str, Any],
        coefficients: Mapping[str, Any],
        precision: np.ndarray,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Guide-coordinate location of ``point`` and mean-field sds under ``precision``.

        Guide coordinates are ``u`` for children and model coordinates for parent-only sites;
        with ``G`` the linear map from them to ``z``, returns ``(loc, sd)`` keyed by involved
        site name: ``loc = G^{-1} z(point)`` and ``sd = diag(G^T P G)^{-1/2}``, the best
        mean-field Gaussian for the local target.
        """
        plan, model = self.plan, self.model

        def build():
            def evaluate(args, kwargs, point, coefficients, precision):
                unconstrained = unconstrain_fn(model.fn, args, kwargs, dict(point))
                z = plan.rotate(plan.join({s.name: unconstrained[s.name] for s in plan.sites}))
                zero = jnp.zeros(plan.dim)
                sampling = jax.jacfwd(lambda g: plan.guide_to_z(g, coefficients))(zero)
                diag_pu = jnp.einsum("ik,ij,jk->k", sampling, precision, sampling)
                return plan.split(plan.z_to_guide(z, coefficients)), plan.split(diag_pu**-0.5)

            return evaluate

        with jax.enable_x64(True):
            loc, sd = self._compiled("aux_point", build)(
                as_float64(point), as_float64(coefficients), jnp.asarray(precision, jnp.float64)
            )
            return (
                {k: np.asarray(v) for k, v in loc.items()},
                {k: np.asarray(v) for k, v in sd.items()},
            )


    def decentering(
        self,
        point: Mapping[str, Any],
        coefficients: Mapping[str, Any],
        sd: Mapping[str, Any],
    ) -> dict[str, np.ndarray]:
        """Centredness and reference scale of each decentred child at ``point``.

        ``c_k = 1 - p_k / P_k`` with ``P_k = (G^T P G)_kk`` the total precision of guide
        coordinate ``k`` (``sd`` are :meth:`aux_point`'s mean-field sds, ``P_k = sd_k^-2``:
        passing them saves recomputing ``G^T P G``) and ``p_k`` the part from the child's own prior,
        ``(F_cc^T H_c F_cc)_kk`` (``H_c``: Hessian of the child's prior alone,
        ``F_cc = I + W_c``); ``scale_ref`` is the child's prior scale at ``point``
        (see :mod:`reparam.decenter`).
        """
        plan, model = self.plan, self.model
        children = [n for n, f in plan.families.items() if f.decenter]
        if not children:
            return {}

        def build():
            def evaluate(args, kwargs, point, coefficients, sd):
                unconstrained = unconstrain_fn(model.fn, args, kwargs, dict(point))
                z = plan.split(
                    plan.rotate(plan.join({s.name: unconstrained[s.name] for s in plan.sites}))
                )
                total = {name: sd[name] ** -2 for name in children}
                seeded = handlers.seed(handlers.substitute(model.fn, data=point), rng_seed=0)
                trace = handlers.trace(seeded).get_trace(*args, **kwargs)
                out = {}
                for name in children:
                    family = plan.families[name]
                    fn = trace[name]["fn"]

                    def prior_energy(z_c, fn=fn, family=family):
                        value = plan.structure.rotate_value(z_c, family.child, inverse=True)
                        return -jnp.sum(fn.log_prob(value))

                    curvature = jax.hessian(prior_energy)(z[name])
                    size = family.child.size
                    curvature = curvature.reshape(size, size)
                    params = plan.child_params(name, coefficients)
                    block = jax.jacfwd(
                        lambda u, family=family, params=params: jnp.ravel(
                            family.from_aux(u.reshape(family.child.shape), {
                                c.parent.name: jnp.zeros(c.parent.shape)
                                for c in family.couplings
                            }, params)
                        )
                    )(jnp.zeros(size))
                    prior_part = jnp.einsum("ik,ij,jk->k", block, curvature, block)
                    share = prior_part / jnp.ravel(total[name])
                    out[f"{name}_centering"] = jnp.clip(1.0 - share, 0.0, 1.0).reshape(
                        family.child.shape
                    )
                    out[f"{name}_scale_ref"] = prior_scale(fn)
                return out

            return evaluate

        with jax.enable_x64(True):
            values = self._compiled("decentering", build)(
                as_float64(point), as_float64(coefficients),
                as_float64({name: sd[name] for name in children}),
            )
            return {k: np.asarray(v) for k, v in values.items()}


DENSE_COPIES = 6  # float64 dim x dim arrays alive at once in the dense start (measured bound)


def dense_bytes(dim: int) -> int:
    """Memory the dense local analysis needs for ``dim`` involved dims (float64)."""
    return DENSE_COPIES * 8 * dim * dim


def check_dense_fits(dim: int) -> None:
    """Refuses a dense local analysis that cannot fit this machine's memory.

    Raises:
        ValueError: naming the size and the way out, instead of an out-of-memory crash.
    """
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return
    need = dense_bytes(dim)
    if need > 0.8 * memory:
        raise ValueError(
            f"The decorrelated start analyses {dim:,} location dims with dense matrices "
            f"({need / 1e9:.1f} GB; this machine has {memory / 1e9:.1f} GB). Decorrelate fewer "
            "sites, or fit without decorrelation (tensorfact: decorrelate=False), whose start "
            "is matrix-free (reparam.local.curvature)."
        )


def _without_arguments(fn: Callable) -> Callable:
    """``fn`` as a program of :meth:`LocalGaussian._compiled` that ignores the model's
    arguments."""
    return lambda args, kwargs, *inputs: fn(*inputs)


def as_float64(values: Mapping[str, Any]) -> dict[str, Array]:
    """Casts every value to float64 (call under ``jax.enable_x64``)."""
    return {k: jnp.asarray(v, jnp.float64) for k, v in values.items()}


def exact_local_target(plan: LinearPlan, factor: np.ndarray) -> np.ndarray:
    """The exact ``G`` of :meth:`LinearPlan.local_map` for ``u = N z``: child row blocks
    ``N_cc^{-1} [-N_c,<c, I]`` (Markov form: ``N``'s rows ``[N_c,<c, N_cc]``), identity
    elsewhere."""
    target = np.eye(plan.dim)
    start = 0
    for site in plan.sites:
        stop = start + site.size
        if site.name in plan.families and plan.structure.markov:
            target[start:stop, :stop] = factor[start:stop, :stop]
        elif site.name in plan.families:
            block = np.linalg.inv(factor[start:stop, start:stop])
            target[start:stop, :start] = -block @ factor[start:stop, :start]
            target[start:stop, start:stop] = block
        start = stop
    return target


def projector(plan: LinearPlan) -> Callable[[Array], dict[str, Array]]:
    """Returns ``target -> theta``, the least-squares projection of a dense local map onto
    the family (call under ``jax.enable_x64``).

    ``G(theta) - I = A theta`` (see :meth:`LinearPlan.local_map`) with disjoint supports, so
    ``theta = A^T r / A^T A 1`` with ``r = target - I``.
    """
    def linear(c):
        return jax.jacfwd(lambda v: plan.local_map(v, c))(jnp.zeros(plan.dim)) - jnp.eye(plan.dim)

    def project(target: Array) -> dict[str, Array]:
        zero = plan.zero_coefficients(target.dtype)
        ones = jax.tree.map(jnp.ones_like, zero)
        _, transpose = jax.vjp(linear, zero)
        (numerator,) = transpose(target - jnp.eye(plan.dim))
        (denominator,) = transpose(linear(ones))
        return jax.tree.map(
            lambda n, d: jnp.where(d > 0, n / jnp.where(d > 0, d, 1.0), 0.0),
            numerator,
            denominator,
        )

    return project


def gaussian_coefficients(
    model: DecorrelateMessenger,
    point: Mapping[str, Any],
    *args: Any,
    dtype: Any = jnp.float32,
    **kwargs: Any,
) -> dict[str, Array]:
    """Decorrelation coefficients from the local Gaussian conditional at ``point``.

    Returns the projection onto the family of the exact conditional map (module docstring);
    for a Gaussian model whose posterior structure the family contains, this is the exact
    optimum. Use as ``init_params`` of SVI, or keep a :class:`LocalGaussian` to refresh them.

    Args:
        model: a model returned by :func:`reparam.decorrelate`.
        point: values of all latent sites in model coordinates (e.g. an SVI median).
        *args, **kwargs: the model's arguments.
        dtype: dtype of the returned coefficients.
    """
    coefficients = LocalGaussian(model, point, *args, **kwargs).coefficients(point)
    return {k: jnp.asarray(v, dtype) for k, v in coefficients.items()}
