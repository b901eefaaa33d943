"""Exact Gaussian posterior of the location effects given the hyperparameters (dense oracle).

With every hyperparameter ``h`` fixed (scales, AR coefficients, noise), the location effects
``theta = (mu, a, b, z, A, B, C, ...)`` of a :class:`~tensorfact.model.tensor.TensorModel` have a
Gaussian posterior: ``y_obs = X theta + eps`` with ``X`` a 0/1 design over the observed cells,
``eps ~ N(0, diag(sigma_cell^2))``, and a Gaussian prior ``N(m0, Q^{-1})`` that is
block-diagonal (iid blocks, random-walk / AR(1) tridiagonal blocks, local-linear-trend blocks).
Then

    P = Q + X^T W X,     mean = P^{-1} (X^T W y + Q m0),     W = diag(1 / sigma_cell^2),

and the log marginal likelihood ``log p(y_obs | h)`` is available in closed form. This module
builds ``X`` and ``Q`` explicitly, independently of NumPyro's densities, and is the reference the
inference methods are tested against (small tensors: the cost is a dense Cholesky). It runs in
float64 (inside ``jax.enable_x64``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from tensorfact.model.tensor import LocationSite, TensorModel
from tensorfact.spec import GrandMean, Shrinkage


def random_walk_precision(num_steps: int) -> np.ndarray:
    """Precision of a unit-scale random walk with ``x_0 ~ N(0, 1)``: ``D^T D``."""
    diff = np.eye(num_steps) - np.eye(num_steps, k=-1)
    return diff.T @ diff


def ar1_precision(num_steps: int, phi: Array) -> Array:
    """Precision of a unit-innovation stationary AR(1) series (tridiagonal)."""
    inner = jnp.full(num_steps, 1.0 + phi**2).at[0].set(1.0).at[-1].set(1.0)
    off = -phi * jnp.ones(num_steps - 1)
    return jnp.diag(inner) + jnp.diag(off, 1) + jnp.diag(off, -1)


@dataclass(frozen=True)
class GaussianPosterior:
    """Posterior of the location sites given hyperparameters.

    Attributes:
        mean: site name -> posterior mean (site shape).
        sd: site name -> posterior sd (site shape).
        precision: dense posterior precision over the flattened sites (``sites`` order).
        covariance: its inverse.
        sites: location sites in flattening order.
    """

    mean: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]
    precision: np.ndarray
    covariance: np.ndarray
    sites: tuple[LocationSite, ...]


class GaussianOracle:
    """Dense exact conditional posterior and marginal likelihood of a tensor model.

    Args:
        model: the tensor model (its spec and sizes).
        y: data values (NaN cells may hold anything).
        mask: true where a cell is observed.
    """

    def __init__(self, model: TensorModel, y: np.ndarray, mask: np.ndarray) -> None:
        self.model = model
        self.sites = model.location_sites
        self.sizes = [int(np.prod(model.shape_of(s.dims))) for s in self.sites]
        mask = np.asarray(mask, bool)
        self.mask = mask
        self.y_obs = np.asarray(y, np.float64)[mask]
        self.design = self._design(mask)

    @property
    def dim(self) -> int:
        return int(sum(self.sizes))

    def _design(self, mask: np.ndarray) -> np.ndarray:
        spec = self.model.spec
        index = np.indices(mask.shape)
        columns = []
        for site, size in zip(self.sites, self.sizes, strict=True):
            block = np.zeros((int(mask.sum()), size))
            if not site.name.endswith("_slope") or site.name in spec.effect_names:
                shape = self.model.shape_of(site.dims)
                axes = [spec.dims.index(d) for d in site.dims]
                flat = np.ravel_multi_index([index[a] for a in axes], shape) if shape else 0
                flat = np.broadcast_to(flat, mask.shape)[mask]
                block[np.arange(flat.size), flat] = 1.0
            columns.append(block)
        return np.hstack(columns)

    def _noise_sd(self, hyper: Mapping[str, Any]) -> Array:
        spec = self.model.spec
        if spec.noise.per_series:
            series = jnp.expand_dims(jnp.asarray(hyper["sigma_series"]), spec.dims.index(spec.time))
            return jnp.broadcast_to(series, self.mask.shape)[self.mask]
        return jnp.full(self.y_obs.shape, jnp.asarray(hyper["sigma"]))

    def prior(self, hyper: Mapping[str, Any]) -> tuple[Array, Array, Array]:
        """Prior mean ``m0``, precision ``Q`` and ``log det Q`` of the location sites."""
        spec, model = self.model.spec, self.model
        num_steps = model.sizes[spec.time]
        rw = jnp.asarray(random_walk_precision(num_steps))
        offsets = dict(zip([s.name for s in self.sites], np.cumsum([0, *self.sizes[:-1]]),
                           strict=True))
        q = jnp.zeros((self.dim, self.dim))
        m0 = jnp.zeros(self.dim)
        logdet = 0.0

        def put(q, row, col, block):
            return q.at[row : row + block.shape[0], col : col + block.shape[1]].add(block)

        for effect in spec.effects:
            start = int(offsets[effect.name])
            shape = model.shape_of(spec.effect_dims(effect))
            if isinstance(effect, GrandMean):
                q = q.at[start, start].set(effect.scale**-2)
                m0 = m0.at[start].set(effect.loc)
                logdet += -2 * np.log(effect.scale)
                continue
            scale = jnp.asarray(hyper[effect.scale_site])
            if isinstance(effect, Shrinkage):
                sd = jnp.broadcast_to(scale, shape)
                if effect.prior == "horseshoe":
                    sd = sd * jnp.asarray(hyper[f"lambda_{effect.name}"])
                q = put(q, start, start, jnp.diag(jnp.ravel(sd) ** -2))
                logdet += -2 * jnp.sum(jnp.log(sd))
                continue
            rows = int(np.prod(shape[:-1]))
            logdet += -2 * rows * num_steps * jnp.log(scale)
            if effect.kind == "random_walk":
                block = rw / scale**2
            elif effect.kind == "ar1":
                phi = jnp.asarray(hyper[f"phi_{effect.name}"])
                block = ar1_precision(num_steps, phi) / scale**2
                logdet += rows * jnp.log(1 - phi**2)
            else:  # local linear trend: level x given slope d: D x - S d ~ N(0, s^2 I)
                slope_scale = jnp.asarray(hyper[f"{effect.scale_site}_slope"])
                logdet += -2 * rows * num_steps * jnp.log(slope_scale)
                diff = jnp.eye(num_steps) - jnp.eye(num_steps, k=-1)
                shift = jnp.eye(num_steps, k=-1)
                slope_start = int(offsets[f"{effect.name}_slope"])
                slope_block = rw / slope_scale**2 + shift.T @ shift / scale**2
                cross = -(diff.T @ shift) / scale**2  # (level, slope)
                block = diff.T @ diff / scale**2
                for r in range(rows):
                    lo, so = start + r * num_steps, slope_start + r * num_steps
                    q = put(q, so, so, slope_block)
                    q = put(q, lo, so, cross)
                    q = put(q, so, lo, cross.T)
            for r in range(rows):
                lo = start + r * num_steps
                q = put(q, lo, lo, block)
        return m0, q, logdet

    def posterior(self, hyper: Mapping[str, Any]) -> GaussianPosterior:
        """Exact posterior of the location sites given hyperparameter values."""
        with jax.enable_x64(True):
            precision, mean = self.solve(hyper)
            covariance = jnp.linalg.inv(precision)
            sd = jnp.sqrt(jnp.diag(covariance))
            return GaussianPosterior(
                mean=self.split(np.asarray(mean)),
                sd=self.split(np.asarray(sd)),
                precision=np.asarray(precision),
                covariance=np.asarray(covariance),
                sites=self.sites,
            )

    def solve(self, hyper: Mapping[str, Any]) -> tuple[Array, Array]:
        m0, q, _ = self.prior(hyper)
        weights = self._noise_sd(hyper) ** -2
        x = jnp.asarray(self.design)
        precision = q + (x.T * weights) @ x
        rhs = x.T @ (weights * jnp.asarray(self.y_obs)) + q @ m0
        chol = jnp.linalg.cholesky(precision)
        return precision, jax.scipy.linalg.cho_solve((chol, True), rhs)

    def log_marginal(self, hyper: Mapping[str, Any]) -> Array:
        """``log p(y_obs | hyper)`` with the location sites integrated out (call under
        ``jax.enable_x64``; differentiable in ``hyper``)."""
        m0, q, logdet_q = self.prior(hyper)
        noise = self._noise_sd(hyper)
        weights = noise**-2
        x = jnp.asarray(self.design)
        resid = jnp.asarray(self.y_obs) - x @ m0
        precision = q + (x.T * weights) @ x
        chol = jnp.linalg.cholesky(precision)
        projected = jax.scipy.linalg.solve_triangular(chol, x.T @ (weights * resid), lower=True)
        quad = jnp.sum(weights * resid**2) - jnp.sum(projected**2)
        logdet_p = 2 * jnp.sum(jnp.log(jnp.diag(chol)))
        return -0.5 * (quad + logdet_p - logdet_q + jnp.sum(jnp.log(2 * jnp.pi * noise**2)))

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for site, size in zip(self.sites, self.sizes, strict=True):
            out[site.name] = flat[start : start + size].reshape(self.model.shape_of(site.dims))
            start += size
        return out
