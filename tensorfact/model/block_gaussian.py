"""The decorrelated start of the tensor model at a cost linear in cells: the local Gaussian
analysis by Helmert blocks instead of a dense Hessian.

In Helmert coordinates the precision of the location effects splits into independent blocks
(:mod:`reparam.local.blocks`, ``docs/design.md`` section 8.2) when every cell is observed with
one noise level; blocks of one type are identical. With cell weights ``w[i, j, t]`` (the
likelihood's curvature, :meth:`~tensorfact.model.tensor.TensorModel.cell_precision`) the
block of type ``S`` has precision

    P_S = blockdiag_e(Q_e) + sum_t wbar_t h_t h_t^T,     wbar_t = mean_{i,j} w[i, j, t],

over its members ``e`` (one element or one time chain per effect whose dims contain ``S``),
with ``Q_e`` the effect's prior precision (``1 / scale^2``; the random walk's / AR(1)'s
tridiagonal ``T x T``) and ``h_t`` the rotated design: ``c_e = sqrt(prod of the sizes of the
non-time dims e lacks)`` at ``e``'s element (at step ``t`` for a chain). Exact for complete data
with one noise level; with missing cells or per-series noise it keeps the observed weight per
time step and drops the cross-block terms (the reparameterization stays exact whatever the
coefficients; what this costs is measured with ``experiments/ceiling_b2.py``).

:class:`BlockGaussian` replaces :class:`reparam.LocalGaussian`'s dense steps: the Newton step
by conjugate gradients on the exact Hessian-vector product, preconditioned by the block solve
(one iteration on complete data); the coefficients by the per-type exact factor projected with
:meth:`~reparam.local.blocks.HelmertBlocks.project`; the mean-field sds and the decentring from
the per-type blocks. Cost per start ``O(cells)`` per CG iteration plus ``O(sum_S n_S size_S^2)``
for the block solves and ``O(size^3)`` per type -- no matrix over all location effects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from reparam.decenter import prior_scale
from reparam.handler import DecorrelateMessenger
from reparam.local.analysis import LocalGaussian, as_float64, optimal_factor
from reparam.local.blocks import BlockType, HelmertBlocks
from tensorfact.model.tensor import TensorModel, _vectorised
from tensorfact.spec import GrandMean, Shrinkage, Temporal

CG_TOLERANCE = 1e-9  # relative residual of the Newton solve
CG_MAX_ITERATIONS = 200


def block_support(tensor: TensorModel, decorrelated: DecorrelateMessenger) -> str | None:
    """Why the block start does not apply to this model (``None``: it does)."""
    for effect in tensor.spec.effects:
        if isinstance(effect, Shrinkage) and effect.prior == "horseshoe":
            return f"effect {effect.name!r} has a horseshoe prior (per-element scales)"
        if isinstance(effect, Temporal) and (not _vectorised(effect)
                                             or effect.kind not in ("random_walk", "ar1")):
            return f"temporal effect {effect.name!r} is not a random walk or AR(1)"
    config = decorrelated.config if isinstance(decorrelated.config, Mapping) else {}
    off = [s.name for s in tensor.location_sites if s.dims and s.name not in config]
    if off:
        return f"effects {off} are not decorrelated"
    return None


class SurrogateGaussian(LocalGaussian):
    """The dense :class:`reparam.LocalGaussian` of the tensor model's Gaussian surrogate
    (:meth:`TensorModel.gaussian_surrogate`): the involved sites are Gaussian given the
    others, so one Newton step reaches their conditional mode."""

    exact_newton = True


class BlockGaussian(LocalGaussian):
    """:class:`reparam.LocalGaussian` of the tensor model by Helmert blocks (module docstring).

    The "precision" it passes between its steps is the per-type block precision (a dict
    ``block type -> (size, size)`` float64 array), never a ``dim x dim`` matrix.

    Args:
        model: the decorrelated tensor model (:meth:`TensorModel.decorrelated`), every
            effect with dims decorrelated (:func:`block_support`).
        tensor: the tensor model it decorrelates (Gaussian or its Gaussian surrogate).
        point: a point fixing the sites' shapes.
        y, mask: the data.

    Raises:
        ValueError: if :func:`block_support` refuses the model.
    """

    exact_newton = True  # the Gaussian surrogate of the tensor model: one step is exact

    def __init__(self, model: DecorrelateMessenger, tensor: TensorModel,
                 point: Mapping[str, Any], y: Any, mask: Any) -> None:
        reason = block_support(tensor, model)
        if reason is not None:
            raise ValueError(f"The block start does not apply: {reason}.")
        super().__init__(model, point, y, mask)
        self.tensor = tensor
        self.blocks = HelmertBlocks(self.plan)
        self.mask = jnp.asarray(mask)
        self._maps: tuple[bytes, dict[BlockType, np.ndarray]] | None = None

    # -- the per-type blocks ----------------------------------------------------------------
    def block_precision(self, point: Mapping[str, Any]) -> dict[BlockType, np.ndarray]:
        """``P_S`` of every block type at ``point`` (float64)."""
        wbar = self._step_weights(point)
        return {kind: self._type_precision(kind, point, wbar)[0] for kind in self.blocks.types}

    def _step_weights(self, point: Mapping[str, Any]) -> np.ndarray:
        """``wbar_t``: the cells' likelihood curvature averaged over the series per step."""
        spec = self.tensor.spec
        weights = np.asarray(self.tensor.cell_precision(point, self.mask), np.float64)
        return weights.mean(axis=tuple(a for a, d in enumerate(spec.dims) if d != spec.time))

    def _type_precision(self, kind: BlockType, point: Mapping[str, Any], wbar: np.ndarray
                        ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        tensor, spec = self.tensor, self.tensor.spec
        size = self.blocks.sizes[kind]
        design = np.zeros((wbar.shape[0], size))  # h_t
        precision = np.zeros((size, size))
        priors = {}
        effects = {s.name: tensor.spec.effect(s.effect) for s in tensor.location_sites}
        for member in self.blocks.types[kind]:
            effect = effects[member.site]
            dims = spec.effect_dims(effect)
            c = np.sqrt(np.prod([tensor.sizes[d] for d in spec.other_dims if d not in dims]))
            rows = slice(member.offset, member.offset + member.length)
            if member.length == 1:
                design[:, member.offset] = c
            else:
                design[np.arange(member.length), member.offset + np.arange(member.length)] = c
            prior = _prior_precision(effect, point, member.length)
            precision[rows, rows] += prior
            priors[member.site] = prior
        precision += design.T @ (wbar[:, None] * design)
        return precision, priors

    # -- the steps of reparam.initialize ----------------------------------------------------
    def newton(self, point: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict]:
        """The involved sites moved to the conditional mode (CG on the exact Hessian-vector
        product, block-preconditioned); returns the point and the block precision."""
        precision = self.block_precision(point)
        inverses = {k: jnp.asarray(np.linalg.inv(p)) for k, p in precision.items()}
        plan, model, blocks = self.plan, self.model, self.blocks

        def build():
            def solve(args, kwargs, point, inverses):
                unconstrained = unconstrain_fn(model.fn, args, kwargs, dict(point))
                z0 = plan.rotate(plan.join({s.name: unconstrained[s.name] for s in plan.sites}))

                def potential(z_flat):
                    values = plan.split(plan.rotate(z_flat, inverse=True))
                    return potential_energy(model.fn, args, kwargs, {**unconstrained, **values})

                gradient = jax.grad(potential)
                g0 = gradient(z0)

                def hvp(v):
                    return jax.jvp(gradient, (z0,), (v,))[1]

                def precondition(r):
                    parts = blocks.gather(r)
                    return blocks.scatter({k: parts[k] @ inverses[k] for k in parts})

                step = _conjugate_gradients(hvp, g0, precondition)
                values = plan.split(plan.rotate(z0 - step, inverse=True))
                return constrain_fn(model.fn, args, kwargs, {**unconstrained, **values})

            return solve

        with jax.enable_x64(True):
            moved = self._compiled("block_newton", build)(as_float64(point), inverses)
        new_point = dict(point)
        new_point.update({s.name: np.asarray(moved[s.name]) for s in plan.sites})
        return new_point, precision

    def coefficients(self, point: Mapping[str, Any], *, precision: Mapping | None = None
                     ) -> dict[str, np.ndarray]:
        """The exact per-type factor, projected onto the family (float64)."""
        precision = self.block_precision(point) if precision is None else precision
        targets = {k: self._target(k, p) for k, p in precision.items()}
        with jax.enable_x64(True):
            project = self._compiled("block_project", lambda: lambda args, kwargs, t:
                                     self.blocks.project(t))
            projected = project({k: jnp.asarray(v) for k, v in targets.items()})
            return {k: np.asarray(v) for k, v in projected.items()}

    def _target(self, kind: BlockType, precision: np.ndarray) -> np.ndarray:
        """The exact local map on one block of type ``kind`` (as ``exact_local_target``)."""
        factor = optimal_factor(precision)
        target = np.eye(len(precision))
        markov = self.plan.structure.markov
        for member in self.blocks.types[kind]:
            start, stop = member.offset, member.offset + member.length
            if member.site not in self.plan.families:
                continue
            if markov:
                target[start:stop, :stop] = factor[start:stop, :stop]
            else:
                block = np.linalg.inv(factor[start:stop, start:stop])
                target[start:stop, :start] = -block @ factor[start:stop, :start]
                target[start:stop, start:stop] = block
        return target

    def block_maps(self, coefficients: Mapping[str, Any]) -> dict[BlockType, np.ndarray]:
        """The family's local map ``G(theta)`` on one block of each type (blocks of a type are
        alike), by one probe per position; the last result is kept (:meth:`aux_point` and
        :meth:`decentering` of one start ask for the same coefficients)."""
        linear = {f"{n}_{k}" for n, f in self.plan.families.items() for k in f.param_shapes()}
        fingerprint = hashlib.sha1()
        for name in sorted(linear):
            fingerprint.update(name.encode())
            fingerprint.update(np.ascontiguousarray(coefficients[name], np.float64).tobytes())
        if self._maps is not None and self._maps[0] == fingerprint.digest():
            return self._maps[1]
        maps = self._block_maps({k: coefficients[k] for k in linear})
        self._maps = (fingerprint.digest(), maps)
        return maps

    def _block_maps(self, coefficients: Mapping[str, Any]) -> dict[BlockType, np.ndarray]:
        blocks, plan = self.blocks, self.plan
        width = max(blocks.sizes.values())

        def build():
            def maps(args, kwargs, coefficients):
                def column(p):
                    unit = {k: jnp.broadcast_to((jnp.arange(s) == p).astype(jnp.float64),
                                                (blocks.counts[k], s))
                            for k, s in blocks.sizes.items()}
                    image = blocks.gather(plan.local_map(blocks.scatter(unit), coefficients))
                    return {k: jnp.pad(v[0], (0, width - v.shape[1])) for k, v in image.items()}

                columns = jax.lax.map(column, jnp.arange(width))
                return {k: columns[k][:s, :s].T for k, s in blocks.sizes.items()}

            return maps

        with jax.enable_x64(True):
            out = self._compiled("block_maps", build)(as_float64(coefficients))
            return {k: np.asarray(v) for k, v in out.items()}

    def aux_point(self, point: Mapping[str, Any], coefficients: Mapping[str, Any],
                  precision: Mapping[BlockType, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Guide-coordinate location of ``point`` (exact, ``O(dim)``) and the mean-field sds
        ``diag(F^T P_S F)^{-1/2}`` per block type (``F = G^{-1}`` on the block)."""
        plan, model = self.plan, self.model
        maps = self.block_maps(coefficients)
        sd = {}
        for kind, local_map in maps.items():
            sampling = np.linalg.inv(local_map)
            diagonal = np.einsum("ik,ij,jk->k", sampling, precision[kind], sampling)
            sd[kind] = np.broadcast_to(diagonal**-0.5, (self.blocks.counts[kind], len(diagonal)))

        def build():
            def locate(args, kwargs, point, coefficients):
                unconstrained = unconstrain_fn(model.fn, args, kwargs, dict(point))
                z = plan.rotate(plan.join({s.name: unconstrained[s.name] for s in plan.sites}))
                return plan.split(plan.z_to_guide(z, coefficients))

            return locate

        with jax.enable_x64(True):
            loc = self._compiled("block_locate", build)(as_float64(point),
                                                        as_float64(coefficients))
            flat_sd = self.blocks.scatter({k: jnp.asarray(v) for k, v in sd.items()})
            return ({k: np.asarray(v) for k, v in loc.items()},
                    {k: np.asarray(v) for k, v in plan.split(flat_sd).items()})

    def decentering(self, point: Mapping[str, Any], coefficients: Mapping[str, Any],
                    sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """As :meth:`reparam.LocalGaussian.decentering`, with the child's prior part
        ``diag(F_cc^T Q_c F_cc)`` from its block of each type."""
        plan = self.plan
        children = [n for n, f in plan.families.items() if f.decenter]
        if not children:
            return {}
        maps = self.block_maps(coefficients)
        share, wbar = {}, self._step_weights(point)
        for kind, local_map in maps.items():
            _, priors = self._type_precision(kind, point, wbar)
            part = np.zeros(len(local_map))
            for member in self.blocks.types[kind]:
                if member.site in children:
                    rows = slice(member.offset, member.offset + member.length)
                    inner = np.linalg.inv(local_map[rows, rows])
                    part[rows] = np.einsum("ik,ij,jk->k", inner, priors[member.site], inner)
            share[kind] = np.broadcast_to(part, (self.blocks.counts[kind], len(part)))
        with jax.enable_x64(True):
            prior_part = plan.split(self.blocks.scatter(
                {k: jnp.asarray(v) for k, v in share.items()}))
        scales = self._prior_scales(point, children)
        out = {}
        for name in children:
            ratio = np.asarray(prior_part[name]) * np.asarray(sd[name]) ** 2
            out[f"{name}_centering"] = np.clip(1.0 - ratio, 0.0, 1.0)
            out[f"{name}_scale_ref"] = scales[name]
        return out

    def _prior_scales(self, point: Mapping[str, Any], children: list[str]) -> dict[str, Any]:
        seeded = handlers.seed(handlers.substitute(self.model.fn, data=dict(point)), rng_seed=0)
        trace = handlers.trace(seeded).get_trace(*self.args, **self.kwargs)
        return {name: np.asarray(prior_scale(trace[name]["fn"])) for name in children}


def _prior_precision(effect: Any, point: Mapping[str, Any], length: int) -> np.ndarray:
    """The prior precision of one element (``1 x 1``) or one row along time (``T x T``)."""
    if isinstance(effect, GrandMean):
        return np.full((1, 1), float(effect.scale) ** -2)
    scale = float(np.asarray(point[effect.scale_site]))
    if isinstance(effect, Shrinkage):
        return np.eye(length) / scale**2
    phi = 1.0 if effect.kind == "random_walk" else float(np.asarray(point[f"phi_{effect.name}"]))
    diagonal = np.full(length, 1.0 + phi**2)
    diagonal[-1] = 1.0
    if effect.kind == "ar1":
        diagonal[0] = 1.0
    off = -phi * np.ones(length - 1)
    return (np.diag(diagonal) + np.diag(off, 1) + np.diag(off, -1)) / scale**2


def _conjugate_gradients(apply, rhs, precondition, tolerance=CG_TOLERANCE,
                         max_iterations=CG_MAX_ITERATIONS):
    """Preconditioned CG for ``A x = rhs`` (``A`` symmetric positive definite)."""
    x = jnp.zeros_like(rhs)
    r = rhs
    z = precondition(r)
    p = z
    rz = r @ z
    bound = (tolerance * jnp.linalg.norm(rhs)) ** 2

    def cond(state):
        _, r, _, _, _, k = state
        return (r @ r > bound) & (k < max_iterations)

    def body(state):
        x, r, z, p, rz, k = state
        ap = apply(p)
        alpha = rz / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        z = precondition(r)
        rz_new = r @ z
        return x, r, z, z + (rz_new / rz) * p, rz_new, k + 1

    return jax.lax.while_loop(cond, body, (x, r, z, p, rz, 0))[0]
