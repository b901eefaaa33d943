"""Collapsed exact inference for Gaussian tensor models.

With a Gaussian likelihood the location effects ``(mu, a, b, z, A, B, C, ...)`` are Gaussian
given the hyperparameters, so they can be integrated out exactly: NUTS runs over the handful
of hyperparameters with the collapsed likelihood ``log p(y_obs | h)``, and the effects are then
drawn exactly from ``p(theta | y_obs, h)``. The Gaussian computations are structured along time
(block elimination of the static effects plus a block-tridiagonal, Kalman-shaped Cholesky over
the temporal state), so their cost grows linearly in the number of time steps.

* :class:`CollapsedGaussian`: log marginal likelihood, conditional moments, exact draws.
* :class:`KroneckerGaussian`: the same for complete data with shared noise, diagonalised
  along the series dims (cost independent of their sizes).
* :class:`StructuredGaussian`: the interface both implement (what the sampler needs).
* :func:`collapsed_nuts`: the sampler; :class:`CollapsedNUTSRun` its result.
"""

from tensorfact.collapsed.kalman import CollapsedGaussian, ConditionalMoments
from tensorfact.collapsed.kronecker import KroneckerData, KroneckerGaussian
from tensorfact.collapsed.sampler import (
    CollapsedNUTSRun,
    collapsed_gaussian,
    collapsed_model,
    collapsed_nuts,
    draw_locations,
)
from tensorfact.collapsed.series import SeriesData, SeriesLayout
from tensorfact.collapsed.structured import StructuredGaussian

__all__ = [
    "CollapsedGaussian",
    "CollapsedNUTSRun",
    "ConditionalMoments",
    "KroneckerData",
    "KroneckerGaussian",
    "SeriesData",
    "SeriesLayout",
    "StructuredGaussian",
    "collapsed_gaussian",
    "collapsed_model",
    "collapsed_nuts",
    "draw_locations",
]
