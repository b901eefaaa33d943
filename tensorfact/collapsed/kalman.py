"""Structured exact Gaussian computations for a tensor model: collapsed marginal likelihood,
conditional moments and exact conditional draws of the location effects.

Given the hyperparameters ``h`` of a :class:`~tensorfact.model.tensor.TensorModel` with a Gaussian
likelihood, the location effects ``theta`` have the Gaussian posterior ``N(P^{-1} b', P^{-1})``
(``P = Q + X^T W X``; see :mod:`tensorfact.testing.dense` for the dense form) and

    log p(y_obs | h) = -1/2 [ r^T W r - b^T P^{-1} b + log det P - log det Q
                              + sum_obs log(2 pi sigma^2) ],   r = y - X m0,  b = X^T W r.

:class:`CollapsedGaussian` evaluates these in ``O(T)`` time with the Kalman-shaped block
elimination of :mod:`tensorfact.collapsed.blocktridiag` instead of a dense ``O(dim^3)``
Cholesky. All methods are pure JAX functions of ``hyper`` (differentiable,
``jit``/``vmap``-able); call them with 64-bit floats enabled
(``with jax.enable_x64(True)``) for accurate results.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from tensorfact.collapsed import blocktridiag
from tensorfact.collapsed.precision import noise_terms, structured_prior
from tensorfact.collapsed.series import SeriesData, SeriesLayout
from tensorfact.model.tensor import TensorModel


class ConditionalMoments(NamedTuple):
    """Conditional posterior means and sds of the location sites (site name -> array)."""

    mean: dict[str, Any]
    sd: dict[str, Any]


class CollapsedGaussian:
    """Exact conditional Gaussian of a tensor model's location effects, structured along time.

    Supports every specification of :mod:`tensorfact.spec` (random-walk, AR(1) and
    local-linear-trend temporal effects, iid and horseshoe shrinkage, shared or per-series
    noise). Cost per evaluation ``O(T (p^3 + p^2 S + p S^2) + ns^3)`` with ``S`` the number of
    series (``I * J``), ``p`` the per-step state size (``1 + I + J`` for the default model)
    and ``ns`` the number of static effects (``1 + I + J + I J``).

    Args:
        model: the tensor model.
        y: data values in the model's dim order (NaN allowed in missing cells).
        mask: true where a cell is observed.

    Attributes:
        layout: the series layout.
        data: the data in series layout. Methods use it by default; under ``jit`` pass it
            explicitly as an argument (``data=``) so it is not embedded as a constant.
    """

    def __init__(self, model: TensorModel, y: np.ndarray, mask: np.ndarray) -> None:
        self.model = model
        self.layout = SeriesLayout(model)
        self.data = self.layout.series_data(y, mask)

    # -- the system --------------------------------------------------------------------------
    def system(
        self, hyper: Mapping[str, Any], data: SeriesData | None = None
    ) -> blocktridiag.ChainSystem:
        """The Gaussian system (residuals, weights, maps, prior blocks) given ``hyper``."""
        data = self.data if data is None else data
        layout = self.layout
        prior = structured_prior(layout, hyper)
        noise = noise_terms(layout, hyper)
        mask = jnp.asarray(data.mask)
        static_map = jnp.asarray(layout.static_map)
        resid = (jnp.asarray(data.y) - (static_map @ prior.static_mean)[None]) * mask
        return blocktridiag.ChainSystem(
            resid=resid,
            weights=mask * noise.precision[None],
            dynamic_map=jnp.asarray(layout.dynamic_map),
            static_map=static_map,
            prior=prior,
        )

    def log_marginal(self, hyper: Mapping[str, Any], data: SeriesData | None = None) -> Array:
        """``log p(y_obs | hyper)`` with all location effects integrated out."""
        data = self.data if data is None else data
        system = self.system(hyper, data)
        factor = blocktridiag.factorize(system)
        counts = jnp.sum(jnp.asarray(data.mask), axis=0)
        log_variance = noise_terms(self.layout, hyper).log_variance
        return blocktridiag.log_marginal(system, factor, counts, log_variance)

    # -- conditional posterior ---------------------------------------------------------------
    def moments(
        self, hyper: Mapping[str, Any], data: SeriesData | None = None
    ) -> ConditionalMoments:
        """Exact conditional means and sds of the location sites given ``hyper``."""
        system = self.system(hyper, data)
        factor = blocktridiag.factorize(system)
        x_s, x_d = blocktridiag.solve(system, factor)
        var_s, var_d = blocktridiag.marginal_variances(system, factor)
        mean = self.layout.to_sites(x_s + system.prior.static_mean, x_d)
        sd = self.layout.to_sites(jnp.sqrt(var_s), jnp.sqrt(var_d))
        return ConditionalMoments(mean=mean, sd=sd)

    def sample_from_noise(
        self,
        hyper: Mapping[str, Any],
        noise_static: Array,
        noise_dynamic: Array,
        data: SeriesData | None = None,
    ) -> dict[str, Array]:
        """The draw ``theta = mean + L_full^{-T} eps`` for given standard-normal ``eps``.

        Args:
            noise_static: ``(ns,)`` (``layout.num_static``).
            noise_dynamic: ``(T, p)`` (``layout.num_steps, layout.state_size``).

        Returns:
            Site name -> array; with ``eps ~ N(0, I)`` an exact draw from ``p(theta | y, h)``
            (the map ``eps -> theta`` is affine with ``Cov = P^{-1}``).
        """
        system = self.system(hyper, data)
        factor = blocktridiag.factorize(system)
        x_s, x_d = blocktridiag.solve(system, factor, noise_static, noise_dynamic)
        return self.layout.to_sites(x_s + system.prior.static_mean, x_d)

    def sample(
        self, hyper: Mapping[str, Any], rng_key: Array, data: SeriesData | None = None
    ) -> dict[str, Array]:
        """One exact draw of the location sites from ``p(theta | y_obs, hyper)``."""
        layout = self.layout
        key_s, key_d = jax.random.split(rng_key)
        dtype = jnp.result_type(float)
        noise_static = jax.random.normal(key_s, (layout.num_static,), dtype)
        noise_dynamic = jax.random.normal(key_d, (layout.num_steps, layout.state_size), dtype)
        return self.sample_from_noise(hyper, noise_static, noise_dynamic, data)

    def posterior(self, hyper: Mapping[str, Any]) -> ConditionalMoments:
        """:meth:`moments` in float64 as numpy arrays (like ``GaussianOracle.posterior``)."""
        with jax.enable_x64(True):
            hyper64 = {k: jnp.asarray(v, jnp.float64) for k, v in hyper.items()}
            data = jax.tree_util.tree_map(jnp.asarray, self.data)
            moments = jax.jit(self.moments)(hyper64, data)
            names = [site.name for site in self.model.location_sites]  # jit sorts dict keys
            return ConditionalMoments(
                mean={k: np.asarray(moments.mean[k]) for k in names},
                sd={k: np.asarray(moments.sd[k]) for k in names},
            )
