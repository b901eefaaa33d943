"""Collapsed Gaussian for complete data by Kronecker (Helmert) diagonalisation.

When every cell is observed, the noise is one shared ``sigma`` and every effect's elements are
iid across its non-time dims (no horseshoe), the marginal covariance of the data (series dims
``i, j``, time ``t``) is a sum of Kronecker products

    Cov(y) = sum_e  M_i^e (x) M_j^e (x) K_e  +  sigma^2 I,

with ``M^e = I`` along a dim the effect has and ``M^e = 1 1^T`` along one it lacks, and ``K_e``
the ``T x T`` prior covariance of one row of the effect along time (``s^2 1 1^T`` for a static
effect, ``s^2 I`` for an iid-over-time one, the random-walk / AR(1) / local-linear-trend
covariance for a temporal one). ``I`` and ``1 1^T`` share the eigenvectors "constant" (``1 /
sqrt(n)``) and "contrasts" (a Helmert basis), so along ``i, j`` the covariance splits into four
classes ``k = (const|contrast) x (const|contrast)``, each a copy of one ``T x T`` matrix

    Sigma_k = sum_e lambda_{e,k} K_e + sigma^2 I,   lambda = prod over dims of
              (1 if the effect has the dim, else n for const and 0 for contrast),

repeated ``m_k = 1, J-1, I-1, (I-1)(J-1)`` times. Hence, with ``S_k`` the data's scatter matrix
in class ``k`` (computed once), the collapsed likelihood costs four ``T x T`` Cholesky factors
per evaluation, independent of ``I`` and ``J``:

    log p(y | h) = -1/2 sum_k [ m_k (log det Sigma_k + T log 2 pi) + tr(Sigma_k^{-1} S_k) ].

Exact conditional draws use Matheron's rule: draw ``(theta', y')`` from the prior, then
``theta = theta' + Cov(theta, y) Cov(y)^{-1} (y - y')``, with ``Cov(y)^{-1}`` applied class by
class. The cost per evaluation is ``O(T^3)`` (dense in ``T``); for long series or missing cells
use the Kalman-structured :class:`~tensorfact.collapsed.kalman.CollapsedGaussian`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.scipy.linalg import cho_solve, solve_triangular

from tensorfact.collapsed.precision import _dynamic_blocks
from tensorfact.collapsed.series import DynamicBlock, SeriesLayout
from tensorfact.model.tensor import TensorModel
from tensorfact.spec import Effect, GrandMean, Shrinkage, Temporal


class KroneckerData(NamedTuple):
    """Complete data for :class:`KroneckerGaussian` (a pytree; pass it traced under ``jit``).

    Attributes:
        y: ``(I, J, T)`` values minus the grand mean's prior location, axes (series dims in
            data order, time).
        scatter: ``(4, T, T)`` scatter matrices ``S_k`` of ``y`` in the four classes.
    """

    y: Array | np.ndarray
    scatter: Array | np.ndarray


def kronecker_unsupported(model: TensorModel, mask: np.ndarray) -> str | None:
    """Why the Kronecker path does not apply (``None`` if it does)."""
    spec = model.spec
    if not np.all(mask):
        return "some cells are missing"
    if spec.noise.per_series:
        return "the noise is per series"
    for effect in spec.effects:
        if isinstance(effect, Shrinkage) and effect.prior == "horseshoe":
            return f"effect {effect.name!r} has a horseshoe prior (per-element scales)"
        if isinstance(effect, Temporal) and effect.transition is not None:
            return f"effect {effect.name!r} has a user transition"
    return None


def class_projections(values: Array) -> tuple[Array, Array, Array, Array]:
    """Splits ``(I, J, ...)`` values into their (const|contrast) x (const|contrast) parts.

    The four parts are orthogonal projections (means over ``i`` and ``j`` and their
    complements) and sum to ``values``.
    """
    mean_i = jnp.mean(values, axis=0, keepdims=True)
    mean_j = jnp.mean(values, axis=1, keepdims=True)
    mean_ij = jnp.mean(mean_i, axis=1, keepdims=True)
    const_const = jnp.broadcast_to(mean_ij, values.shape)
    const_i_contrast_j = mean_i - mean_ij  # constant along i, contrast along j
    contrast_i_const_j = mean_j - mean_ij
    contrast_contrast = values - mean_i - mean_j + mean_ij
    return (
        const_const,
        jnp.broadcast_to(const_i_contrast_j, values.shape),
        jnp.broadcast_to(contrast_i_const_j, values.shape),
        contrast_contrast,
    )


class KroneckerGaussian:
    """Exact collapsed Gaussian of a tensor model with complete data, diagonalised along the
    series dims (see the module docstring for the equations).

    Same interface as :class:`~tensorfact.collapsed.kalman.CollapsedGaussian` for what the
    collapsed sampler needs: :meth:`log_marginal`, :meth:`sample`, ``data``, ``model``.

    Args:
        model: the tensor model (shared noise, no horseshoe, built-in temporal priors).
        y: data in the model's dim order.
        mask: true where observed; must be all true.

    Raises:
        ValueError: if the model or data do not have the Kronecker structure (the message
            says why; use ``CollapsedGaussian`` instead).
    """

    def __init__(self, model: TensorModel, y: np.ndarray, mask: np.ndarray) -> None:
        reason = kronecker_unsupported(model, np.asarray(mask, bool))
        if reason is not None:
            raise ValueError(
                f"The Kronecker collapsed path needs complete data with shared noise, but "
                f"{reason}; use CollapsedGaussian (algebra='kalman') instead."
            )
        spec = model.spec
        self.model = model
        self.layout = SeriesLayout(model)
        self.axes = (*spec.other_dims, spec.time)
        order = [spec.dims.index(d) for d in self.axes]
        values = np.transpose(np.asarray(y, np.float64), order)
        loc = sum(e.loc for e in spec.effects if isinstance(e, GrandMean))
        values = values - loc
        n_i, n_j, _ = values.shape
        self.multiplicity = np.array([1, n_j - 1, n_i - 1, (n_i - 1) * (n_j - 1)], np.float64)
        with jax.enable_x64(True):
            parts = class_projections(jnp.asarray(values))
            scatter = np.stack([np.asarray(jnp.einsum("ijt,iju->tu", p, p)) for p in parts])
        self.data = KroneckerData(y=values, scatter=scatter)

    # -- covariances ---------------------------------------------------------------------------
    def _factors(self, effect: Effect) -> Array:
        """``lambda_{e,k}`` for the four classes."""
        dims = self.model.spec.effect_dims(effect)
        n_i, n_j = self.data.y.shape[:2]
        along_i = (1.0, 1.0) if self.axes[0] in dims else (float(n_i), 0.0)
        along_j = (1.0, 1.0) if self.axes[1] in dims else (float(n_j), 0.0)
        # classes in the order (const i, const j), (const i, contrast j), (contrast i, const j),
        # (contrast i, contrast j)
        return jnp.asarray([along_i[ci] * along_j[cj] for ci in (0, 1) for cj in (0, 1)])

    def _row_state_covariance(self, block: DynamicBlock, hyper: Mapping[str, Any]) -> Array:
        """Prior covariance ``(T w, T w)`` of one row's state (level and, for a trend, slope),
        ordered ``t * w + component``. Closed form for a random walk (``s^2 (min(t, u) + 1)``)
        and an iid-over-time effect (``s^2 I``); otherwise the inverse of the row's prior
        precision (:mod:`tensorfact.collapsed.precision`)."""
        effect, num_steps = block.effect, self.data.y.shape[-1]
        if isinstance(effect, Temporal) and effect.kind == "random_walk":
            steps = np.arange(num_steps)
            unit = np.minimum.outer(steps, steps) + 1.0
            return jnp.asarray(hyper[effect.scale_site]) ** 2 * unit
        if isinstance(effect, Shrinkage):
            return jnp.asarray(hyper[effect.scale_site]) ** 2 * np.eye(num_steps)
        diag, sub, _ = _dynamic_blocks(self.layout, block, hyper)
        diag, sub = diag[:, 0], sub[:, 0]  # rows are iid: row 0
        width = block.width
        size = num_steps * width
        sub = jnp.concatenate([jnp.zeros_like(diag[:1]), sub])  # O_t at t >= 1
        eye = jnp.eye(num_steps, dtype=diag.dtype)
        below = jnp.eye(num_steps, k=-1, dtype=diag.dtype)  # (t, t - 1)
        # dense products with 0/1 matrices instead of scatters: cheaper to compile, to
        # differentiate and to vectorise
        precision = (
            jnp.einsum("tu,tab->taub", eye, diag)
            + jnp.einsum("tu,tab->taub", below, sub)
            + jnp.einsum("ut,uba->taub", below, sub)
        ).reshape(size, size)
        return cho_solve((jnp.linalg.cholesky(precision), True), jnp.eye(size, dtype=diag.dtype))

    def _time_covariances(self, hyper: Mapping[str, Any]) -> list[tuple[Effect, Array, Array]]:
        """Per effect: (effect, class factors, ``K_e``)."""
        num_steps = self.data.y.shape[-1]
        ones = jnp.ones((num_steps, num_steps))
        out = []
        dynamic = {block.effect.name: block for block in self.layout.dynamics}
        for effect in self.model.spec.effects:
            if isinstance(effect, GrandMean):
                kernel = effect.scale**2 * ones
            elif effect.name in dynamic:
                block = dynamic[effect.name]
                state = self._row_state_covariance(block, hyper)
                kernel = state[:: block.width, :: block.width]
            else:
                kernel = jnp.asarray(hyper[effect.scale_site]) ** 2 * ones
            out.append((effect, self._factors(effect), kernel))
        return out

    def class_covariances(self, hyper: Mapping[str, Any]) -> Array:
        """``Sigma_k``, shape ``(4, T, T)``."""
        num_steps = self.data.y.shape[-1]
        sigma = jnp.asarray(hyper["sigma"])
        total = sigma**2 * jnp.broadcast_to(jnp.eye(num_steps), (4, num_steps, num_steps))
        for _, factors, kernel in self._time_covariances(hyper):
            total = total + factors[:, None, None] * kernel[None]
        return total

    # -- collapsed likelihood --------------------------------------------------------------
    def log_marginal(self, hyper: Mapping[str, Any], data: KroneckerData | None = None) -> Array:
        """``log p(y | hyper)`` with all location effects integrated out."""
        data = self.data if data is None else data
        covariances = self.class_covariances(hyper)
        chol = jnp.linalg.cholesky(covariances)
        num_steps = covariances.shape[-1]
        logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        # tr(Sigma^{-1} S) = ||L^{-1} S^{1/2}||^2 without a square root: tr(L^-T L^-1 S)
        eye = jnp.broadcast_to(jnp.eye(num_steps, dtype=chol.dtype), chol.shape)
        inv_chol = solve_triangular(chol, eye, lower=True)
        quad = jnp.einsum("kat,ktu,kau->k", inv_chol, jnp.asarray(data.scatter), inv_chol)
        multiplicity = jnp.asarray(self.multiplicity)
        return -0.5 * jnp.sum(multiplicity * (logdet + num_steps * jnp.log(2 * jnp.pi)) + quad)

    # -- exact draws -----------------------------------------------------------------------
    def _apply_inverse(self, covariances: Array, values: Array) -> Array:
        """``Cov(y)^{-1} v`` for ``v`` of shape ``(I, J, T)``."""
        chol = jnp.linalg.cholesky(covariances)
        parts = class_projections(values)
        return sum(
            cho_solve((chol[k], True), part.reshape(-1, part.shape[-1]).T).T.reshape(part.shape)
            for k, part in enumerate(parts)
        )

    def noise_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the standard-normal inputs of :meth:`sample_from_noise`: one per effect
        (in specification order) and one for the observation noise ``(I, J, T)``."""
        num_steps = self.data.y.shape[-1]
        dynamic = {block.effect.name: block for block in self.layout.dynamics}
        shapes = []
        for effect in self.model.spec.effects:
            shape = self._axes_shape(effect)
            if effect.name in dynamic:
                shapes.append((shape[0] * shape[1], num_steps * dynamic[effect.name].width))
            else:
                shapes.append(shape)
        return [*shapes, tuple(self.data.y.shape)]

    def sample(
        self, hyper: Mapping[str, Any], rng_key: Array, data: KroneckerData | None = None
    ) -> dict[str, Array]:
        """One exact draw of the location sites from ``p(theta | y_obs, hyper)``."""
        shapes = self.noise_shapes()
        sizes = [int(np.prod(shape)) for shape in shapes]
        # one generator call, split afterwards: each call inlines the generator, and eight
        # of them made this function's compile ~4x longer
        flat = jax.random.normal(rng_key, (sum(sizes),), jnp.result_type(float))
        pieces = jnp.split(flat, np.cumsum(sizes)[:-1])
        noises = [p.reshape(shape) for p, shape in zip(pieces, shapes, strict=True)]
        return self.sample_from_noise(hyper, noises, data)

    def sample_from_noise(
        self,
        hyper: Mapping[str, Any],
        noises: list[Array],
        data: KroneckerData | None = None,
    ) -> dict[str, Array]:
        """The draw for given standard-normal inputs (shapes :meth:`noise_shapes`), by
        Matheron's rule: a prior draw ``(theta', y')`` corrected by
        ``Cov(theta, y) Cov(y)^{-1} (y - y')``. The map is affine in the inputs; with
        ``N(0, I)`` inputs its output is an exact draw from ``p(theta | y_obs, hyper)``
        (zero inputs give the conditional mean)."""
        data = self.data if data is None else data
        y = jnp.asarray(data.y)
        num_steps = y.shape[-1]
        effects = self._time_covariances(hyper)
        dynamic = {block.effect.name: block for block in self.layout.dynamics}
        prior_draws: dict[str, Array] = {}
        states: dict[str, Array] = {}
        simulated = jnp.zeros_like(y)
        for noise, (effect, _, _) in zip(noises[:-1], effects, strict=True):
            shape = self._axes_shape(effect)
            if effect.name in dynamic:
                block = dynamic[effect.name]
                state_cov = self._row_state_covariance(block, hyper)
                states[effect.name] = state_cov
                draw = noise @ jnp.linalg.cholesky(state_cov).T
                draw = draw.reshape(*shape[:2], num_steps, block.width)
            else:
                scale = effect.scale if isinstance(effect, GrandMean) else hyper[effect.scale_site]
                draw = scale * noise[..., None]
            prior_draws[effect.name] = draw
            simulated = simulated + draw[..., 0]
        simulated = simulated + jnp.asarray(hyper["sigma"]) * noises[-1]
        weights = self._apply_inverse(self.class_covariances(hyper), y - simulated)
        out: dict[str, Array] = {}
        for effect, _, _ in effects:
            shape = self._axes_shape(effect)
            summed = _sum_to(weights, shape)  # X_e^T Cov(y)^{-1} (y - y')
            draw = prior_draws[effect.name]
            if effect.name in dynamic:
                block = dynamic[effect.name]
                levels = states[effect.name][:, :: block.width]  # Cov(state, level)
                update = jnp.einsum("su,...u->...s", levels, summed)
                value = draw + update.reshape(*shape[:2], num_steps, block.width)
                self._store(out, effect, value[..., 0])
                if block.width == 2:
                    self._store(out, effect, value[..., 1], suffix="_slope")
                continue
            scale = effect.scale if isinstance(effect, GrandMean) else hyper[effect.scale_site]
            value = draw[..., 0] + scale**2 * jnp.sum(summed, axis=-1, keepdims=True)
            if isinstance(effect, GrandMean):
                value = value + effect.loc
            self._store(out, effect, value)
        return {site.name: out[site.name] for site in self.model.location_sites}

    def _axes_shape(self, effect: Effect) -> tuple[int, int, int]:
        """Broadcast shape of an effect on the ``(i, j, t)`` axes (1 where it lacks a dim;
        the time axis is 1 for static effects)."""
        dims = self.model.spec.effect_dims(effect)
        sizes = self.data.y.shape
        return tuple(n if d in dims else 1 for d, n in zip(self.axes, sizes, strict=True))

    def _store(self, out: dict, effect: Effect, value: Array, suffix: str = "") -> None:
        """Broadcast-shaped ``value`` -> site shape (the effect's dims in site order)."""
        dims = self.model.spec.effect_dims(effect)
        kept = [axis for axis, d in enumerate(self.axes) if d in dims]
        value = jnp.reshape(value, [value.shape[a] for a in kept])
        present = [d for d in self.axes if d in dims]
        out[effect.name + suffix] = jnp.transpose(value, [present.index(d) for d in dims])


def _sum_to(values: Array, shape: tuple[int, int, int]) -> Array:
    """Sums ``(I, J, T)`` values over the axes where ``shape`` is 1; static effects (time
    axis 1) keep a trailing time axis of the summed values for the caller to sum."""
    axes = tuple(a for a in range(2) if shape[a] == 1)
    return jnp.sum(values, axis=axes, keepdims=True) if axes else values
