"""Particle weights: normalisation, effective sample size, systematic resampling, summaries.

Pure functions on arrays whose leading axis is the particle axis (``N`` particles); the
sequential logic lives in :mod:`reparam.infer.smc`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import logsumexp


def normalize(log_weights: Array) -> tuple[Array, Array]:
    """``(log W, log sum exp(log w))`` with ``W_i = w_i / sum_j w_j``.

    All weights ``-inf`` give ``log W = -log N`` (uniform) and a normaliser of ``-inf``.
    """
    total = logsumexp(log_weights)
    uniform = jnp.full_like(log_weights, -jnp.log(log_weights.shape[0]))
    return jnp.where(jnp.isfinite(total), log_weights - total, uniform), total


def effective_sample_size(log_weights: Array) -> Array:
    """Kish's ESS ``1 / sum_i W_i^2`` of (possibly unnormalised) log weights."""
    log_w, _ = normalize(log_weights)
    return jnp.exp(-logsumexp(2.0 * log_w))


def systematic_indices(log_weights: Array, uniform: Array) -> Array:
    """Systematic resampling with a given ``U ~ Uniform(0, 1)``.

    Ancestor ``a_k`` (``k = 0..N-1``) is the index ``i`` with ``C_{i-1} <= (U + k) / N < C_i``,
    ``C_i = W_0 + ... + W_i``. The number of offspring of ``i`` is ``floor`` or ``ceil`` of
    ``N W_i`` and its expectation over ``U`` is exactly ``N W_i`` (unbiased, lowest variance of
    the standard schemes).
    """
    num = log_weights.shape[0]
    log_w, _ = normalize(log_weights)
    cumulative = jnp.cumsum(jnp.exp(log_w))
    points = (uniform + jnp.arange(num, dtype=cumulative.dtype)) / num
    indices = jnp.searchsorted(cumulative, points, side="right")
    return jnp.clip(indices, 0, num - 1)


def systematic_resample(rng_key: Array, log_weights: Array) -> Array:
    """Ancestor indices ``(N,)`` by systematic resampling (:func:`systematic_indices`)."""
    uniform = jax.random.uniform(rng_key, dtype=log_weights.dtype)
    return systematic_indices(log_weights, uniform)


def weighted_mean(values: Array, log_weights: Array) -> Array:
    """``sum_i W_i v_i`` over the leading (particle) axis."""
    w = jnp.exp(normalize(log_weights)[0])
    return jnp.tensordot(w, values, axes=1)


def weighted_sd(values: Array, log_weights: Array) -> Array:
    """``sqrt(sum_i W_i (v_i - mean)^2)`` over the leading (particle) axis."""
    w = jnp.exp(normalize(log_weights)[0])
    mean = jnp.tensordot(w, values, axes=1)
    return jnp.sqrt(jnp.tensordot(w, (values - mean) ** 2, axes=1))


def weighted_quantiles(values: Array, log_weights: Array, levels: Sequence[float]) -> Array:
    """Quantiles ``(len(levels), *values.shape[1:])`` of the weighted particle distribution:
    the smallest particle value whose cumulative weight reaches each level (per element)."""
    w = jnp.exp(normalize(log_weights)[0])
    flat = values.reshape(values.shape[0], -1)
    order = jnp.argsort(flat, axis=0)
    cumulative = jnp.cumsum(w[order], axis=0)
    levels = jnp.asarray(levels, cumulative.dtype)

    def one(column_cum: Array, column_sorted: Array) -> Array:
        idx = jnp.searchsorted(column_cum, levels, side="left")
        return column_sorted[jnp.clip(idx, 0, values.shape[0] - 1)]

    sorted_values = jnp.take_along_axis(flat, order, axis=0)
    out = jax.vmap(one, in_axes=(1, 1), out_axes=1)(cumulative, sorted_values)
    return out.reshape((levels.shape[0], *values.shape[1:]))
