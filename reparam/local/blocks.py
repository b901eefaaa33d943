"""The Helmert block structure of a decorrelated additive model, and the family's projection
onto it at a cost linear in the involved dims.

With every rotated axis Helmert-rotated (:mod:`reparam.rotations`), an element of a site has a
component index ``c_d`` along each rotated axis ``d`` it has. For an additive model observed on
every cell with one noise level, two elements interact (in the likelihood and in iid-over-rows
priors) only if they agree on the component of every rotated axis both have and sit at
component 0 of every rotated axis only one has. So the precision of the rotated values splits
into independent *blocks*, one per full component pattern: the block of *type* ``S`` (the
rotated axes with a nonzero component) and index ``b`` (those components) holds, of every site
whose rotated axes contain ``S``, the one element (or the one chain along the sequence axis) at
components ``b`` on ``S`` and 0 elsewhere (``docs/design.md`` section 8.2). All blocks of a type
have the same structure; there are ``prod_{d in S} (n_d - 1)`` of them.

:class:`HelmertBlocks` indexes this partition (``gather``/``scatter`` between the flat rotated
vector ``z`` of :class:`~reparam.local.plan.LinearPlan` and per-type arrays ``(blocks, size)``)
and projects a block-diagonal target local map -- one dense ``size x size`` matrix per type,
shared by its blocks -- onto the family's coefficients (:meth:`HelmertBlocks.project`), the
same least squares as :func:`reparam.local.analysis.projector` without the ``dim x dim``
matrix: the family's local map is itself block-diagonal in this partition, so one probe per
position within a block (one column of every block at once) recovers every entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from reparam.local.plan import LinearPlan

BlockType = tuple[str, ...]  # the rotated axes with a nonzero component, sorted


@dataclass(frozen=True)
class Member:
    """One site's part of a block type: a scalar, or a chain along the sequence axis."""

    site: str
    offset: int
    length: int


@dataclass
class HelmertBlocks:
    """The block partition of a plan's rotated coordinates (module docstring).

    Attributes:
        plan: the linear plan.
        types: block type -> its members in sampling order.
        counts: block type -> number of blocks.
        index: block type -> ``(blocks, size)`` flat positions in ``z`` (a permutation of
            ``0..dim-1`` over all types).

    Raises:
        ValueError: if a site has an axis that is neither Helmert-rotated nor the sequence.
    """

    plan: LinearPlan
    types: dict[BlockType, tuple[Member, ...]] = field(init=False)
    counts: dict[BlockType, int] = field(init=False)
    index: dict[BlockType, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        structure = self.plan.structure
        rotate, seq = structure.rotate, structure.sequence
        lengths: dict[str, int] = {}
        for site in self.plan.sites:
            for dim, n in zip(site.dims, site.shape, strict=True):
                if dim is None:
                    continue
                if dim == seq:
                    continue
                if rotate.get(dim) != "helmert":
                    raise ValueError(
                        f"Site {site.name!r} has axis {dim!r}, which is neither Helmert-rotated "
                        "nor the sequence axis: the model has no Helmert block structure."
                    )
                lengths[dim] = n
        rotated = {s.name: sorted(d for d in s.dims if d is not None and d != seq)
                   for s in self.plan.sites}
        all_types = sorted({t for dims in rotated.values()
                            for k in range(len(dims) + 1) for t in combinations(dims, k)},
                           key=lambda t: (len(t), t))
        starts = np.cumsum([0, *self.plan.sizes])
        self.types, self.counts, self.index = {}, {}, {}
        for kind in all_types:
            members, columns, offset = [], [], 0
            count = int(np.prod([lengths[d] - 1 for d in kind]))
            for position, site in enumerate(self.plan.sites):
                if not set(kind) <= set(rotated[site.name]):
                    continue
                flat = _member_positions(site, kind, seq) + starts[position]
                members.append(Member(site.name, offset, flat.shape[1]))
                columns.append(flat.reshape(count, -1))
                offset += flat.shape[1]
            if count > 0 and members:
                self.types[kind], self.counts[kind] = tuple(members), count
                self.index[kind] = np.concatenate(columns, axis=1)

    @property
    def sizes(self) -> dict[BlockType, int]:
        """Block type -> elements per block."""
        return {kind: index.shape[1] for kind, index in self.index.items()}

    def gather(self, flat: Array) -> dict[BlockType, Array]:
        """Flat ``z`` (trailing axis) -> block type -> ``(..., blocks, size)``."""
        return {kind: flat[..., index] for kind, index in self.index.items()}

    def scatter(self, blocks: Mapping[BlockType, Array]) -> Array:
        """Inverse of :meth:`gather` (every type given)."""
        first = next(iter(blocks.values()))
        out = jnp.zeros(first.shape[:-2] + (self.plan.dim,), first.dtype)
        for kind, index in self.index.items():
            out = out.at[..., index].set(blocks[kind])
        return out

    def project(self, targets: Mapping[BlockType, Array]) -> dict[str, Array]:
        """The family's coefficients closest (least squares, as
        :func:`reparam.local.analysis.projector`) to the block-diagonal target local map whose
        blocks of type ``S`` all equal ``targets[S]`` (``size x size``, the exact ``G`` of
        :func:`reparam.local.analysis.exact_local_target` restricted to one block).

        Cost: ``max size`` applications of the family's local map (``O(dim)`` each), no
        ``dim x dim`` array. Call under ``jax.enable_x64`` for float64 targets.
        """
        plan = self.plan
        width = max(self.sizes.values())
        dtype = next(iter(targets.values())).dtype
        padded = {kind: jnp.pad(jnp.asarray(targets[kind], dtype) - jnp.eye(size, dtype=dtype),
                                ((0, width - size), (0, width - size)))
                  for kind, size in self.sizes.items()}
        zero = plan.zero_coefficients(dtype)
        ones = jax.tree.map(jnp.ones_like, zero)

        def probe(p):
            """Column ``p`` of every block: the unit probe and the target's residual column."""
            unit = {k: jnp.broadcast_to((jnp.arange(s) == p).astype(dtype), (self.counts[k], s))
                    for k, s in self.sizes.items()}
            residual = {k: jnp.broadcast_to(padded[k][:s, p], (self.counts[k], s))
                        for k, s in self.sizes.items()}
            return self.scatter(unit), self.scatter(residual)

        def accumulate(carry, p):
            numerator, denominator = carry
            v, r = probe(p)
            _, transpose = jax.vjp(lambda c: plan.local_map(v, c), zero)
            (num,) = transpose(r)
            (den,) = transpose(plan.local_map(v, ones) - v)
            add = lambda a, b: a + b  # noqa: E731
            return (jax.tree.map(add, numerator, num), jax.tree.map(add, denominator, den)), None

        (numerator, denominator), _ = jax.lax.scan(accumulate, (zero, zero), jnp.arange(width))
        return jax.tree.map(
            lambda n, d: jnp.where(d > 0, n / jnp.where(d > 0, d, 1.0), 0.0),
            numerator, denominator,
        )


def _member_positions(site, kind: BlockType, seq: str | None) -> np.ndarray:
    """Flat positions (within the site) of the site's elements in blocks of type ``kind``:
    ``(blocks, length)``, blocks ordered by their components on ``kind`` (sorted axes)."""
    ranges, order = [], []
    for axis, (dim, n) in enumerate(zip(site.dims, site.shape, strict=True)):
        if dim is not None and dim in kind:
            ranges.append(np.arange(1, n))
        elif dim is not None and dim == seq:
            ranges.append(np.arange(n))
        else:
            ranges.append(np.arange(1))  # component 0 (or a size-1 axis)
        order.append(axis)
    grid = np.meshgrid(*ranges, indexing="ij")
    flat = np.ravel_multi_index(tuple(grid), site.shape) if site.shape else np.zeros((), int)
    block_axes = [site.dims.index(d) for d in kind]
    seq_axes = [site.dims.index(seq)] if seq is not None and seq in site.dims else []
    rest = [a for a in order if a not in block_axes and a not in seq_axes]
    flat = np.transpose(flat, block_axes + rest + seq_axes) if site.shape else flat
    count = int(np.prod([site.shape[a] - 1 for a in block_axes]))
    return np.asarray(flat).reshape(count, -1)
