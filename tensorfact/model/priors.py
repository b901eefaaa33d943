"""Prior distributions for shrinkage scales and temporal effects (vectorised over series).

Temporal priors act on the last axis (time) and are batched over leading axes (one series per
row):

* random walk: NumPyro's ``GaussianRandomWalk`` (``x_0 ~ N(0, s)``, increments ``N(0, s)``);
* :class:`AR1`: ``x_0 ~ N(0, s / sqrt(1 - phi^2))``, ``x_t = phi x_{t-1} + N(0, s)``;
* :class:`DriftRandomWalk` (the level of a local linear trend given its slope ``d``):
  ``x_0 ~ N(0, s)``, ``x_t = x_{t-1} + d_{t-1} + N(0, s)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes

from tensorfact.spec import ScalePrior


def scale_prior(kind: ScalePrior, scale: float) -> dist.Distribution:
    """``HalfNormal(scale)`` or ``HalfCauchy(scale)`` (a horseshoe's global scale is
    half-Cauchy)."""
    if kind == "half_normal":
        return dist.HalfNormal(scale)
    return dist.HalfCauchy(scale)


class AR1(dist.Distribution):
    """Stationary AR(1) series along the last axis, batched over leading axes."""

    arg_constraints = {"phi": constraints.interval(-1.0, 1.0), "scale": constraints.positive}
    support = constraints.real_vector
    reparametrized_params = ["phi", "scale"]

    def __init__(self, phi: Array, scale: Array, num_steps: int, *, validate_args=None):
        phi, scale = promote_shapes(jnp.asarray(phi), jnp.asarray(scale))
        self.phi, self.scale, self.num_steps = phi, scale, num_steps
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(phi), jnp.shape(scale))
        super().__init__(batch_shape, (num_steps,), validate_args=validate_args)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        shape = sample_shape + self.batch_shape + self.event_shape
        noise = jax.random.normal(key, shape)
        phi = jnp.broadcast_to(self.phi, sample_shape + self.batch_shape)
        scale = jnp.broadcast_to(self.scale, sample_shape + self.batch_shape)
        first = noise[..., 0] * scale / jnp.sqrt(1 - phi**2)

        def step(previous, eps):
            value = phi * previous + scale * eps
            return value, value

        _, rest = jax.lax.scan(step, first, jnp.moveaxis(noise[..., 1:], -1, 0))
        return jnp.concatenate([first[..., None], jnp.moveaxis(rest, 0, -1)], axis=-1)

    def log_prob(self, value: Array) -> Array:
        phi = self.phi[..., None]
        first = dist.Normal(0.0, self.scale / jnp.sqrt(1 - self.phi**2)).log_prob(value[..., 0])
        innovations = value[..., 1:] - phi * value[..., :-1]
        rest = dist.Normal(0.0, self.scale[..., None]).log_prob(innovations).sum(-1)
        return first + rest


class DriftRandomWalk(dist.Distribution):
    """Random walk whose increment at step ``t`` has mean ``drift[..., t - 1]``."""

    arg_constraints = {"drift": constraints.real_vector, "scale": constraints.positive}
    support = constraints.real_vector
    reparametrized_params = ["drift", "scale"]

    def __init__(self, drift: Array, scale: Array, *, validate_args=None):
        drift, scale = jnp.asarray(drift), jnp.asarray(scale)
        self.drift, self.scale = drift, scale
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(drift)[:-1], jnp.shape(scale))
        super().__init__(batch_shape, jnp.shape(drift)[-1:], validate_args=validate_args)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        shape = sample_shape + self.batch_shape + self.event_shape
        steps = jax.random.normal(key, shape) * jnp.asarray(self.scale)[..., None]
        drift = jnp.concatenate(
            [jnp.zeros_like(self.drift[..., :1]), self.drift[..., :-1]], axis=-1
        )
        return jnp.cumsum(steps + drift, axis=-1)

    def log_prob(self, value: Array) -> Array:
        scale = jnp.asarray(self.scale)
        first = dist.Normal(0.0, scale).log_prob(value[..., 0])
        increments = value[..., 1:] - value[..., :-1] - self.drift[..., :-1]
        rest = dist.Normal(0.0, scale[..., None]).log_prob(increments).sum(-1)
        return first + rest
