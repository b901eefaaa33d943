"""Data-parallel placement: a model's data arrays sharded across devices along one axis.

The likelihood of a model whose data are arrays of cells is a sum over cells. Placing the
data with a ``jax.sharding.NamedSharding`` that splits one axis over a one-dimensional device
mesh (axis name ``"cells"``) and leaving everything else (parameters, latent sites)
unconstrained lets XLA's SPMD partitioner run every compiled program of a fit (SVI steps,
guide draws, the start) data-parallel: each device evaluates the likelihood of its cells and
the gradient sums are reduced across devices. Results equal the single-device ones up to the
order of floating-point sums.

Multi-host: call ``jax.distributed.initialize()`` first in every process; ``jax.devices()``
then lists the devices of all hosts and the same placement spans them (each process passes
the full data arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CELL_AXIS = "cells"
"""The name of the device-mesh axis the data are split along."""


def resolve_devices(devices: Any = "auto") -> list[Any]:
    """The devices to shard over.

    Args:
        devices: ``"auto"`` (every device ``jax.devices()`` lists), a number ``n >= 1`` (the
            first ``n`` of them) or a sequence of ``jax.Device``.

    Raises:
        TypeError: for anything else.
        ValueError: for a number outside ``1..len(jax.devices())`` or an empty sequence.
    """
    visible = jax.devices()
    if isinstance(devices, str):
        if devices != "auto":
            raise ValueError(f"devices must be 'auto', a number or a list of devices, got "
                             f"{devices!r}.")
        return list(visible)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, (bool, np.bool_)):
        if not 1 <= int(devices) <= len(visible):
            raise ValueError(
                f"devices={int(devices)} but {len(visible)} device(s) are visible; pass a "
                f"number from 1 to {len(visible)} (on CPU, more devices can be simulated with "
                "XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts)."
            )
        return list(visible[: int(devices)])
    if isinstance(devices, Sequence) and devices and all(
        isinstance(d, jax.Device) for d in devices
    ):
        return list(devices)
    raise TypeError(
        f"devices must be 'auto', a number or a non-empty list of jax.Device, got {devices!r}."
    )


def split_plan(shape: Sequence[int], count: int) -> tuple[int, int]:
    """``(axis, n)``: the axis of ``shape`` to split and the number of devices ``n <= count``
    that divides it, as many as possible (the longest such axis on ties); ``n = 1`` means no
    split."""
    for n in range(count, 1, -1):
        axes = [a for a, size in enumerate(shape) if size % n == 0]
        if axes:
            return max(axes, key=lambda a: shape[a]), n
    return 0, 1


def shard_cells(arrays: Sequence[Any], devices: Any = "auto") -> tuple[tuple[jax.Array, ...], int]:
    """Places arrays of one shape split along one axis over the devices (see
    :func:`split_plan`), or on the default device when that is one device.

    Args:
        arrays: arrays of one shape (e.g. the data values and their mask).
        devices: as for :func:`resolve_devices`.

    Returns:
        The placed arrays and the number of devices they are split over.

    Raises:
        ValueError: for arrays of different shapes.
    """
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"shard_cells needs arrays of one shape, got {sorted(shapes)}.")
    available = resolve_devices(devices)
    axis, count = split_plan(shapes.pop(), len(available))
    if count == 1:
        return tuple(jax.numpy.asarray(a) for a in arrays), 1
    mesh = Mesh(np.array(available[:count]), (CELL_AXIS,))
    spec = PartitionSpec(*([None] * axis), CELL_AXIS)
    sharding = NamedSharding(mesh, spec)
    return tuple(jax.device_put(a, sharding) for a in arrays), count
