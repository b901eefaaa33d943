"""Structured prior precision of the location effects given the hyperparameters.

In the layout of :mod:`tensorfact.collapsed.series` the prior of the location effects is

    x_s ~ N(m_s, diag(q_s)^{-1}),          (independent of the dynamic part)
    p(x_0..x_{T-1}) ∝ exp(-1/2 sum_t x_t^T D_t x_t - sum_{t>=1} x_t^T O_t x_{t-1}),

i.e. the dynamic precision ``Q_d`` is block tridiagonal with diagonal blocks ``D_t`` and
sub-diagonal blocks ``O_t`` (block ``(t, t-1)``), each block-diagonal over effects and rows:

* random walk (``x_0 ~ N(0, s)``, increments ``N(0, s)``): ``D_t = (2 - [t = T-1]) / s^2``,
  ``O_t = -1 / s^2``, ``log det = -2 T log s`` per row;
* AR(1): ``D_t = (1 + phi^2 [0 < t < T-1]) / s^2``, ``O_t = -phi / s^2``,
  ``log det = -2 T log s + log(1 - phi^2)`` per row;
* local linear trend (state ``(level x_t, slope d_t)``, ``x_t - x_{t-1} - d_{t-1} ~ N(0, s)``,
  ``d`` a random walk of scale ``s_d``): ``D_t = [[1 + [t<T-1], [t<T-1]], [[t<T-1],
  [t<T-1]]] / s^2 + diag(0, 2 - [t=T-1]) / s_d^2``, ``O_t = [[-1, -1], [0, 0]] / s^2 +
  diag(0, -1) / s_d^2``, ``log det = -2 T (log s + log s_d)`` per row;
* iid over time (a ``Shrinkage`` whose dims include time): ``D_t = 1 / sd^2``, ``O_t = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax import Array

from tensorfact.collapsed.series import DynamicBlock, SeriesLayout
from tensorfact.spec import GrandMean, Shrinkage, Temporal


class StructuredPrior(NamedTuple):
    """Prior of the location effects in the series layout.

    Attributes:
        static_precision: ``q_s``, shape ``(ns,)``.
        static_mean: ``m_s``, shape ``(ns,)`` (nonzero only for the grand mean).
        diag: ``D_t``, shape ``(T, p, p)``.
        sub: ``O_t``, shape ``(T, p, p)``; ``sub[0]`` is zero.
        logdet: ``log det Q`` of the full prior precision.
    """

    static_precision: Array
    static_mean: Array
    diag: Array
    sub: Array
    logdet: Array


class NoiseTerms(NamedTuple):
    """Per-series noise: precision ``1 / sigma_s^2`` and ``log sigma_s^2``, shape ``(S,)``."""

    precision: Array
    log_variance: Array


def noise_terms(layout: SeriesLayout, hyper: Mapping[str, Any]) -> NoiseTerms:
    """Noise precision per series, from ``sigma`` or (per-series noise) ``sigma_series``."""
    if layout.model.spec.noise.per_series:
        sigma = layout.series_values(jnp.asarray(hyper["sigma_series"]))
    else:
        sigma = layout.series_values(jnp.asarray(hyper["sigma"]))
    return NoiseTerms(precision=sigma**-2, log_variance=2 * jnp.log(sigma))


def structured_prior(layout: SeriesLayout, hyper: Mapping[str, Any]) -> StructuredPrior:
    """The prior blocks ``(q_s, m_s, D_t, O_t)`` and ``log det Q`` given hyperparameters.

    Raises:
        NotImplementedError: for an effect kind without a structured prior.
    """
    p, num_steps = layout.state_size, layout.num_steps
    # static blocks are contiguous and in layout order: concatenate them
    precisions, means = [jnp.zeros(0)], [jnp.zeros(0)]
    logdet = jnp.zeros(())
    for block in layout.statics:
        effect = block.effect
        if isinstance(effect, GrandMean):
            precisions.append(jnp.full(block.size, effect.scale**-2))
            means.append(jnp.full(block.size, float(effect.loc)))
            logdet = logdet - 2 * jnp.log(effect.scale)
            continue
        sd = jnp.ravel(_shrinkage_sd(effect, block.shape, hyper))
        precisions.append(sd**-2)
        means.append(jnp.zeros(block.size))
        logdet = logdet - 2 * jnp.sum(jnp.log(sd))
    # dynamic blocks: block diagonal over effects (contiguous, in order) and rows; assembled
    # with broadcasting and padding (no scatter: cheaper to compile and to differentiate)
    diags, subs = [], []
    for block in layout.dynamics:
        d_block, o_block, block_logdet = _dynamic_blocks(layout, block, hyper)
        o_block = jnp.concatenate([jnp.zeros_like(o_block[:1]), o_block])  # sub[0] = 0
        diags.append(_block_diagonal(d_block, block, p))
        subs.append(_block_diagonal(o_block, block, p))
        logdet = logdet + block_logdet
    empty = jnp.zeros((num_steps, 0, p))
    diag = jnp.concatenate([empty, *diags], axis=1)
    sub = jnp.concatenate([empty, *subs], axis=1)
    return StructuredPrior(jnp.concatenate(precisions), jnp.concatenate(means), diag, sub, logdet)


def _block_diagonal(values: Array, block: DynamicBlock, p: int) -> Array:
    """``(T, rows, w, w)`` per-row blocks -> this block's rows of the ``(T, p, p)`` matrix:
    ``(T, rows * w, p)``, block diagonal in the columns ``offset : offset + rows * w``."""
    num_steps, rows, width = values.shape[0], block.rows, block.width
    eye = jnp.eye(rows, dtype=values.dtype)[None, :, None, :, None]
    dense = (values[:, :, :, None, :] * eye).reshape(num_steps, rows * width, rows * width)
    after = p - block.offset - rows * width
    return jnp.pad(dense, ((0, 0), (0, 0), (block.offset, after)))


def _shrinkage_sd(effect: Shrinkage, shape: tuple[int, ...], hyper: Mapping[str, Any]) -> Array:
    sd = jnp.broadcast_to(jnp.asarray(hyper[effect.scale_site]), shape)
    if effect.prior == "horseshoe":
        sd = sd * jnp.asarray(hyper[f"lambda_{effect.name}"])
    return sd


def _dynamic_blocks(
    layout: SeriesLayout, block: DynamicBlock, hyper: Mapping[str, Any]
) -> tuple[Array, Array, Array]:
    """``D_t`` as ``(T, rows, w, w)``, ``O_t`` (``t >= 1``) as ``(T-1, rows, w, w)``, log det."""
    effect, num_steps, rows = block.effect, layout.num_steps, block.rows
    last = (jnp.arange(num_steps) == num_steps - 1).astype(float)
    first = (jnp.arange(num_steps) == 0).astype(float)
    ones = jnp.ones((num_steps, rows, 1, 1))
    if isinstance(effect, Shrinkage):
        shape = layout.model.shape_of(block.site_dims)
        sd = layout.site_to_time_rows(_shrinkage_sd(effect, shape, hyper), block)
        d_block = (sd**-2)[:, :, None, None]
        return d_block, jnp.zeros((num_steps - 1, rows, 1, 1)), -2 * jnp.sum(jnp.log(sd))
    if not isinstance(effect, Temporal):  # pragma: no cover - the layout only makes these
        raise NotImplementedError(f"no structured prior for {type(effect).__name__}")
    scale = jnp.asarray(hyper[effect.scale_site])
    q = scale**-2
    logdet = -2 * rows * num_steps * jnp.log(scale)
    if effect.kind == "random_walk":
        d_block = ((2 - last) * q)[:, None, None, None] * ones
        return d_block, -q * ones[1:], logdet
    if effect.kind == "ar1":
        phi = jnp.asarray(hyper[f"phi_{effect.name}"])
        inner = 1 - last - first
        d_block = ((1 + phi**2 * inner) * q)[:, None, None, None] * ones
        return d_block, -phi * q * ones[1:], logdet + rows * jnp.log1p(-(phi**2))
    if effect.kind == "local_linear_trend":
        slope_scale = jnp.asarray(hyper[f"{effect.scale_site}_slope"])
        q_slope = slope_scale**-2
        logdet = logdet - 2 * rows * num_steps * jnp.log(slope_scale)
        more = 1 - last  # an increment follows step t
        d_level = jnp.stack(
            [jnp.stack([(1 + more) * q, more * q], -1),
             jnp.stack([more * q, more * q + (2 - last) * q_slope], -1)],
            -2,
        )  # (T, 2, 2)
        o_level = jnp.asarray([[-1.0, -1.0], [0.0, 0.0]]) * q + jnp.asarray(
            [[0.0, 0.0], [0.0, -1.0]]
        ) * q_slope
        d_block = d_level[:, None] * jnp.ones((num_steps, rows, 2, 2))
        o_block = o_level * jnp.ones((num_steps - 1, rows, 2, 2))
        return d_block, o_block, logdet
    raise NotImplementedError(f"no structured prior for temporal kind {effect.kind!r}")
