"""The prior of a decorrelated child's auxiliary site ``u`` (:mod:`reparam.handler`)."""

from __future__ import annotations

from collections.abc import Callable

import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import constraints


class AuxiliaryPrior(dist.Distribution):
    """Density of ``u`` given the parents: ``p(u) = p_x(x(u))`` (unit Jacobian).

    ``base`` is the child's prior in (unconstrained) model coordinates; ``to_model`` and
    ``to_aux`` are the exact inverse pair between ``u`` and those coordinates.
    """

    support = constraints.real

    def __init__(
        self,
        base: dist.Distribution,
        to_model: Callable,
        to_aux: Callable,
        log_jacobian: Array | float = 0.0,
    ):
        self.base = base
        self.to_model = to_model
        self.to_aux = to_aux
        self.log_jacobian = log_jacobian
        super().__init__(base.batch_shape, base.event_shape)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        return self.to_aux(self.base.sample(key, sample_shape))

    def log_prob(self, value: Array) -> Array:
        return self.base.log_prob(self.to_model(value)) + self.log_jacobian
