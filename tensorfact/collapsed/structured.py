"""What the collapsed sampler needs of a structured Gaussian: the interface that
:class:`~tensorfact.collapsed.kalman.CollapsedGaussian` (any data, structured along time) and
:class:`~tensorfact.collapsed.kronecker.KroneckerGaussian` (complete data, diagonalised along
the series dims) both implement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from jax import Array

if TYPE_CHECKING:
    from tensorfact.model.tensor import TensorModel


@runtime_checkable
class StructuredGaussian(Protocol):
    """The location effects ``theta`` of a tensor model given its hyperparameters ``h``:
    ``p(theta | y_obs, h)`` Gaussian, ``log p(y_obs | h)`` in closed form.

    Attributes:
        model: the tensor model.
        data: the data in the algebra's own layout (a pytree of arrays). Methods use it by
            default; under ``jit`` pass it explicitly (``data=``) so it stays an argument.
    """

    model: TensorModel
    data: Any

    def log_marginal(self, hyper: Mapping[str, Any], data: Any = None) -> Array:
        """``log p(y_obs | h)``, every location effect integrated out."""
        ...

    def sample(self, hyper: Mapping[str, Any], rng_key: Array, data: Any = None
               ) -> dict[str, Array]:
        """One exact draw of the location sites from ``p(theta | y_obs, h)``."""
        ...
