"""The one cache of compiled programs (SVI chunks, guide draws, the local Gaussian analysis)
shared between fits.

A compiled program may be reused only for a model whose computation it is. The key is
therefore never written by callers: :func:`model_key` derives it from the model object itself

* a model with a ``program_key()`` method (e.g. ``tensorfact``'s ``TensorModel``: its
  specification and sizes) names its own computation;
* a :func:`reparam.decorrelate` model adds its whole configuration (config, rotations,
  sequence, band, dims, involved sites) to its inner model's key;
* a model with coefficients as an argument (``CoefficientModel``) adds nothing;
* any other model (a plain function, a closure) has no key and is compiled anew.

and :class:`ProgramKey` adds what else shapes the program (its kind, the guide kind, the
optimizer settings, particle count, chunk length, argument structure and constants).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from reparam.handler import DecorrelateMessenger

CACHE_SIZE = 32  # programs kept per process (least recently used dropped)
SHARE_MAX_BYTES = 2**24  # arguments above this size are not shared: a program keeps them alive


def _frozen(value: Any) -> Hashable:
    """A hashable copy of nested mappings / sequences (callables by identity)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def model_key(model: Any) -> Hashable | None:
    """The key of ``model``'s computation, or ``None`` when it cannot be named (see module
    docstring). Two models with equal keys must compute the same function of their arguments."""
    own = getattr(model, "program_key", None)
    if callable(own):
        return own()
    inner = getattr(model, "decorrelated", None)
    if inner is not None and type(model).__name__ == "CoefficientModel":
        base = model_key(inner)
        return None if base is None else ("coefficients", base)
    if isinstance(model, DecorrelateMessenger):
        base = model_key(model.fn)
        if base is None or not model.resolved or (
                callable(model.config) and not isinstance(model.config, Mapping)):
            return None
        return ("decorrelate", base, _frozen(model.config), model.structure,
                _frozen(model.dims), model.involve, model.fixed_at is not None)
    return None


@dataclass(frozen=True)
class ProgramKey:
    """Everything that determines one compiled program apart from its traced arguments.

    Attributes:
        kind: what the program does (``"svi_chunk"``, ``"draws"``).
        model: :func:`model_key` of the model.
        settings: the program's other settings (guide kind, optimizer, particles, chunk or
            number of draws, returned sites).
        arguments: the argument tree structure, which leaves are traced, and the constants.
    """

    kind: str
    model: Hashable
    settings: tuple
    arguments: tuple = ()


def shareable(arrays: Any) -> bool:
    """Whether arguments are small enough (:data:`SHARE_MAX_BYTES`) for a shared program."""
    return sum(int(np.asarray(x).nbytes) if not isinstance(x, jax.Array) else int(x.nbytes)
               for x in jax.tree.leaves(arrays)) <= SHARE_MAX_BYTES


@dataclass(frozen=True)
class Arguments:
    """Model arguments split for a compiled program: array leaves (NumPy or JAX) are traced
    inputs, so new values of the same shapes reuse the program; other leaves (Python numbers,
    strings, ...) are its constants.

    Attributes:
        treedef: the tree structure of ``(args, kwargs)``.
        traced: per leaf, whether it is traced.
        fixed: the constant leaves.
        arrays: the traced leaves.
    """

    treedef: Any
    traced: tuple[bool, ...]
    fixed: tuple
    arrays: tuple

    @classmethod
    def split(cls, args: tuple, kwargs: Mapping[str, Any]) -> Arguments:
        leaves, treedef = jax.tree.flatten((tuple(args), dict(kwargs)))
        traced = tuple(isinstance(x, (np.ndarray, np.generic, jax.Array)) for x in leaves)
        fixed = tuple(x for x, t in zip(leaves, traced, strict=True) if not t)
        arrays = tuple(x for x, t in zip(leaves, traced, strict=True) if t)
        return cls(treedef, traced, fixed, arrays)

    def join(self, arrays: tuple) -> tuple[tuple, dict]:
        """``(args, kwargs)`` with the traced leaves replaced by ``arrays``."""
        given, constant = iter(arrays), iter(self.fixed)
        leaves = [next(given) if t else next(constant) for t in self.traced]
        return jax.tree.unflatten(self.treedef, leaves)

    @property
    def key(self) -> tuple:
        """What of the arguments a program depends on: structure, constants and shapes."""
        shapes = tuple((np.shape(a), str(a.dtype)) for a in self.arrays)
        return (self.treedef, self.traced, self.fixed, shapes)

    @property
    def shareable(self) -> bool:
        return shareable(self.arrays)


class ProgramCache:
    """A least-recently-used map :class:`ProgramKey` -> compiled program."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._programs: OrderedDict[ProgramKey, Callable] = OrderedDict()

    def get(self, key: ProgramKey | None, build: Callable[[], Callable]) -> Callable:
        """The program of ``key``, built with ``build()`` if absent (``key=None``: always
        built, never kept; an unhashable key counts as ``None``)."""
        try:
            program = self._programs.get(key) if key is not None else None
        except TypeError:  # an unhashable constant: no sharing
            key, program = None, None
        if program is not None:
            self._programs.move_to_end(key)
            return program
        program = build()
        if key is not None:
            self._programs[key] = program
            while len(self._programs) > self.size:
                self._programs.popitem(last=False)
        return program

    def __len__(self) -> int:
        return len(self._programs)

    def clear(self) -> None:
        self._programs.clear()


PROGRAMS = ProgramCache()
