"""Argument checks shared by :func:`tensorfact.fit` and :meth:`tensorfact.Fit.resume`.

Pure Python and NumPy: every check runs before any JAX work, and each error names the argument,
what it got and what to pass instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_SEED = 2**32  # JAX (32-bit mode) folds larger integer seeds onto smaller ones


def check_positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    """Requires an integer ``> 0`` (or ``>= 0`` with ``allow_zero``).

    Raises:
        TypeError: not an integer (bools and floats included).
        ValueError: too small.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}; pass e.g. {name}=1000.")
    if value < (0 if allow_zero else 1):
        raise ValueError(
            f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}; pass a "
            f"{'non-negative' if allow_zero else 'positive'} integer."
        )


def check_positive_real(name: str, value: Any) -> None:
    """Requires a finite real number ``> 0``.

    Raises:
        TypeError: not a real number.
        ValueError: not finite or not positive.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}; pass e.g. {name}=0.005.")
    if not math.isfinite(float(value)) or value <= 0:
        raise ValueError(
            f"{name} must be finite and > 0, got {value!r}; pass e.g. {name}=0.005."
        )


def check_flag(name: str, value: Any) -> None:
    """Requires ``True`` or ``False``.

    Raises:
        TypeError: for anything else.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Requires one of ``choices``.

    Raises:
        ValueError: naming the allowed values.
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Unknown {name} {value!r}; use one of {', '.join(repr(c) for c in choices)}."
        )


def check_optimizer(value: Any) -> None:
    """Requires ``None`` or an optax ``GradientTransformation`` (``init`` and ``update``).

    Raises:
        TypeError: for anything else (e.g. a NumPyro optimizer or a learning rate).
    """
    if value is None:
        return
    if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation (e.g. optax.adam(1e-3)), got "
            f"{type(value).__name__}; pass a learning rate as learning_rate=... instead."
        )


def check_seed(seed: Any) -> int | Any:
    """Requires an integer in ``[0, 2**32)`` or a JAX PRNG key (raw ``uint32[2]`` or typed).

    Returns:
        The seed unchanged (no key is created here).

    Raises:
        TypeError: for floats, strings, bools, arrays that are not keys.
        ValueError: for integers out of range.
    """
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(
            "seed must be an integer or a JAX PRNG key, got a bool; pass e.g. seed=0."
        )
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}; pass a non-negative one.")
        if seed >= MAX_SEED:
            raise ValueError(
                f"seed must be in [0, 2**32), got {seed}; larger seeds would silently collide "
                "with smaller ones. Pass a smaller integer or a jax.random.key."
            )
        return seed
    dtype = getattr(seed, "dtype", None)
    shape = getattr(seed, "shape", None)
    if dtype is not None and type(seed).__module__.startswith(("jax", "jaxlib")):
        import jax  # only to recognise key arrays; nothing is computed

        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            if shape != ():
                raise ValueError(f"seed must be a single PRNG key, got a key array of {shape}.")
            if str(jax.random.key_impl(seed)) != "threefry2x32":
                raise ValueError(
                    f"seed keys must use the default threefry2x32 implementation, got "
                    f"{jax.random.key_impl(seed)}; pass jax.random.key(n)."
                )
            return seed
        if shape == (2,) and np.dtype(dtype) == np.uint32:
            return seed
    raise TypeError(
        f"seed must be an integer or a JAX PRNG key (jax.random.key(0) or "
        f"jax.random.PRNGKey(0)), got {seed!r}."
    )
