"""Matrix-free curvature of the potential: its diagonal by coloured probes, Newton by CG.

Write ``x`` for the involved sites' unconstrained values in model coordinates (flattened in the
plan's order) and ``H`` for the Hessian of the potential in ``x``, the other sites fixed. Nothing
here forms ``H``: every operation is a Hessian-vector product (forward over reverse mode), so
time and memory are a small multiple of one gradient evaluation, linear in the data.

**Diagonal.** Suppose ``H`` couples two elements of the *same* site only along the site's
sequence axis and within ``period - 1`` steps. That holds for additive models: each observation
loads on one element of each site (so the likelihood never couples two elements of one site) and
the priors are iid or Markov along time (random walk, AR(1), local linear trend: tridiagonal,
``period = 2``). Colour the elements of site ``s`` by ``t mod period`` (one colour for a site
without the sequence axis) and probe with ``v_{s,c}`` = 1 on the elements of colour ``c`` of
site ``s``, 0 elsewhere. No two probed elements are coupled, so on them

    (H v_{s,c})_k = H_kk,

and ``sum_s period_s`` products give the exact diagonal (a handful, whatever the model's size).

**Newton.** The conditional mode given the other sites solves ``H step = grad``; preconditioned
conjugate gradients (``M = diag(H)^{-1}``) need only products with ``H``. CG minimises the error
in the ``H``-norm, i.e. in units of the local posterior sd, so a few dozen iterations place every
direction -- ridge directions included -- within a fraction of its sd of the mode.

``diag(H)^{-1/2}`` is the best mean-field Gaussian's sd for the local Gaussian target in model
coordinates: the guide a plain (not decorrelated) mean-field fit converges to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from reparam.local.analysis import LocalGaussian, as_float64
from reparam.local.plan import LinearPlan

DEFAULT_PERIOD = 2  # Markov priors along time: tridiagonal within a site
CG_ITERATIONS = 60


def colour_probes(plan: LinearPlan, period: int = DEFAULT_PERIOD) -> np.ndarray:
    """The probe vectors ``v_{s,c}`` (one row each, ``plan.dim`` columns, 0/1 float64).

    Sites with the plan's sequence axis get ``min(period, length)`` colours along it, the others
    one.

    Raises:
        ValueError: if ``period`` is not a positive int.
    """
    if not isinstance(period, (int, np.integer)) or period < 1:
        raise ValueError(f"period must be a positive int, got {period!r}.")
    sequence = plan.structure.sequence
    rows, start = [], 0
    for site in plan.sites:
        if sequence is not None and sequence in site.dims:
            axis = site.axis_of(sequence)
            index = np.broadcast_to(
                np.expand_dims(np.arange(site.shape[axis]), tuple(
                    a for a in range(len(site.shape)) if a != axis)),
                site.shape,
            ).ravel()
            colours = [index % period == c for c in range(min(period, site.shape[axis]))]
        else:
            colours = [np.ones(site.size, bool)]
        for colour in colours:
            row = np.zeros(plan.dim)
            row[start : start + site.size] = colour
            rows.append(row)
        start += site.size
    return np.stack(rows)


def _potential_program(local: LocalGaussian):
    """``(args, kwargs, point) -> (potential of x, x0, unconstrained point)``."""
    plan, model = local.plan, local.model

    def setup(args, kwargs, point):
        unconstrained = unconstrain_fn(model.fn, args, kwargs, dict(point))
        x0 = plan.join({s.name: unconstrained[s.name] for s in plan.sites})

        def potential(x_flat):
            values = plan.split(x_flat)
            return potential_energy(model.fn, args, kwargs, {**unconstrained, **values})

        return potential, x0, unconstrained

    return setup


def _diagonal(potential, x: Array, probes: Array) -> Array:
    grad = jax.grad(potential)

    def product(v):
        return jax.jvp(grad, (x,), (v,))[1]

    probes = probes.astype(x.dtype)
    products = jax.lax.map(product, probes)  # one probe at a time: memory of one gradient
    return jnp.sum(products * probes, axis=0)


def newton_program(
    local: LocalGaussian, period: int = DEFAULT_PERIOD, iterations: int = CG_ITERATIONS
):
    """The compiled ``(point, probes) -> (moved sites, diag(H) there)`` of
    :func:`newton_matrix_free` (float64 inputs; call under ``jax.enable_x64``)."""
    plan, model = local.plan, local.model
    setup = _potential_program(local)

    def build():
        def step(args, kwargs, point, probes):
            potential, x0, unconstrained = setup(args, kwargs, point)
            grad = jax.grad(potential)
            diag = _diagonal(potential, x0, probes)
            safe = jnp.where(diag > 0, diag, 1.0)
            move, _ = jax.scipy.sparse.linalg.cg(
                lambda v: jax.jvp(grad, (x0,), (v,))[1], grad(x0), maxiter=iterations,
                M=lambda v: v / safe,
            )
            x1 = x0 - move
            moved = constrain_fn(model.fn, args, kwargs, {**unconstrained, **plan.split(x1)})
            # the diagonal at the moved point (the same for a Gaussian likelihood)
            new_potential, _, _ = setup(args, kwargs, {**point, **moved})
            return moved, _diagonal(new_potential, x1, probes)

        return step

    return local._compiled(f"newton_cg_{period}_{iterations}", build)


def newton_matrix_free(
    local: LocalGaussian,
    point: Mapping[str, Any],
    *,
    period: int = DEFAULT_PERIOD,
    iterations: int = CG_ITERATIONS,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A preconditioned-CG Newton step of the involved sites and the Hessian diagonal there.

    Args:
        local: the local Gaussian view of the model (only its plan and programs are used).
        point: all latent sites in model coordinates.
        period: colours along the sequence axis (module docstring).
        iterations: CG iteration limit.

    Returns:
        ``(new_point, sd)``: the point with the involved sites moved (other sites unchanged) and
        ``diag(H)^{-1/2}`` at the new point in unconstrained model coordinates, by site name.

    Raises:
        ValueError: if the diagonal is not positive (the point is far from a mode, or the
            colouring assumption fails: pass a larger ``period``).
    """
    plan = local.plan
    probes = jnp.asarray(colour_probes(plan, period))
    with jax.enable_x64(True):
        moved, diag = newton_program(local, period, iterations)(as_float64(point), probes)
        diag = np.asarray(diag)
    if not np.all(np.isfinite(diag)) or np.any(diag <= 0):
        raise ValueError(
            "The Hessian diagonal is not positive at this point: start nearer a mode, or, if "
            "sites are coupled along the sequence axis beyond neighbouring steps, pass a larger "
            "`period`."
        )
    new_point = dict(point)
    new_point.update({s.name: np.asarray(moved[s.name]) for s in plan.sites})
    return new_point, plan.split(diag**-0.5)


def hessian_diagonal(
    local: LocalGaussian, point: Mapping[str, Any], *, period: int = DEFAULT_PERIOD
) -> dict[str, np.ndarray]:
    """``diag(H)`` at ``point`` by coloured probes (unconstrained model coordinates)."""
    plan = local.plan
    probes = jnp.asarray(colour_probes(plan, period))
    setup = _potential_program(local)

    def build():
        def evaluate(args, kwargs, point, probes):
            potential, x0, _ = setup(args, kwargs, point)
            return _diagonal(potential, x0, probes)

        return evaluate

    with jax.enable_x64(True):
        diag = local._compiled(f"hessian_diagonal_{period}", build)(as_float64(point), probes)
        return {k: np.asarray(v) for k, v in plan.split(diag).items()}

