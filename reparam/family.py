"""The conditional affine family: how one child site is decorrelated from its parents.

Every site involved in a decorrelation is first rotated along its rotated axes (an orthonormal
map, e.g. Helmert: mean component first, then contrasts); write ``x~`` for rotated values.
A child ``c`` with parents ``p_1..p_k`` is sampled as an auxiliary variable ``u_c`` and
recovered as

    x~_c = u_c + W_c(u_c) - sum_k S_k(x~_{p_k})

* ``W_c`` is strictly lower-triangular along the *sequence* axis (e.g. time), coupling each
  element with lags ``1..band``: ``W_c(u)[.., t] = sum_{1<=l<=band} w[.., t, l] u[.., t - l]``
  (stored densely as ``w[.., t, s]``, ``s < t``, when ``band`` is ``None``).
* With ``Structure.markov`` the within-site coupling is the *Markov* (inverse, bidiagonal) form
  instead, the form the exact conditional of a Gauss-Markov chain takes (the Cholesky factor of
  a tridiagonal precision is bidiagonal):

      u_c = M_c x~_c + sum_k S_k(x~_{p_k}),   (M_c x)[.., t] = x[.., t] - m[.., t] x[.., t-1]

  so ``x~_c`` is recovered by the first-order recurrence
  ``x~[t] = m[t] x~[t-1] + (u - sum_k S_k)[t]`` (an associative scan: ``O(T)`` work,
  ``O(log T)`` depth) with one coefficient per element (``m[.., 0]`` unused). The shifts then act
  in ``u``'s coordinates; a child without the sequence axis has ``M_c = I`` either way.
* With ``Structure.dense_mean`` as well (``decorrelate(..., markov="contrasts")``), the *mean
  slice* of a child -- its elements at component 0 of every rotated axis, one chain along the
  sequence per combination of its other axes (all of a child with no rotated axis) -- keeps a
  dense unit lower-triangular ``M`` in the same inverse form, ``u = L x~ + sum_k S_k``, solved
  by a triangular solve; the contrasts stay bidiagonal. This is the structure of the exact
  conditional of an additive tensor model with complete data (``docs/design.md`` section 8.2):
  in Helmert coordinates a contrast chain is the last chain of its block (bidiagonal factor),
  while the mean chains (``z``, mean ``A``, mean ``B``) marginalise the later ones (dense).
  Cost ``O(T)`` per contrast chain and ``O(T^2)`` per mean chain.
* ``S_k`` is linear in the parent, with one learned coefficient per (child element, parent
  element) pair that the structure allows:
  - axes the two share are aligned element by element;
  - a parent axis the child lacks is reduced to its component 0 when rotated (``sqrt(n)`` times
    the mean) or to its mean otherwise -- this is how non-nested parents enter;
  - a child axis the parent lacks receives the shift only at component 0 when rotated (the
    contrasts are orthogonal to the parent), and at every element otherwise;
  - along the sequence axis the coupling is a band of offsets ``-band..band`` when both have
    it (a dense ``T x T`` block when ``band`` is ``None``), and a full set of weights when only
    the parent has it.

With ``W = 0`` (or ``M = I``) this is the shift ``u = x~ + sum_k S_k(x~_{p_k})`` of
``docs/design.md`` section 2.
Given the parents, ``u_c -> x~_c`` is unit lower triangular, so ``|det| = 1`` and the model's joint
density is unchanged (an exact reparameterization). Sampling direction (``u -> x~``) costs one
batched matmul; the inverse is a unit-triangular solve, needed only to draw from the prior.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.linalg import solve_triangular

from reparam import decenter
from reparam.rotations import get_rotation
from reparam.sites import SiteLayout


@dataclass(frozen=True)
class Structure:
    """Structure shared by all sites of one decorrelation.

    Attributes:
        rotations: ``(axis name, rotation name)`` pairs (see :mod:`reparam.rotations`).
        sequence: name of the axis along which within-site and banded couplings act.
        band: largest lag/offset coupled along ``sequence`` (``None``: all).
        markov: within-site coupling in the Markov (bidiagonal inverse) form, applied in
            ``O(T)``; parent couplings along ``sequence`` are banded with ``band`` (dense
            when ``band`` is ``None``).
        dense_mean: with ``markov``, the mean slice of each child (component 0 of every
            rotated axis) is coupled densely along ``sequence`` (module docstring).
    """

    rotations: tuple[tuple[str, str], ...] = ()
    sequence: str | None = None
    band: int | None = None
    markov: bool = False
    dense_mean: bool = False

    @property
    def rotate(self) -> dict[str, str]:
        """Axis name -> rotation name."""
        return dict(self.rotations)

    def lags(self, length: int) -> int:
        return length - 1 if self.band is None else min(self.band, length - 1)

    def rotate_value(self, value: Array, layout: SiteLayout, inverse: bool = False) -> Array:
        """Applies (or undoes) the rotations along a site's rotated axes.

        ``value`` may carry extra leading axes beyond ``layout.shape``.
        """
        rotate = self.rotate
        for axis, dim in enumerate(layout.dims):
            if dim is not None and dim in rotate:
                rotation = get_rotation(rotate[dim])
                ax = axis - len(layout.shape)
                value = rotation.inverse(value, ax) if inverse else rotation.forward(value, ax)
        return value


@dataclass(frozen=True)
class ParentCoupling:
    """Linear map from one (rotated) parent to the shift of a (rotated) child."""

    parent: SiteLayout
    child: SiteLayout
    structure: Structure

    def __post_init__(self) -> None:
        for dim, n in zip(self.parent.dims, self.parent.shape, strict=True):
            axis = self.child.axis_of(dim) if dim is not None else None
            if axis is not None and self.child.shape[axis] != n:
                raise ValueError(
                    f"Cannot map parent {self.parent.name!r} to child {self.child.name!r}: "
                    f"axis {dim!r} has length {n} in the parent and "
                    f"{self.child.shape[axis]} in the child. Name the axes with `dims=` so "
                    "that only matching axes share a name."
                )

    @property
    def _seq(self) -> str | None:
        return self.structure.sequence

    @property
    def parent_has_seq(self) -> bool:
        return self._seq is not None and self._seq in self.parent.dims

    @property
    def child_has_seq(self) -> bool:
        return self._seq is not None and self._seq in self.child.dims

    def _child_only_rotated(self, dim: str | None) -> bool:
        return (
            dim is not None
            and dim not in self.parent.dims
            and dim in self.structure.rotate
        )

    @property
    def active_shape(self) -> tuple[int, ...]:
        """Child shape restricted to the elements that receive this parent's shift."""
        return tuple(
            1 if self._child_only_rotated(d) else n
            for d, n in zip(self.child.dims, self.child.shape, strict=True)
        )

    @property
    def coefficient_shape(self) -> tuple[int, ...]:
        extra: tuple[int, ...] = ()
        if self.parent_has_seq:
            length = self.parent.shape[self.parent.axis_of(self._seq)]
            if self.child_has_seq:
                dense = self.structure.band is None
                extra = (length,) if dense else (2 * self.structure.lags(length) + 1,)
            else:
                extra = (length,)
        return self.active_shape + extra

    def _aligned_parent(self, parent_rot: Array) -> Array:
        """Reduces and transposes the parent to the child's axis order (+ seq axis last)."""
        x = parent_rot
        dims = list(self.parent.dims)
        for axis in reversed(range(len(dims))):
            dim = dims[axis]
            if dim is None:
                x = jnp.squeeze(x, axis)
                del dims[axis]
            elif dim not in self.child.dims and dim != self._seq:
                x = jnp.take(x, 0, axis) if dim in self.structure.rotate else x.mean(axis)
                del dims[axis]
        order = [dims.index(d) for d in self.child.dims if d is not None and d in dims]
        extra = [dims.index(self._seq)] if self.parent_has_seq and not self.child_has_seq else []
        x = jnp.transpose(x, order + extra)
        # Insert singleton axes for child axes the parent lacks.
        for axis, dim in enumerate(self.child.dims):
            if dim is None or dim not in dims:
                x = jnp.expand_dims(x, axis)
        return x

    def shift(self, parent_rot: Array, coefficient: Array) -> Array:
        """Returns this parent's contribution to the child's auxiliary value (child shape)."""
        p = self._aligned_parent(parent_rot)
        if self.parent_has_seq and self.child_has_seq and self.structure.band is None:
            axis = self.child.axis_of(self._seq)
            p = jnp.expand_dims(jnp.moveaxis(p, axis, -1), -2)  # (.., 1, T_parent)
            coef = jnp.moveaxis(coefficient, axis, -2)  # (.., T_child, T_parent)
            active = jnp.moveaxis(jnp.sum(coef * p, axis=-1), -1, axis)
        elif self.parent_has_seq and self.child_has_seq:
            axis = self.child.axis_of(self._seq)
            lags = (coefficient.shape[-1] - 1) // 2
            p = jnp.moveaxis(p, axis, -1)
            length = p.shape[-1]
            # Offset o couples child step t with parent step t + o - lags.
            source = jnp.arange(length)[:, None] + jnp.arange(-lags, lags + 1)[None, :]
            inside = (source >= 0) & (source < length)
            banded = jnp.where(inside, jnp.take(p, jnp.clip(source, 0, length - 1), axis=-1), 0.0)
            banded = jnp.moveaxis(banded, -2, axis)  # (..child axes.., offsets)
            active = jnp.sum(coefficient * banded, axis=-1)
        elif self.parent_has_seq:
            active = jnp.sum(coefficient * p, axis=-1)
        else:
            active = coefficient * p
        pad = [
            (0, n - a) for n, a in zip(self.child.shape, self.active_shape, strict=True)
        ]
        return jnp.pad(active, pad) if any(hi for _, hi in pad) else active


@dataclass(frozen=True)
class ChildFamily:
    """The conditional affine map of one child site given its parents.

    Params (``numpyro.param`` names are ``f"{child}_{key}"``): ``within`` for the within-site
    lags, ``within_mean`` for the dense mean slice (``dense_mean``) and ``shift_{parent}`` per
    parent.
    """

    child: SiteLayout
    couplings: tuple[ParentCoupling, ...]
    structure: Structure
    within: bool = True
    decenter: bool = False

    @property
    def sequence_axis(self) -> int | None:
        seq = self.structure.sequence
        if not self.within or seq is None:
            return None
        return self.child.axis_of(seq)

    def param_inits(self) -> dict[str, Array]:
        """Initial values of all params: no shift, no coupling, centred."""
        inits = {key: jnp.zeros(shape) for key, shape in self.param_shapes().items()}
        if self.decenter:
            inits["centering"] = jnp.ones(self.child.shape)
            inits["scale_ref"] = jnp.ones(())
            inits["decenter_at"] = jnp.zeros(self.child.shape)
        return inits

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the linear coefficients (shifts and within-site coupling)."""
        shapes = {f"shift_{c.parent.name}": c.coefficient_shape for c in self.couplings}
        axis = self.sequence_axis
        if axis is not None and self.structure.markov:
            length = self.child.shape[axis]
            dense_mean = self.structure.dense_mean
            if length > 1 and (self._mean_axes or not dense_mean):
                shapes["within"] = self.child.shape  # m[.., t] couples t with t - 1
            if length > 1 and dense_mean:
                shapes["within_mean"] = self._mean_shape + (length,)  # [.., t, s], s < t
        elif axis is not None:
            lags = self.structure.lags(self.child.shape[axis])
            if lags > 0:
                # Dense (.., T, T) storage when every lag is coupled, else (.., T, lags).
                width = self.child.shape[axis] if self.structure.band is None else lags
                shapes["within"] = self.child.shape + (width,)
        return shapes

    @property
    def _mean_axes(self) -> tuple[int, ...]:
        """The child's rotated axes: its mean slice is component 0 of each."""
        rotate = self.structure.rotate
        return tuple(a for a, d in enumerate(self.child.dims) if d is not None and d in rotate)

    @property
    def _mean_shape(self) -> tuple[int, ...]:
        """Shape of the mean slice with the sequence axis moved last (rotated axes kept as 1)."""
        axis = self.sequence_axis
        mean_axes = self._mean_axes
        other = tuple(1 if a in mean_axes else n
                      for a, n in enumerate(self.child.shape) if a != axis)
        return other + (self.child.shape[axis],)

    def _mean_index(self) -> tuple:
        """Index of the mean slice (keeping its axes), for arrays with leading batch axes."""
        mean_axes = self._mean_axes
        return (Ellipsis, *(slice(0, 1) if a in mean_axes else slice(None)
                            for a in range(len(self.child.shape))))

    def _mean_chain(self, x: Array) -> Array:
        """The mean slice of ``x``, sequence axis last."""
        return self._sequence_last(x[self._mean_index()])[0]

    def _with_mean_chain(self, x: Array, chain: Array, add: bool = False) -> Array:
        """``x`` with its mean slice set to (or, with ``add``, increased by) ``chain``."""
        value = jnp.moveaxis(chain, -1, self.sequence_axis - len(self.child.shape))
        at = x.at[self._mean_index()]
        return at.add(value) if add else at.set(value)

    def _markov_coefficients(self, params: Mapping[str, Array]) -> Array:
        """``m`` of the bidiagonal coupling (0 on a densely coupled mean slice)."""
        within = params["within"]
        return within.at[self._mean_index()].set(0.0) if "within_mean" in params else within

    def _total_shift(self, parents_rot: Mapping[str, Array], params: Mapping[str, Array]) -> Array:
        total = 0.0
        for coupling in self.couplings:
            total = total + coupling.shift(
                parents_rot[coupling.parent.name], params[f"shift_{coupling.parent.name}"]
            )
        return total

    def _lower_matrix(self, within: Array) -> Array:
        """``I + W`` along the sequence axis, as a (..., T, T) matrix (sequence axis last)."""
        w = jnp.moveaxis(within, self.sequence_axis, -2)  # (..., T, lags) or (..., T, T)
        length, lags = w.shape[-2], w.shape[-1]
        if self.structure.band is None:  # dense storage: entry [t, s] couples s < t
            return jnp.eye(length, dtype=w.dtype) + jnp.tril(w, -1)
        lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
        valid = (lag >= 1) & (lag <= lags)
        rows = jnp.arange(length)[:, None]
        gathered = w[..., rows, jnp.clip(lag - 1, 0, lags - 1)]
        return jnp.eye(length, dtype=w.dtype) + jnp.where(valid, gathered, 0.0)

    def _markov_lag(self, x: Array, within: Array) -> Array:
        """``m[.., t] x[.., t-1]`` along the sequence axis (0 at ``t = 0``)."""
        x_last, axis = self._sequence_last(x)
        m_last, _ = self._sequence_last(jnp.broadcast_to(within, x.shape))
        lagged = jnp.concatenate(
            [jnp.zeros_like(x_last[..., :1]), m_last[..., 1:] * x_last[..., :-1]], axis=-1
        )
        return jnp.moveaxis(lagged, -1, axis)

    def _markov_solve(self, rhs: Array, within: Array) -> Array:
        """Solves ``M x = rhs``: ``x[t] = m[t] x[t-1] + rhs[t]`` by an associative scan."""
        r_last, axis = self._sequence_last(rhs)
        m_last, _ = self._sequence_last(jnp.broadcast_to(within, rhs.shape))
        m_last = m_last.at[..., 0].set(0.0)

        def compose(earlier, later):  # x -> a x + b, applied ``earlier`` first
            a1, b1 = earlier
            a2, b2 = later
            return a1 * a2, a2 * b1 + b2

        _, x = jax.lax.associative_scan(compose, (m_last, r_last), axis=r_last.ndim - 1)
        return jnp.moveaxis(x, -1, axis)

    def _sequence_last(self, x: Array) -> tuple[Array, int]:
        axis = self.sequence_axis - len(self.child.shape)
        return jnp.moveaxis(x, axis, -1), axis

    def from_aux(
        self,
        aux: Array,
        parents_rot: Mapping[str, Array],
        params: Mapping[str, Array],
        scale: Array | None = None,
    ) -> Array:
        """``x~ = u + W(u) - sum_k S_k(p~_k)`` (Markov form: ``x~ = M^{-1}(u - sum_k S_k)``,
        with ``M``'s mean slice dense under ``dense_mean``);
        ``aux`` may carry leading batch axes.

        With ``scale`` (the child's prior scale) and decentering params, ``aux`` is the
        decentred ``v`` of :mod:`reparam.decenter` and ``u = r + factor * (v - r)`` first.
        """
        if scale is not None and "centering" in params:
            aux = decenter.decentred_to_aux(params, scale, aux)
        if self.structure.markov:
            rhs = aux - self._total_shift(parents_rot, params)
            x = self._markov_solve(rhs, self._markov_coefficients(params)) \
                if "within" in params else rhs
            if "within_mean" not in params:
                return x
            chain = self._mean_chain(rhs)
            lower = jnp.eye(chain.shape[-1], dtype=chain.dtype) + jnp.tril(
                params["within_mean"], -1)
            lower = jnp.broadcast_to(lower, chain.shape[:-1] + lower.shape[-2:])
            solved = solve_triangular(lower, chain[..., None], lower=True, unit_diagonal=True)
            return self._with_mean_chain(x, solved[..., 0])
        x = aux
        if "within" in params:
            u, axis = self._sequence_last(aux)
            lower = self._lower_matrix(params["within"])
            x = jnp.moveaxis(jnp.einsum("...ts,...s->...t", lower, u), -1, axis)
        return x - self._total_shift(parents_rot, params)

    def to_aux(
        self,
        child_rot: Array,
        parents_rot: Mapping[str, Array],
        params: Mapping[str, Array],
        scale: Array | None = None,
    ) -> Array:
        """Inverse of :meth:`from_aux`: ``u = (I + W)^{-1} (x~ + sum_k S_k(p~_k))`` (Markov
        form: ``u = M x~ + sum_k S_k(p~_k)``)."""
        divide = scale is not None and "centering" in params
        if self.structure.markov:
            u = child_rot + self._total_shift(parents_rot, params)
            if "within" in params:
                u = u - self._markov_lag(child_rot, self._markov_coefficients(params))
            if "within_mean" in params:
                strict = jnp.tril(params["within_mean"], -1)
                chain = jnp.einsum("...ts,...s->...t", strict, self._mean_chain(child_rot))
                u = self._with_mean_chain(u, chain, add=True)
            return decenter.aux_to_decentred(params, scale, u) if divide else u
        rhs = child_rot + self._total_shift(parents_rot, params)
        if "within" not in params:
            return decenter.aux_to_decentred(params, scale, rhs) if divide else rhs
        r, axis = self._sequence_last(rhs)
        lower = self._lower_matrix(params["within"])
        lower = jnp.broadcast_to(lower, r.shape[:-1] + lower.shape[-2:])
        u = solve_triangular(lower, r[..., None], lower=True, unit_diagonal=True)[..., 0]
        u = jnp.moveaxis(u, -1, axis)
        return decenter.aux_to_decentred(params, scale, u) if divide else u


# Jitted entry points: families are hashable, so eager calls (model initialisation, prior
# sampling) compile one program per family instead of one per primitive.
@partial(jax.jit, static_argnums=(0, 1))
def rotate_site(structure: Structure, layout: SiteLayout, value: Array) -> Array:
    """Rotated coordinates of a site's (unconstrained) value."""
    return structure.rotate_value(value, layout)


@partial(jax.jit, static_argnums=0)
def aux_to_model(
    family: ChildFamily,
    aux: Array,
    parents_rot: Mapping[str, Array],
    params: Mapping[str, Array],
    scale: Array | None = None,
) -> Array:
    """Auxiliary value -> child value in (unconstrained) model coordinates."""
    rotated = family.from_aux(aux, parents_rot, params, scale)
    return family.structure.rotate_value(rotated, family.child, inverse=True)


@partial(jax.jit, static_argnums=0)
def model_to_aux(
    family: ChildFamily,
    value: Array,
    parents_rot: Mapping[str, Array],
    params: Mapping[str, Array],
    scale: Array | None = None,
) -> Array:
    """Child value in (unconstrained) model coordinates -> auxiliary value."""
    rotated = family.structure.rotate_value(value, family.child)
    return family.to_aux(rotated, parents_rot, params, scale)
