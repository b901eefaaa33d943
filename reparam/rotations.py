"""Fixed orthonormal rotations along one axis of an array.

A rotation is an orthonormal linear map ``x -> H x`` applied along one axis. Its Jacobian
determinant is ``±1``, so rotating a site's value never changes a log density. The Helmert
basis splits a vector of length ``n`` into its (scaled) mean and ``n - 1`` orthonormal
contrasts:

    (H x)_0 = sum_m x_m / sqrt(n)
    (H x)_k = (sum_{m<k} x_m - k x_k) / sqrt(k (k + 1))      for k = 1 .. n-1

so component 0 of a Helmert-rotated effect is ``sqrt(n)`` times its mean along that axis, and
the remaining components are orthogonal to every constant direction. Short axes use a dense
matrix product (fastest on CPU for small ``n``); long axes use ``O(n)`` cumulative sums.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import Array


class Rotation(Protocol):
    """An orthonormal map applied along one axis."""

    def forward(self, x: Array, axis: int) -> Array:
        """Returns ``H x`` along ``axis``."""

    def inverse(self, x: Array, axis: int) -> Array:
        """Returns ``H^T x`` along ``axis``."""


DENSE_BELOW = 128


@lru_cache(maxsize=64)
def helmert_matrix(n: int) -> np.ndarray:
    """The ``n x n`` orthonormal Helmert matrix (row 0 constant, rows k >= 1 contrasts):
    ``scipy.linalg.helmert(n, full=True)``, cached."""
    return scipy.linalg.helmert(n, full=True)


def _apply_matrix(matrix: np.ndarray, x: Array, axis: int) -> Array:
    moved = jnp.moveaxis(x, axis, -1)
    return jnp.moveaxis(moved @ jnp.asarray(matrix.T, x.dtype), -1, axis)


class Helmert:
    """Orthonormal Helmert rotation (mean component first, then contrasts)."""

    def forward(self, x: Array, axis: int) -> Array:
        if x.shape[axis] < DENSE_BELOW:
            return _apply_matrix(helmert_matrix(x.shape[axis]), x, axis)
        x = jnp.moveaxis(x, axis, -1)
        n = x.shape[-1]
        k = jnp.arange(1, n, dtype=x.dtype)
        partial_sums = jnp.cumsum(x, axis=-1)[..., :-1]  # sum_{m<k} x_m for k = 1..n-1
        contrasts = (partial_sums - k * x[..., 1:]) / jnp.sqrt(k * (k + 1))
        mean_part = partial_sums[..., -1:] + x[..., -1:] if n > 1 else x
        out = jnp.concatenate([mean_part / jnp.sqrt(n), contrasts], axis=-1)
        return jnp.moveaxis(out, -1, axis)

    def inverse(self, x: Array, axis: int) -> Array:
        if x.shape[axis] < DENSE_BELOW:
            return _apply_matrix(helmert_matrix(x.shape[axis]).T, x, axis)
        x = jnp.moveaxis(x, axis, -1)
        n = x.shape[-1]
        if n == 1:
            return jnp.moveaxis(x, -1, axis)
        k = jnp.arange(1, n, dtype=x.dtype)
        weighted = x[..., 1:] / jnp.sqrt(k * (k + 1))  # coefficient of contrast k
        # x_m = x_0/sqrt(n) + sum_{k>m} w_k - m * w_m   (w_0 := 0)
        tail = jnp.cumsum(weighted[..., ::-1], axis=-1)[..., ::-1]  # sum_{k>=j} w_k, j = 1..n-1
        later = jnp.concatenate([tail, jnp.zeros_like(tail[..., :1])], axis=-1)  # sum_{k>m} w_k
        own = jnp.concatenate([jnp.zeros_like(weighted[..., :1]), k * weighted], axis=-1)
        out = x[..., :1] / jnp.sqrt(n) + later - own
        return jnp.moveaxis(out, -1, axis)


ROTATIONS: dict[str, Rotation] = {"helmert": Helmert()}


def get_rotation(name: str) -> Rotation:
    """Looks up a rotation by name.

    Raises:
        ValueError: if ``name`` is not a known rotation.
    """
    try:
        return ROTATIONS[name]
    except KeyError:
        raise ValueError(
            f"Unknown rotation {name!r}; choose one of {sorted(ROTATIONS)}."
        ) from None
