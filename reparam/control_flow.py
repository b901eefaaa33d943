"""Recognising the control flow around sample sites (NumPyro's ``scan``, JAX's own loops).

:func:`reparam.decorrelate` and :func:`reparam.scan_reparam` must know whether a site is
sampled at the model's level, inside a ``numpyro.contrib.control_flow.scan`` body, or inside a
JAX transformation the model started itself (``jax.lax.scan``, ``fori_loop``, ``vmap``: NumPyro
then draws the site once, at trace time, and repeats that draw). Every reading of NumPyro or JAX
internals lives here, each in its most robust available form and with a fallback:

* a ``scan`` is recognised by its message's ``fn`` being NumPyro's own ``scan_wrapper`` object
  (by name only where that object cannot be imported);
* NumPyro's refusal of ``scan`` under a ``plate`` is recognised by where it was raised (a
  ``plate``'s ``process_message`` handling a control-flow message), not by its wording;
* a site inside a JAX transformation is recognised by JAX's current trace differing from the
  one the handler was entered under (``jax.extend.core.get_opaque_trace_state``);
* a call inside a transformation by a tracer among its arguments (:func:`traced_arguments`),
  and a model run on its own during another's trace by emptying NumPyro's handler stack
  (:func:`outside_handlers`).
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.core import Tracer


def _scan_wrapper() -> Callable | None:
    try:  # the submodule, not the ``scan`` function the package exports under the same name
        module = importlib.import_module("numpyro.contrib.control_flow.scan")
    except ImportError:  # pragma: no cover - every supported NumPyro has it
        return None
    return getattr(module, "scan_wrapper", None)


SCAN_WRAPPER = _scan_wrapper()
_TRACED_NAME = re.compile(r"Tracer\(|Traced<")
LAX_SCAN_HINT = (
    "NumPyro draws a site inside jax.lax.scan (or any JAX loop or transformation the model "
    "runs itself) once, when JAX traces the loop body, and repeats that draw at every step. "
    "For a loop over steps, use numpyro.contrib.control_flow.scan instead (same signature), "
    "which draws anew at every step; reparameterize its body sites with reparam.scan_reparam."
)


def is_scan_message(msg: Mapping[str, Any]) -> bool:
    """Whether a message is the ``control_flow`` message of a ``numpyro.contrib`` ``scan``."""
    if msg["type"] != "control_flow":
        return False
    fn = msg.get("fn")
    if SCAN_WRAPPER is not None:
        return fn is SCAN_WRAPPER
    return getattr(fn, "__name__", "") == "scan_wrapper"  # pragma: no cover


@dataclass(frozen=True)
class ScanCall:
    """The arguments of one ``scan`` call, read from its message."""

    f: Callable
    init: Any
    xs: Any
    length: int
    reverse: bool

    @property
    def first_input(self) -> Any:
        """The body's ``x`` at the first step (``None`` when ``xs`` is ``None``)."""
        return jax.tree.map(lambda a: a[0], self.xs)


def scan_call(msg: Mapping[str, Any]) -> ScanCall:
    """The ``scan`` call of a message for which :func:`is_scan_message` holds."""
    f, init, xs, length, reverse = msg["args"]
    if length is None:
        length = jnp.shape(jax.tree.leaves(xs)[0])[0]
    return ScanCall(f=f, init=init, xs=xs, length=int(length), reverse=bool(reverse))


def raised_by_plate(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a ``numpyro.plate`` handling a control-flow message
    (NumPyro's refusal of ``scan`` under a ``plate``)."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "process_message" and isinstance(
            frame.f_locals.get("self"), numpyro.plate
        ):
            msg = frame.f_locals.get("msg")
            if isinstance(msg, Mapping) and msg.get("type") == "control_flow":
                return True
        tb = tb.tb_next
    return False


def trace_state() -> Any:
    """JAX's current trace, comparable with ``==`` (``None`` where JAX cannot tell)."""
    try:
        from jax.extend.core import get_opaque_trace_state
    except ImportError:  # pragma: no cover - older JAX
        return None
    return get_opaque_trace_state()


def check_same_trace(entered: Any, name: str, handler: str) -> None:
    """Refuses a configured site sampled inside a JAX transformation the model started.

    Args:
        entered: :func:`trace_state` when the handler was entered.
        name: the site.
        handler: the handler's public name, for the message.

    Raises:
        ValueError: when JAX is tracing something other than what it traced on entry.
    """
    if entered is None or trace_state() == entered:
        return
    raise lax_loop_error(name, handler)


def lax_loop_error(name: str, handler: str) -> ValueError:
    """The error for site ``name`` sampled inside a JAX loop the model runs itself."""
    return ValueError(
        f"{handler}: site {name!r} is sampled inside a JAX transformation that the model runs "
        f"itself, such as jax.lax.scan. {LAX_SCAN_HINT}"
    )


def traced_names(names: Iterable[str]) -> list[str]:
    """Site names built from a traced value (e.g. ``f"x_{i}"`` with the step index traced)."""
    return sorted(n for n in names if _TRACED_NAME.search(n))


def check_site_names(names: Iterable[str]) -> None:
    """Refuses ``scan`` body site names built from traced values.

    Raises:
        ValueError: naming the sites and the fix (one fixed name; ``scan`` stacks the steps).
    """
    bad = traced_names(names)
    if bad:
        raise ValueError(
            f"scan body site name(s) {bad} were built from a traced value (e.g. "
            'f"x_{i}" with the step index i inside the body): inside the body the index is a '
            "JAX tracer, not a number. Give the site one fixed name used at every step (e.g. "
            '"x"); numpyro.contrib.control_flow.scan stacks the steps into one site of '
            "leading dimension the number of steps (x[t] is step t)."
        )


def traced_arguments(args: tuple, kwargs: Mapping[str, Any]) -> bool:
    """Whether any model argument is a JAX tracer (the call runs inside a transformation)."""
    return any(isinstance(x, Tracer) for x in jax.tree.leaves((args, kwargs)))


@contextlib.contextmanager
def outside_handlers() -> Iterator[None]:
    """Runs the block with NumPyro's handler stack empty (restored afterwards): a model run
    there, e.g. to find a configuration during a trace, reaches none of the handlers around
    the current one."""
    stack = numpyro.primitives._PYRO_STACK
    outer = list(stack)
    stack.clear()
    try:
        yield
    finally:
        stack[:] = outer


def narrow_integers(tree: Any) -> Any:
    """``tree`` with its NumPy int64 arrays as int32 copies (where the values fit); other
    leaves, and the input itself, unchanged.

    The local analyses run the model under ``jax.enable_x64``; a model that indexes with an
    int64 NumPy argument (``theta[group]``, ``group`` from ``np.repeat``) after running
    compiled in 32-bit mode then mixes int32 and int64 inside JAX's indexing
    (``TypeError: lax.add requires arguments to have the same dtypes``). Int32 indices, as
    JAX itself uses them in 32-bit mode, avoid it.
    """
    info = np.iinfo(np.int32)

    def narrow(x: Any) -> Any:
        if isinstance(x, np.ndarray) and x.dtype == np.int64 and (
                x.size == 0 or (info.min <= x.min() and x.max() <= info.max)):
            return x.astype(np.int32)
        return x

    return jax.tree.map(narrow, tree)
