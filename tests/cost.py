"""The largest intermediate array of a traced program (for tests that bound its growth)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def _sub_jaxprs(value: Any):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def _largest(jaxpr) -> int:
    biggest = max((int(np.prod(v.aval.shape)) for v in jaxpr.invars), default=0)
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            biggest = max(biggest, int(np.prod(getattr(v.aval, "shape", ()))))
        for param in eqn.params.values():
            for inner in _sub_jaxprs(param):
                biggest = max(biggest, _largest(inner))
    return biggest


def largest_intermediate(fn: Callable, *args: Any) -> int:
    """Elements of the largest array ``fn(*args)`` creates, nested programs (jit, scan, while,
    cond, custom derivatives) included."""
    return _largest(jax.make_jaxpr(fn)(*args).jaxpr)
