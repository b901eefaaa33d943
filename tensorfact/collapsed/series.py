"""Series/time layout of a tensor model for the structured (Kalman-shaped) computation.

The data ``y`` with dims ``(i, j, t)`` (any order; ``t`` the time dim) is seen as ``S = I * J``
series observed at ``T`` steps, stored as arrays of shape ``(T, S)`` with series index
``s = i * J + j`` (``i, j`` the non-time dims in data order). Every location effect is either

* *static* (its dims exclude time: ``mu``, ``a[i]``, ``b[j]``, ``C[i,j]``): the static vector
  ``x_s`` (length ``ns``) enters series ``s`` through the 0/1 map ``Gamma`` (``S x ns``),
  ``offset_s = (Gamma x_s)_s``;
* *dynamic* (its dims include time: ``z[t]``, ``A[i,t]``, ``B[j,t]``, iid effects over time,
  the slope of a local linear trend): at each step its values form part of the state ``x_t``
  (length ``p``), which enters series ``s`` through the 0/1 map ``H`` (``S x p``; slopes have
  zero rows).

So ``y[t, s] = (Gamma x_s)_s + (H x_t)_s + eps[t, s]``. This module only holds the maps and the
bookkeeping between site arrays and the ``(x_s, x_t)`` vectors (numpy, no JAX state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import Array

from tensorfact.model.tensor import TensorModel
from tensorfact.spec import Effect, Temporal


class SeriesData(NamedTuple):
    """Observed data in series layout (a pytree; pass it as a traced argument under ``jit``).

    Attributes:
        y: ``(T, S)`` values, 0 where missing.
        mask: ``(T, S)`` 1.0 where observed, 0.0 where missing.
    """

    y: Array | np.ndarray
    mask: Array | np.ndarray


@dataclass(frozen=True)
class StaticBlock:
    """A static effect's slice ``x_s[offset : offset + size]`` (site shape ``shape``)."""

    effect: Effect
    offset: int
    size: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DynamicBlock:
    """A dynamic effect's slice of the state: ``x_t[offset + row * width + component]``.

    ``width`` is 1, or 2 for a local linear trend (component 0 the level, 1 the slope).
    ``row_dims`` are the effect's non-time dims (site order); ``site_dims`` its site dims.
    """

    effect: Effect
    offset: int
    rows: int
    width: int
    row_dims: tuple[str, ...]
    row_shape: tuple[int, ...]
    site_dims: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.rows * self.width


class SeriesLayout:
    """Static/dynamic split, maps ``Gamma`` and ``H``, and conversions for a tensor model.

    Args:
        model: the tensor model (any specification; which ones the structured prior supports
            is decided in :mod:`tensorfact.collapsed.precision`).
    """

    def __init__(self, model: TensorModel) -> None:
        spec = model.spec
        self.model = model
        self.time = spec.time
        self.series_dims: tuple[str, str] = spec.other_dims
        self.series_shape = model.shape_of(self.series_dims)
        self.num_series = int(np.prod(self.series_shape))
        self.num_steps = model.sizes[self.time]
        coords = dict(zip(self.series_dims, np.indices(self.series_shape).reshape(2, -1),
                          strict=True))
        statics: list[StaticBlock] = []
        dynamics: list[DynamicBlock] = []
        static_cols: list[np.ndarray] = []
        dynamic_cols: list[np.ndarray] = []
        ns = p = 0
        for effect in spec.effects:
            dims = spec.effect_dims(effect)
            if self.time not in dims:
                shape = model.shape_of(dims)
                size = int(np.prod(shape))
                statics.append(StaticBlock(effect, ns, size, shape))
                static_cols.append(_one_hot(coords, dims, shape, self.num_series))
                ns += size
                continue
            row_dims = tuple(d for d in dims if d != self.time)
            row_shape = model.shape_of(row_dims)
            rows = int(np.prod(row_shape))
            width = 2 if isinstance(effect, Temporal) and effect.kind == "local_linear_trend" else 1
            dynamics.append(DynamicBlock(effect, p, rows, width, row_dims, row_shape, dims))
            level = _one_hot(coords, row_dims, row_shape, self.num_series)  # (S, rows)
            cols = np.zeros((self.num_series, rows, width))
            cols[:, :, 0] = level
            dynamic_cols.append(cols.reshape(self.num_series, rows * width))
            p += rows * width
        self.statics = tuple(statics)
        self.dynamics = tuple(dynamics)
        self.static_map = (
            np.hstack(static_cols) if static_cols else np.zeros((self.num_series, 0))
        )
        self.dynamic_map = (
            np.hstack(dynamic_cols) if dynamic_cols else np.zeros((self.num_series, 0))
        )

    @property
    def num_static(self) -> int:
        """``ns``, the length of the static vector."""
        return self.static_map.shape[1]

    @property
    def state_size(self) -> int:
        """``p``, the length of the per-step state."""
        return self.dynamic_map.shape[1]

    # -- data --------------------------------------------------------------------------------
    def series_data(self, y: np.ndarray, mask: np.ndarray) -> SeriesData:
        """Data array (spec dim order, NaN allowed where ``mask`` is false) -> series layout."""
        spec = self.model.spec
        mask = np.asarray(mask, bool)
        values = np.where(mask, np.asarray(y, np.float64), 0.0)
        if not np.all(np.isfinite(values)):
            raise ValueError("y holds non-finite values in cells that the mask marks observed.")
        order = [spec.dims.index(d) for d in (self.time, *self.series_dims)]
        shape = (self.num_steps, self.num_series)
        return SeriesData(
            y=np.transpose(values, order).reshape(shape),
            mask=np.transpose(mask, order).reshape(shape).astype(np.float64),
        )

    def series_values(self, values: Array) -> Array:
        """Per-series array with the series dims in data order, shape ``(I, J)`` -> ``(S,)``."""
        return jnp.reshape(jnp.broadcast_to(values, self.series_shape), (self.num_series,))

    # -- sites <-> vectors -------------------------------------------------------------------
    def to_sites(self, static: Array, dynamic: Array) -> dict[str, Array]:
        """``x_s`` (``ns``) and ``x_t`` stacked (``T, p``) -> location site arrays.

        Leading batch axes are allowed on both (``(..., ns)`` and ``(..., T, p)``).
        """
        out: dict[str, Array] = {}
        batch = static.shape[:-1]
        for block in self.statics:
            values = static[..., block.offset : block.offset + block.size]
            out[block.effect.name] = jnp.reshape(values, batch + block.shape)
        for block in self.dynamics:
            values = dynamic[..., block.offset : block.offset + block.size]
            values = jnp.reshape(values, batch + (self.num_steps, block.rows, block.width))
            names = [block.effect.name]
            if block.width == 2:
                names.append(f"{block.effect.name}_slope")
            for component, name in enumerate(names):
                out[name] = self.time_rows_to_site(values[..., component], block)
        return {site.name: out[site.name] for site in self.model.location_sites}

    def time_rows_to_site(self, values: Array, block: DynamicBlock) -> Array:
        """``(..., T, rows)`` -> ``(..., *site shape)`` for a dynamic block."""
        batch = values.shape[:-2]
        values = jnp.reshape(values, batch + (self.num_steps, *block.row_shape))
        source = (self.time, *block.row_dims)
        perm = [source.index(d) for d in block.site_dims]
        lead = list(range(len(batch)))
        return jnp.transpose(values, lead + [len(batch) + k for k in perm])

    def site_to_time_rows(self, values: Array, block: DynamicBlock) -> Array:
        """Site-shaped array (no batch axes) -> ``(T, rows)`` for a dynamic block."""
        target = (self.time, *block.row_dims)
        values = jnp.transpose(values, [block.site_dims.index(d) for d in target])
        return jnp.reshape(values, (self.num_steps, block.rows))


def _one_hot(
    coords: dict[str, np.ndarray], dims: tuple[str, ...], shape: tuple[int, ...], num: int
) -> np.ndarray:
    """0/1 matrix ``(num series, prod(shape))`` mapping each series to its element."""
    index = (
        np.ravel_multi_index([coords[d] for d in dims], shape) if dims else np.zeros(num, int)
    )
    out = np.zeros((num, int(np.prod(shape))))
    out[np.arange(num), index] = 1.0
    return out
