"""Partial non-centring of a decorrelated child with respect to its own prior scale.

The coefficients of :mod:`reparam.family` are fitted at one value ``s0`` of the child's prior
scale ``s``; where an element of ``u`` is determined by the prior rather than the data, its
spread is proportional to ``s``, which makes a funnel for NUTS (and a poor mean-field fit)
when ``s`` is uncertain. Each auxiliary element is therefore sampled as ``v`` with

    u_k = r_k + (s / s0)^(1 - c_k) (v_k - r_k),     log |du/dv| = sum_k (1 - c_k) log(s / s0),

exactly (the Jacobian enters the auxiliary density). The fixed centre ``r`` (``decenter_at``,
set to ``u`` at the point the coefficients were fitted at) keeps the rescaling to deviations:
``u`` carries the parents' shift, which is large when e.g. the data sit far from zero, and
rescaling it whole would turn the scale's posterior spread into noise of that size.
``c_k = 1`` is centred (no change),
``c_k = 0`` fully non-centred. At ``s = s0`` the map is the identity, so everything fitted at
``s0`` carries over. The centredness is set from the local Gaussian: with ``p_k`` the part of
``u_k``'s precision that comes from the child's own prior and ``P_k`` its total precision,
``c_k = 1 - p_k / P_k`` (prior-determined elements are non-centred, data-determined ones stay
centred), the optimal choice for a Gaussian hierarchy.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpyro.distributions as dist
from jax import Array


def prior_scale(fn: Any) -> Array | None:
    """The scalar ``scale`` of a (possibly expanded/independent) distribution, or ``None``.

    Per-element scales (e.g. a horseshoe's ``s * lambda_k``) are not supported: rotated
    coordinates mix elements, so only a scale shared by all elements can be factored out.
    """
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution)):
        fn = fn.base_dist
    scale = getattr(fn, "scale", None)
    if scale is None or jnp.size(scale) != 1:
        return None
    return jnp.reshape(scale, ())


def centredness(params: dict[str, Array]) -> Array:
    """``c`` clipped to ``[0, 1]``: SGD on the ``centering`` param (``coefficients="params"``
    trained by SVI) may step outside, where the map would over- or anti-centre."""
    return jnp.clip(params["centering"], 0.0, 1.0)


def factor(params: dict[str, Array], scale: Array) -> Array:
    """``(s / s0)^(1 - c)`` elementwise."""
    return (scale / params["scale_ref"]) ** (1.0 - centredness(params))


def decentred_to_aux(params: dict[str, Array], scale: Array, v: Array) -> Array:
    """``u = r + factor * (v - r)``."""
    centre = params["decenter_at"]
    return centre + factor(params, scale) * (v - centre)


def aux_to_decentred(params: dict[str, Array], scale: Array, u: Array) -> Array:
    """Inverse of :func:`decentred_to_aux`: ``v = r + (u - r) / factor``."""
    centre = params["decenter_at"]
    return centre + (u - centre) / factor(params, scale)


def log_jacobian(params: dict[str, Array], scale: Array, event_ndim: int) -> Array:
    """``log |du/dv|`` summed over the last ``event_ndim`` axes (the child's event axes)."""
    terms = (1.0 - centredness(params)) * jnp.log(scale / params["scale_ref"])
    axes = tuple(range(-event_ndim, 0))
    return jnp.sum(terms, axis=axes) if axes else terms
