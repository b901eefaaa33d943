"""Named-dimension layouts of sample sites.

A layout records a site's value shape and a name for every axis. Names come from, in order of
precedence: the user's ``dims`` mapping, the NumPyro plates the site was sampled under, and
otherwise a positional name ``"@-k"`` (``k``-th axis from the right), so that unnamed axes align
the way NumPy broadcasting would. Axes of size 1 carry the name ``None`` and are treated as
absent (broadcast).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from numpyro.distributions import biject_to, constraints


@dataclass(frozen=True)
class SiteLayout:
    """Shape and axis names of one site's value.

    Attributes:
        name: site name.
        shape: value shape (batch shape + event shape).
        dims: one name per axis; ``None`` for axes of size 1.
        real_support: whether the site's support is the real line (else the site enters the
            decorrelation through its unconstrained value).
    """

    name: str
    shape: tuple[int, ...]
    dims: tuple[str | None, ...]
    real_support: bool = True

    @property
    def size(self) -> int:
        size = 1
        for n in self.shape:
            size *= n
        return size

    def axis_of(self, dim: str) -> int | None:
        """Index of the axis named ``dim``, or ``None`` when the site lacks it."""
        return self.dims.index(dim) if dim in self.dims else None

    def named_dims(self) -> tuple[str, ...]:
        return tuple(d for d in self.dims if d is not None)


def is_real_support(support: Any) -> bool:
    """True when a support constraint is (an independent product of) the real line."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def unconstrain(value: Any, support: Any) -> Any:
    """Maps a value to unconstrained space (identity for real support)."""
    if is_real_support(support):
        return value
    return biject_to(support).inv(value)


def site_layout(
    msg: Mapping[str, Any], user_dims: Mapping[str, Sequence[str]]
) -> SiteLayout:
    """Builds the layout of a sample or deterministic site from its NumPyro message.

    Raises:
        ValueError: when user-given dims do not match the value's number of axes.
    """
    name = msg["name"]
    fn = msg.get("fn")
    shape = tuple(fn.shape()) if fn is not None else tuple(msg["value"].shape)
    ndim = len(shape)
    if name in user_dims:
        dims = tuple(user_dims[name])
        if len(dims) != ndim:
            raise ValueError(
                f"dims for site {name!r} name {len(dims)} axes {dims} but its value has "
                f"shape {shape}; give exactly one name per axis."
            )
    else:
        event_dim = fn.event_dim if fn is not None else 0
        names: list[str | None] = [f"@{k - ndim}" for k in range(ndim)]
        for frame in msg.get("cond_indep_stack", ()):
            axis = ndim - event_dim + frame.dim
            if 0 <= axis < ndim:
                names[axis] = frame.name
        dims = tuple(names)
    dims = tuple(d if n > 1 else None for d, n in zip(dims, shape, strict=True))
    real = fn is None or is_real_support(fn.support)
    return SiteLayout(name=name, shape=shape, dims=dims, real_support=real)
