"""The hyperparameters' posterior mode from the collapsed likelihood: the Laplace start without
a dense matrix over the location effects.

The Laplace start (:func:`reparam.laplace_mode`) maximises, over the unconstrained
hyperparameters ``h``,

    log p(y, x_h, h) - 1/2 log det P(h),

``x_h`` the location effects' conditional mode and ``P(h)`` their precision, built densely
(``jax.hessian`` over every location dim and its Cholesky, in every evaluation and gradient).
For a Gaussian likelihood that objective is exactly ``log p(y_obs, h)`` up to a constant
(docs/design.md section 2.1), which the structured algebra of :mod:`tensorfact.collapsed`
evaluates with no matrix over all effects. :func:`collapsed_mode` maximises it by the same
L-BFGS (:func:`reparam.optim.minimize`, float64), with the same spread (central differences of
the compiled gradient), and returns the same :class:`~reparam.LaplaceMode`: the same ``h*`` and
sds (measured within 1e-5 relative; the objectives differ by exactly ``d/2 log 2 pi``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from reparam.local.laplace import LaplaceMode
from reparam.optim import hessian_by_differences, inverse_sds, minimize
from reparam.programs import PROGRAMS, ProgramKey
from tensorfact.collapsed.sampler import collapsed_gaussian, collapsed_model
from tensorfact.collapsed.structured import StructuredGaussian
from tensorfact.model.tensor import TensorModel

MAX_SPREAD_DIM = 64  # as reparam.laplace_mode: no spread above this many hyperparameter dims


def collapsed_mode(
    model: TensorModel,
    y: np.ndarray,
    mask: np.ndarray,
    point: Mapping[str, Any],
    *,
    max_iterations: int = 200,
) -> LaplaceMode:
    """Maximises ``log p(h) + log p(y_obs | h)`` (unconstrained ``h``, Jacobians included).

    Args:
        model: a tensor model with a Gaussian likelihood and built-in priors
            (:func:`tensorfact.methods.exact.check_exact_spec`).
        y: data in the model's dim order (NaN allowed where ``mask`` is false).
        mask: true where a cell is observed.
        point: starting values of all latent sites (model coordinates).
        max_iterations: L-BFGS iteration limit.

    Returns:
        The mode: ``point`` with the hyperparameters at ``h*`` (the location sites as given:
        :func:`reparam.initialize` moves them to their conditional mode next), the Laplace sds
        of the unconstrained hyperparameters, and ``log p(y_obs, h*)``.

    Raises:
        ValueError: if the objective is not finite at ``point``.
    """
    with jax.enable_x64(True):
        gaussian = collapsed_gaussian(model, y, mask)
        data = jax.tree.map(jnp.asarray, gaussian.data)
        shapes, unconstrain, constrain, value_and_grad, fun = _programs(gaussian, data)
        start = {k: jnp.asarray(point[k], jnp.float64) for k in shapes}
        x0 = unconstrain(start, data)
        if not np.isfinite(float(value_and_grad(x0, data)[0])):
            raise ValueError(
                "The collapsed log marginal is not finite at the starting point; give "
                "starting hyperparameters inside their support."
            )
        result = minimize(fun, x0, args=(data,), max_iterations=max_iterations,
                          value_and_grad=value_and_grad)
        sd = np.full(len(x0), np.nan)
        if len(x0) <= MAX_SPREAD_DIM:
            sd = inverse_sds(hessian_by_differences(value_and_grad, result.x, data))
        best = constrain(result.x, data)
        return LaplaceMode(
            point={**{k: np.asarray(v) for k, v in point.items()},
                   **{k: np.asarray(best[k]) for k in shapes}},
            unconstrained_sd={k: np.asarray(v) for k, v in unflatten(shapes, sd).items()},
            log_marginal=-float(result.value),
            iterations=int(result.iterations),
        )


def unflatten(shapes: Mapping[str, tuple[int, ...]], flat: Any) -> dict[str, Any]:
    """``flat`` (the sites' values raveled in sorted name order) as a dict of ``shapes``."""
    out, at = {}, 0
    for name in sorted(shapes):
        size = int(np.prod(shapes[name]))
        out[name] = jnp.reshape(flat[at:at + size], shapes[name])
        at += size
    return out


def _programs(gaussian: StructuredGaussian, data: Any) -> tuple:
    """``(shapes, unconstrain, constrain, value_and_grad, fun)`` of the collapsed potential
    over the flat unconstrained hyperparameters, compiled once per model, algebra and data
    shapes (:data:`reparam.programs.PROGRAMS`; the data are traced)."""
    hyper_model = collapsed_model(gaussian)

    def sites(data):
        trace = handlers.trace(handlers.seed(hyper_model, 0)).get_trace(data)
        return {k: s["value"] for k, s in trace.items()
                if s["type"] == "sample" and not s["is_observed"]}

    def build():
        shapes = {k: tuple(v.shape) for k, v in jax.eval_shape(sites, data).items()}

        def fun(x, data):
            return potential_energy(hyper_model, (data,), {}, unflatten(shapes, x))

        def unconstrain(values, data):
            free = unconstrain_fn(hyper_model, (data,), {}, values)
            return jnp.concatenate([jnp.ravel(free[k]) for k in sorted(shapes)])

        def constrain(x, data):
            return constrain_fn(hyper_model, (data,), {}, unflatten(shapes, x))

        return (shapes, jax.jit(unconstrain), jax.jit(constrain),
                jax.jit(jax.value_and_grad(fun)), fun)

    model_id = gaussian.model.program_key()
    shapes = tuple((np.shape(x), str(x.dtype)) for x in jax.tree.leaves(data))
    key = ProgramKey(kind="collapsed_mode", model=model_id,
                     settings=(type(gaussian).__name__,), arguments=(shapes,))
    return PROGRAMS.get(key, build)
