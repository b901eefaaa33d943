"""``SVI.init`` of a mean-field guide as one compiled program.

NumPyro's ``SVI.init`` runs eagerly: the guide's prototype trace, the search for valid initial
parameters (a gradient of the potential) and the guide and model traces dispatch every
operation on its own, and each new operation shape is compiled on its own. On tensorfact's
default model (20 × 10 × 30 cells) that is about 490 small compilations and 25-40 s on two
cores, more than the whole SVI training; the same initialisation traced in one ``jax.jit``
compiles once (about 7 s) and gives the same state.

:func:`initial_state` runs it so for an ``AutoNormal`` guide: ``SVI.init`` runs inside
``jax.jit`` on a private copy of the guide, and the guide's prototype (its trace, initial
locations and plates) is rebuilt from the program's outputs, so the caller's guide holds
concrete arrays only, exactly as after an eager ``SVI.init``. Its ``median`` and
``quantiles`` run compiled too (:class:`CompiledConstrain`), with the arguments of the latest
initialisation (NumPyro's guide keeps those of its set-up: after new argument arrays its
deterministic sites are stale). The initial values of
``init_to_value`` and the arguments are traced, so fits of the same model
(:func:`~reparam.programs.model_key`), optimizer and shapes share the program
(:data:`~reparam.programs.PROGRAMS`).

Anything else (another guide, a model that cannot be traced, an invalid starting point) runs
NumPyro's eager ``SVI.init`` unchanged, which also raises NumPyro's own errors.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import constrain_fn, potential_energy, transform_fn

from reparam.programs import PROGRAMS, Arguments, ProgramKey, model_key

# what AutoNormal._setup_prototype sets (numpyro >= 0.18, < 0.23); anything else: eager init
PROTOTYPE_ATTRIBUTES = frozenset({
    "prototype_trace", "_potential_fn_gen", "_potential_fn", "_postprocess_fn", "_init_locs",
    "_prototype_frames", "_prototype_plate_sizes", "_prototype_frame_full_sizes",
    "_event_dims",
})


class _Unsupported(Exception):
    """The compiled initialisation does not apply (the eager one runs instead)."""


def initial_state(
    svi: SVI,
    rng_key: jax.Array,
    args: tuple,
    kwargs: Mapping[str, Any],
    init_params: Mapping[str, Any] | None = None,
    optimizer_key: Hashable | None = None,
) -> Any:
    """``svi.init(rng_key, *args, init_params=init_params, **kwargs)``, compiled.

    Same result as the eager call (the state, ``svi.constrain_fn`` and the guide's
    prototype), up to the order of floating-point operations.

    Args:
        svi: an ``SVI`` over any model; its guide is set up if it was not.
        rng_key: PRNG key of the initialisation.
        args, kwargs: model arguments.
        init_params: initial params (constrained), as for ``SVI.init``.
        optimizer_key: a hashable naming ``svi.optim`` completely; with it, and a model with
            a :func:`~reparam.programs.model_key`, the program is shared between fits.

    Returns:
        The initial ``SVIState``.
    """
    guide = svi.guide
    if type(guide) is not AutoNormal:
        return svi.init(rng_key, *args, init_params=init_params, **kwargs)
    try:
        return _compiled_init(svi, rng_key, args, kwargs, init_params, optimizer_key)
    except Exception:  # noqa: BLE001 - any failure: NumPyro's eager path (and its errors)
        return svi.init(rng_key, *args, init_params=init_params, **kwargs)


@dataclass
class _Traced:
    """The Python side of one traced initialisation: what is not an array output."""

    guide: AutoNormal | None = None
    trace_structure: Any = None
    transforms_structure: Any = None


def _compiled_init(svi, rng_key, args, kwargs, init_params, optimizer_key):
    guide = svi.guide
    set_up = guide.prototype_trace is not None
    arguments = Arguments.split(args, kwargs)
    values, strategy = _start_values(guide, set_up)
    params = dict(init_params) if init_params is not None else None
    key = _program_key(svi, arguments, set_up, values, strategy, params, optimizer_key)
    program, record = PROGRAMS.get(
        key, lambda: _build(svi, arguments, set_up, strategy)
    )
    out = program(rng_key, values, params, arguments.arrays)
    if not all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(out["check"])):
        raise _Unsupported("not a valid starting point")
    transforms = _rebuild(record.transforms_structure, out["transforms"])
    if not set_up:
        _adopt(guide, record, out, svi.model, arguments)
    elif isinstance(guide._postprocess_fn, CompiledConstrain):  # median with these arguments
        guide._postprocess_fn = CompiledConstrain(svi.model, arguments)
    svi.constrain_fn = partial(transform_fn, transforms)
    return out["state"]


def _start_values(guide: AutoNormal, set_up: bool) -> tuple[dict | None, Any]:
    """The traced starting values (initial locations, or ``init_to_value``'s values) and the
    strategy kept as a constant (``None`` when the values are traced)."""
    if set_up:
        return dict(guide._init_locs), None
    strategy = guide.init_loc_fn
    if isinstance(strategy, partial) and strategy.func is init_to_value:
        given = strategy.keywords.get("values") or {}
        return {k: jnp.asarray(v) for k, v in given.items()}, None
    return None, strategy


def _program_key(svi, arguments, set_up, values, strategy, params, optimizer_key):
    model = model_key(svi.model)
    guide = svi.guide
    if model is None or optimizer_key is None or not arguments.shareable:
        return None
    if set_up and not _static_supports(guide):
        return None  # a data-dependent support is part of the prototype: not shared
    shapes = lambda tree: None if tree is None else tuple(  # noqa: E731
        (k, np.shape(v), str(jnp.asarray(v).dtype)) for k, v in sorted(tree.items()))
    settings = (guide.prefix, guide._init_scale, guide.scale_constraint, guide.create_plates,
                set_up, strategy, shapes(values), shapes(params), optimizer_key,
                type(svi.loss).__name__, getattr(svi.loss, "num_particles", 1),
                _frozen_kwargs(svi.static_kwargs))
    return ProgramKey(kind="svi_init", model=model, settings=settings,
                      arguments=arguments.key)


def _frozen_kwargs(kwargs: Mapping[str, Any]) -> tuple:
    return tuple(sorted((str(k), v) for k, v in kwargs.items()))


def _static_supports(guide: AutoNormal) -> bool:
    """Whether no latent site's support holds an array (a support fixed by the model)."""
    return all(not jax.tree.leaves(site["fn"].support)
               for site in guide.prototype_trace.values()
               if site["type"] == "sample" and not site["is_observed"])


def _build(svi: SVI, arguments: Arguments, set_up: bool, strategy: Any):
    """The compiled initialisation and the record of its last trace."""
    record = _Traced()
    template = _private_copy(svi.guide)  # as it is now (the caller's is set up afterwards)

    def run(rng_key, values, params, arrays):
        args, kwargs = arguments.join(arrays)
        guide = _private_copy(template)
        if set_up:
            guide._init_locs = values
        else:
            guide.init_loc_fn = strategy if values is None else init_to_value(values=values)
        before = dict(vars(guide))
        private = SVI(svi.model, guide, svi.optim, svi.loss, **svi.static_kwargs)
        state = private.init(rng_key, *args, init_params=params, **kwargs)
        constrain = private.constrain_fn
        if not (isinstance(constrain, partial) and constrain.func is transform_fn):
            raise _Unsupported("SVI.constrain_fn is not transform_fn")
        transforms, record.transforms_structure = _split(constrain.args[0])
        out = {"state": state, "transforms": transforms, "check": [state.optim_state]}
        if not set_up:
            changed = {k for k, v in vars(guide).items() if before.get(k, None) is not v}
            if not changed <= PROTOTYPE_ATTRIBUTES:
                raise _Unsupported(f"unknown guide attributes {sorted(changed)}")
            # ordered: the guide samples its sites in the model's order (so do its draws)
            out["trace"], record.trace_structure = _split(OrderedDict(guide.prototype_trace))
            locs = guide._init_locs  # (sorted by jax's control flow: put in the model's order)
            out["locs"] = OrderedDict([*((k, locs[k]) for k in guide.prototype_trace if k in locs),
                                       *((k, v) for k, v in locs.items()
                                         if k not in guide.prototype_trace)])
            out["check"].append(potential_energy(svi.model, args, kwargs, guide._init_locs))
            record.guide = guide
        return out

    return jax.jit(run), record


def _private_copy(guide: AutoNormal) -> AutoNormal:
    """A shallow copy whose dicts are its own (``_setup_prototype`` fills some in place)."""
    guide = copy.copy(guide)
    for name, value in vars(guide).items():
        if isinstance(value, dict):
            setattr(guide, name, type(value)(value))
    return guide


def _split(tree: Any) -> tuple[list, tuple]:
    """The traced leaves of ``tree`` and what rebuilds it from them (the other leaves kept)."""
    leaves, treedef = jax.tree.flatten(tree)
    traced = [isinstance(x, jax.core.Tracer) for x in leaves]
    kept = [None if t else x for x, t in zip(leaves, traced, strict=True)]
    return [x for x, t in zip(leaves, traced, strict=True) if t], (treedef, traced, kept)


def _rebuild(structure: tuple, outputs: list) -> Any:
    treedef, traced, kept = structure
    given = iter(outputs)
    return jax.tree.unflatten(treedef, [next(given) if t else x
                                        for x, t in zip(kept, traced, strict=True)])


def _adopt(guide: AutoNormal, record: _Traced, out: dict, model: Callable,
           arguments: Arguments) -> None:
    """Sets ``guide`` up as an eager ``SVI.init`` would, from the program's outputs."""
    traced = record.guide
    for name in PROTOTYPE_ATTRIBUTES & set(vars(traced)):
        setattr(guide, name, copy.copy(getattr(traced, name)))
    guide.prototype_trace = _rebuild(record.trace_structure, out["trace"])
    guide._init_locs = dict(out["locs"])  # in the model's order (an OrderedDict output)
    args, kwargs = arguments.join(arguments.arrays)
    guide._potential_fn_gen = partial(_potential_fn, model)
    guide._potential_fn = guide._potential_fn_gen(*args, **kwargs)
    guide._postprocess_fn = CompiledConstrain(model, arguments)


def _potential_fn(model: Callable, *args: Any, **kwargs: Any) -> Callable:
    return partial(potential_energy, model, args, kwargs)


class CompiledConstrain:
    """``params -> constrain_fn(model, args, kwargs, params, return_deterministic=True)``,
    compiled once per model and argument shapes (the guide's ``_postprocess_fn``: its
    ``median`` and ``quantiles``)."""

    def __init__(self, model: Callable, arguments: Arguments) -> None:
        self.arrays = arguments.arrays
        model_id = model_key(model)
        key = None
        if model_id is not None and arguments.shareable:
            key = ProgramKey(kind="constrain", model=model_id, settings=(),
                             arguments=arguments.key)

        def constrain(params, arrays):
            args, kwargs = arguments.join(arrays)
            return constrain_fn(handlers.seed(model, 0), args, kwargs, params,
                                return_deterministic=True)

        self.program = PROGRAMS.get(key, lambda: jax.jit(constrain))

    def __call__(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return self.program(dict(params), self.arrays)
