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


def axis_names(
    msg: Mapping[str, Any], user_dims: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """One name per axis of a site's value, before axes of size 1 lose theirs.

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
        return dims
    event_dim = fn.event_dim if fn is not None else 0
    names = [f"@{k - ndim}" for k in range(ndim)]
    for frame in msg.get("cond_indep_stack", ()):
        axis = ndim - event_dim + frame.dim
        if 0 <= axis < ndim:
            names[axis] = frame.name
    return tuple(names)


def is_positional(dim: str) -> bool:
    """Whether an axis name is a positional ``"@-k"`` (no plate, no ``dims`` entry)."""
    return dim.startswith("@")


def check_axes_exist(
    requested: Sequence[tuple[str, str]], axes: set[str], handler: str
) -> None:
    """Refuses axis names that no site has (options naming them would be silently ignored).

    Args:
        requested: ``(argument, axis name)`` pairs, e.g. ``("rotate", "i")``.
        axes: the axis names of the model's sites (:func:`axis_names`).
        handler: the handler's name, for the message.

    Raises:
        ValueError: naming the argument, the axis and the named axes that exist.
    """
    for argument, axis in requested:
        if axis not in axes:
            named = sorted(d for d in axes if not is_positional(d))
            raise ValueError(
                f"{handler} {argument}= names the axis {axis!r}, which no site of the model "
                f"has, so it would be ignored; the model's named axes are {named}. Axes are "
                "named by the plates a site is sampled under or by dims={site: (one name per "
                "axis)}."
            )


def site_layout(
    msg: Mapping[str, Any], user_dims: Mapping[str, Sequence[str]]
) -> SiteLayout:
    """Builds the layout of a sample or deterministic site from its NumPyro message.

    Raises:
        ValueError: when user-given dims do not match the value's number of axes.
    """
    fn = msg.get("fn")
    shape = tuple(fn.shape()) if fn is not None else tuple(msg["value"].shape)
    names = axis_names(msg, user_dims)
    dims = tuple(d if n > 1 else None for d, n in zip(names, shape, strict=True))
    real = fn is None or is_real_support(fn.support)
    return SiteLayout(name=msg["name"], shape=shape, dims=dims, real_support=real)
