"""The likelihood of a random minibatch of cells, scaled to be unbiased for the full one.

With ``N`` cells and a uniformly random subset ``b`` of ``B`` of them (NumPyro's
``plate("cells", N, subsample_size=B)``, drawn afresh at every SVI step from the step's key),

    E_b[ (N / B) sum_{k in b} m_k log p(y_k | theta) ] = sum_k m_k log p(y_k | theta),

each cell being in ``b`` with probability ``B / N`` (``m_k``: 1 where observed). So the ELBO and
its gradient are unbiased, and a step touches ``B`` cells: the location of a cell is gathered
from every effect at the cell's coordinates instead of broadcast over the whole tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpyro
from jax import Array

CELLS = "cells"  # the plate over the flattened cells

Term = tuple[Array, tuple[str, ...]]  # an array and the data dims its axes carry


def gather(term: Term, coords: dict[str, Array]) -> Array:
    """``value[coords]`` at each cell of the batch (``value`` with axes ``dims``)."""
    value, dims = term
    value = jnp.asarray(value)
    return value[tuple(coords[d] for d in dims)] if dims else value


def observe_batch(
    y: Array,
    mask: Array,
    data_dims: Sequence[str],
    loc_terms: Sequence[Term],
    scale_terms: Sequence[Term],
    likelihood: Callable[[Array, Array], numpyro.distributions.Distribution],
    batch_size: int,
) -> None:
    """Samples the observed site ``"y"`` on a random batch of cells (module docstring).

    Args:
        y, mask: the full data and observation mask, shape ``data_dims`` sizes.
        data_dims: the data's dim names in axis order.
        loc_terms: the additive terms of the location (each gathered at the batch's cells).
        scale_terms: factors of the noise scale (multiplied after gathering).
        likelihood: ``(loc, scale) -> distribution`` of one cell.
        batch_size: cells per batch.
    """
    shape = mask.shape
    size = int(jnp.size(mask))
    with numpyro.plate(CELLS, size, subsample_size=batch_size) as index:
        coords = dict(zip(data_dims, jnp.unravel_index(index, shape), strict=True))
        loc = sum(gather(term, coords) for term in loc_terms)
        scale = 1.0
        for term in scale_terms:
            scale = scale * gather(term, coords)
        loc = jnp.broadcast_to(loc, index.shape)
        observed = jnp.reshape(mask, -1)[index]
        numpyro.sample("y", likelihood(loc, scale).mask(observed), obs=jnp.reshape(y, -1)[index])
