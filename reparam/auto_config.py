"""Automatic decorrelation configuration: :func:`suggest_config` reads the children, parents,
rotations, sequence axis and axis names of :func:`reparam.decorrelate` off a model.

At the model's start point (every latent site at its prior median) it

1. names axes. Plates keep their names, and plates of equal size that never meet on one site
   are taken for one axis (a user who names ``C``'s plates ``ci``, ``cj`` because NumPyro
   refuses to reuse ``a``'s ``i`` means the same rows). An event axis takes the name of the
   one plate of its size; the steps of a ``GaussianRandomWalk`` are the sequence axis (named
   after the plate of their length where there is one, else ``"steps"``).
2. finds couplings. An earlier site ``r`` and a site ``s`` are coupled when the block
   ``H_sr`` of the Hessian of the potential (unconstrained coordinates) is not zero, measured
   by one Hessian-vector product per site with a Gaussian probe ``v_r`` on ``r``'s elements:
   ``|(H v_r)_s| > tol * sqrt(|(H v_r)_r| |(H v_s)_s|)`` (``tol = 1e-8``, float64). That is
   one gradient's cost per site and no matrix over the latents.
3. makes every real-valued site that is coupled to earlier real-valued sites a child of all
   of them (the ridges of :doc:`docs/design.md` §2 run between such sites), and a site along
   the sequence axis a child coupled with itself along it; a child coupled to an earlier
   positive site (its prior scale, as in a funnel) is decentred (:mod:`reparam.decenter`).
   Every plate axis that a child carries and one of its parents lacks is rotated by Helmert
   (the additive, sum-to-zero structure: the mean over that axis is what the parent
   confounds). Positive sites stay unchanged: their posterior is handled by the Laplace start
   and the decentring.

The result is a :class:`DecorrelationConfig`, which prints as the call a person would write
and can be edited before use: ``reparam.decorrelate(model, config)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer.initialization import init_to_median
from numpyro.infer.util import potential_energy, unconstrain_fn

from reparam.config import Affine
from reparam.control_flow import narrow_integers
from reparam.decenter import prior_scale
from reparam.sites import axis_names, is_positional, is_real_support

COUPLING_TOL = 1e-8  # relative size of a Hessian block below which two sites are uncoupled
DENSE_SEQUENCE = 100  # longest sequence coupled densely within sites (longer: Markov)
SEQUENCE_NAME = "steps"  # the sequence axis where no plate has the random walk's length


@dataclass
class DecorrelationConfig:
    """The arguments of :func:`reparam.decorrelate` for one model (editable).

    Attributes:
        config: child site -> :class:`reparam.Affine` (parents, decentring).
        rotate: axis name -> rotation name.
        sequence: the axis coupled within sites (``None``: none).
        markov: ``decorrelate``'s ``markov`` option.
        dims: site -> axis names, for the sites whose axes the plates do not name alone.
    """

    config: dict[str, Affine]
    rotate: dict[str, str] = field(default_factory=dict)
    sequence: str | None = None
    markov: bool | Literal["contrasts"] = False
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`reparam.decorrelate` besides the config."""
        return {"rotate": dict(self.rotate), "sequence": self.sequence, "markov": self.markov,
                "dims": dict(self.dims)}

    def __str__(self) -> str:
        lines = ["config = {"]
        for child, affine in self.config.items():
            entry = list(affine.parents)
            if affine.decenter or not affine.within:
                entry = (f"reparam.Affine(parents={tuple(affine.parents)!r}"
                         f"{', decenter=True' if affine.decenter else ''}"
                         f"{', within=False' if not affine.within else ''})")
            lines.append(f"    {child!r}: {entry},")
        lines.append("}")
        options = [f"rotate={self.rotate!r}"] if self.rotate else []
        if self.sequence is not None:
            options.append(f"sequence={self.sequence!r}")
        if self.markov:
            options.append(f"markov={self.markov!r}")
        if self.dims:
            options.append(f"dims={self.dims!r}")
        lines.append("reparam.decorrelate(model, " + ", ".join(["config", *options]) + ")")
        return "\n".join(lines)


def start_point(model: Any, args: tuple, kwargs: Mapping[str, Any],
                rng_seed: int = 0) -> dict[str, np.ndarray]:
    """Every latent site of ``model`` at its prior median (NumPyro's ``init_to_median``),
    model coordinates."""
    trace = _trace_at_start(model, args, kwargs, rng_seed)
    return {name: np.asarray(site["value"]) for name, site in _latent(trace).items()}


def suggest_config(model: Any, *args: Any, sequence: str | None = None,
                   **kwargs: Any) -> DecorrelationConfig:
    """The decorrelation configuration discovered from ``model`` (module docstring).

    Args:
        model: any NumPyro model with continuous latent sites.
        *args, **kwargs: the model's arguments (the data).
        sequence: the sequence axis, where no random walk declares one (an axis name).

    Raises:
        ValueError: for discrete latent sites, an unknown ``sequence`` axis, or a model where
            nothing is coupled (then say how to write the config).
    """
    args, kwargs = narrow_integers((args, kwargs))
    trace = _trace_at_start(model, args, kwargs)
    latent = _latent(trace)
    names, found = _site_axes(trace, latent)
    sequence = sequence if sequence is not None else found
    if sequence is not None and not any(sequence in n for n in names.values()):
        raise ValueError(f"sequence={sequence!r} is not an axis of any latent site; the axes "
                         f"are {sorted({d for n in names.values() for d in n})}.")
    coupled = _couplings(model, args, kwargs, latent)
    config, rotate = {}, {}
    order = list(latent)
    for k, child in enumerate(order):
        site = latent[child]
        if not is_real_support(site["fn"].support):
            continue
        earlier = [r for r in order[:k] if coupled[r][child]]
        parents = tuple(r for r in earlier if is_real_support(latent[r]["fn"].support))
        scaled = len(parents) < len(earlier) and prior_scale(site["fn"]) is not None
        if parents or sequence in names[child]:
            config[child] = Affine(parents=parents, decenter=scaled)
        for parent in parents:
            for axis in names[child]:
                if axis is not None and axis != sequence and not is_positional(axis) \
                        and axis not in names[parent]:
                    rotate[axis] = "helmert"
    if not config:
        raise ValueError(
            "suggest_config found no latent sites coupled with earlier ones in this model "
            f"(latent sites {order}), so there is nothing to decorrelate. Write the config "
            "yourself: reparam.decorrelate(model, {child: [earlier parent sites]})."
        )
    dims = {name: tuple(n) for name, n in names.items()
            if tuple(n) != axis_names(latent[name], {}) and (name in config or any(
                name in a.parents for a in config.values()))}
    markov = _markov(sequence, latent, names, bool(rotate))
    return DecorrelationConfig(config=config, rotate=rotate, sequence=sequence, markov=markov,
                               dims=dims)


def site_dims(model: Any, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """The axis names of the latent sites whose names differ from their plates' (module
    docstring, step 1), as ``decorrelate``'s ``dims``."""
    trace = _trace_at_start(model, args, kwargs)
    latent = _latent(trace, discrete=True)
    names, _ = _site_axes(trace, latent)
    return {n: tuple(a) for n, a in names.items() if tuple(a) != axis_names(latent[n], {})}


def _trace_at_start(model: Any, args: tuple, kwargs: Mapping[str, Any],
                    rng_seed: int = 0) -> dict:
    seeded = handlers.seed(model, rng_seed=rng_seed)
    return handlers.trace(handlers.substitute(seeded, substitute_fn=init_to_median(
        num_samples=15))).get_trace(*args, **kwargs)


def _latent(trace: Mapping[str, dict], discrete: bool = False) -> dict[str, dict]:
    """The continuous latent sites of ``trace``; discrete ones are refused (``discrete``:
    left out)."""
    latent = {name: site for name, site in trace.items()
              if site["type"] == "sample" and not site["is_observed"]}
    found = [n for n, s in latent.items() if s["fn"].support.is_discrete]
    if discrete:
        return {n: s for n, s in latent.items() if n not in found}
    if found:
        raise ValueError(f"Latent sites {found} are discrete; decorrelation and its "
                         "automatic configuration need continuous latent sites (marginalise "
                         "discrete ones, e.g. with numpyro's funsor enumeration, first).")
    return latent


def _plate_aliases(trace: Mapping[str, dict]) -> tuple[dict[str, str], dict[str, int]]:
    """Plate name -> the axis name it stands for, and axis name -> size (module docstring)."""
    sizes: dict[str, int] = {}
    meet: list[set[str]] = []
    for site in trace.values():
        frames = site.get("cond_indep_stack", ())
        meet.append({f.name for f in frames})
        for frame in frames:
            sizes.setdefault(frame.name, int(frame.size))
    alias: dict[str, str] = {}
    for name, size in sizes.items():
        alias[name] = next((axis for axis in dict.fromkeys(alias.values())
                            if sizes[axis] == size and not any(
                                name in m and any(alias.get(q) == axis for q in m)
                                for m in meet)), name)
    return alias, {a: sizes[a] for a in set(alias.values())}


def _is_random_walk(fn: Any) -> bool:
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        fn = fn.base_dist
    return isinstance(fn, dist.GaussianRandomWalk)


def _site_axes(trace: Mapping[str, dict],
               latent: Mapping[str, dict]) -> tuple[dict[str, list[str]], str | None]:
    """Each latent site's axis names and the sequence axis (module docstring, step 1)."""
    alias, sizes = _plate_aliases(trace)
    by_size: dict[int, list[str]] = {}
    for axis, size in sizes.items():
        by_size.setdefault(size, []).append(axis)
    names, sequence = {}, None
    for name, site in latent.items():
        axes = [alias.get(d, d) for d in axis_names(site, {})]
        shape = tuple(site["fn"].shape())
        for k, axis in enumerate(axes):
            if not is_positional(axis):
                continue
            candidates = [a for a in by_size.get(shape[k], []) if a not in axes]
            if _is_random_walk(site["fn"]) and k == len(axes) - 1:
                own = candidates[0] if len(candidates) == 1 else SEQUENCE_NAME
                axes[k] = sequence = sequence or own
            elif len(candidates) == 1:
                axes[k] = candidates[0]
        names[name] = axes
    return names, sequence


def _couplings(model: Any, args: tuple, kwargs: Mapping[str, Any],
               latent: Mapping[str, dict]) -> dict[str, dict[str, bool]]:
    """``coupled[r][s]``: whether the Hessian block of sites ``r`` and ``s`` is non-zero."""
    point = {k: s["value"] for k, s in latent.items()}
    with jax.enable_x64(True):
        point = {k: jnp.asarray(v, jnp.float64) for k, v in point.items()}
        unconstrained = unconstrain_fn(model, args, kwargs, point)
        flat, unravel = ravel_pytree(unconstrained)

        def potential(x):
            return potential_energy(model, args, kwargs, unravel(x))

        grad = jax.grad(potential)
        product = jax.jit(lambda v: jax.jvp(grad, (flat,), (v,))[1])
        rng = np.random.default_rng(0)
        blocks = {}
        for name in latent:
            probe = {k: jnp.zeros_like(v) for k, v in unconstrained.items()}
            probe[name] = jnp.asarray(rng.standard_normal(np.shape(unconstrained[name])))
            out = unravel(product(ravel_pytree(probe)[0]))
            blocks[name] = {k: float(jnp.linalg.norm(jnp.ravel(v))) for k, v in out.items()}
    diagonal = {k: blocks[k][k] for k in latent}
    return {r: {s: blocks[r][s] > COUPLING_TOL * np.sqrt(diagonal[r] * diagonal[s])
                and blocks[r][s] > 0 for s in latent} for r in latent}


def _markov(sequence: str | None, latent: Mapping[str, dict], names: Mapping[str, list[str]],
            rotated: bool) -> bool | Literal["contrasts"]:
    """Dense coupling along short sequences; Markov on the contrasts along long ones."""
    if sequence is None:
        return False
    length = max(int(np.shape(latent[n]["value"])[axes.index(sequence)])
                 for n, axes in names.items() if sequence in axes)
    return "contrasts" if rotated and length > DENSE_SEQUENCE else False
