"""Model specification: which effects, which priors (pure data, validated, no JAX).

A specification describes the additive model for a 3-way array ``y`` with dims ``(i, j, t)``
(any names; ``t`` is the time dim):

    y[i,j,t] ~ Normal(mu + sum_e effect_e[dims_e], sigma[i,j]^2)   (or Student-t, see Noise)

* :class:`GrandMean` ``mu ~ Normal(loc, scale)``;
* :class:`Shrinkage` over a subset of the non-time dims (or any 2 dims), elements
  ``iid Normal(0, s)`` with ``s ~ HalfNormal | HalfCauchy(prior_scale)``, or a horseshoe
  (``Normal(0, s * lambda_k)``, ``lambda_k ~ HalfCauchy(1)``);
* :class:`Temporal` over the time dim, one series (``by=None``) or one per element of another
  dim, with a random-walk, local-linear-trend or AR(1) prior whose innovation scale has a
  ``HalfNormal(prior_scale)`` prior;
* :class:`Noise`, one ``sigma`` or one per ``(i, j)`` series with a hierarchical prior;
  Normal or Student-t observations (``df`` fixed or learned).

The default specification (:func:`default_spec`) is the full model of ``docs/design.md`` with
effects ``mu, a, b, z, A, B, C``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tensorfact.effects import (  # noqa: F401 - re-exported: the spec's vocabulary
    DF_PRIOR,
    MIN_TIME_STEPS,
    NOISE_FAMILIES,
    SCALE_PRIORS,
    TEMPORAL_KINDS,
    TIME_NOISE_PRIOR_SCALE,
    Effect,
    GrandMean,
    Noise,
    NoiseFamily,
    ScalePrior,
    Shrinkage,
    Temporal,
    TemporalKind,
    _check_name,
    check_dim_names,
)
from tensorfact.names import RESERVED_INFIXES, RESERVED_NAMES, RESERVED_SUFFIXES


@dataclass(frozen=True)
class ModelSpec:
    """A full model: effects in sampling order plus noise, for data with ``dims``.

    Attributes:
        dims: the data's three dim names, in the data's order.
        time: the time dim (one of ``dims``).
        effects: location effects in the order they are sampled (parents come first).
        noise: the noise model.
    """

    dims: tuple[str, str, str]
    time: str
    effects: tuple[Effect, ...]
    noise: Noise = field(default_factory=Noise)

    def __post_init__(self) -> None:
        for label in ("dims", "effects"):
            value = getattr(self, label)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise TypeError(f"ModelSpec.{label} must be a tuple, got {value!r}.")
            object.__setattr__(self, label, tuple(value))
        validate_spec(self)

    @property
    def other_dims(self) -> tuple[str, str]:
        """The two non-time dims, in data order."""
        return tuple(d for d in self.dims if d != self.time)  # type: ignore[return-value]

    def effect_dims(self, effect: Effect) -> tuple[str, ...]:
        """Dims of an effect's value, in the order of its array axes."""
        if isinstance(effect, Temporal):
            return (self.time,) if effect.by is None else (effect.by, self.time)
        if isinstance(effect, Shrinkage):
            return tuple(d for d in self.dims if d in effect.dims)
        return ()

    def effect(self, name: str) -> Effect:
        for effect in self.effects:
            if effect.name == name:
                return effect
        raise KeyError(name)

    @property
    def effect_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.effects)


def generated_names(effect: Effect) -> tuple[str, ...]:
    """Every site name the model creates for ``effect`` (its location and hyperparameters; for
    a temporal effect with a ``transition`` only its location, the transition names the rest)."""
    names: tuple[str, ...] = (effect.name,)
    if isinstance(effect, Shrinkage):
        names += (effect.scale_site,)
        if effect.prior == "horseshoe":
            names += (f"lambda_{effect.name}",)
    elif isinstance(effect, Temporal) and effect.transition is None:
        names += (effect.scale_site,)
        if effect.kind == "ar1":
            names += (f"phi_{effect.name}",)
        if effect.kind == "local_linear_trend":
            names += (f"{effect.name}_slope", f"{effect.scale_site}_slope")
    return names


def site_dims(spec: ModelSpec) -> dict[str, tuple[str, ...]]:
    """Dims of every named site with dims that the model of ``spec`` samples or records:
    the location sites (a trend's ``f"{name}_slope"`` too), a horseshoe's local scales and
    the noise sites (scalar sites are left out)."""
    dims: dict[str, tuple[str, ...]] = {}
    for effect in spec.effects:
        own = spec.effect_dims(effect)
        if isinstance(effect, Temporal) and effect.transition is None:
            if effect.kind == "local_linear_trend":
                dims[f"{effect.name}_slope"] = own
        dims[effect.name] = own
        if isinstance(effect, Shrinkage) and effect.prior == "horseshoe":
            dims[f"lambda_{effect.name}"] = own
    if spec.noise.per_series:
        dims["sigma_series"] = dims["log_sigma_series"] = spec.other_dims
    if spec.noise.time_by is not None:
        dims["log_sigma_time"] = dims["sigma_time_steps"] = (spec.noise.time_by, spec.time)
    return dims


def validate_spec(spec: ModelSpec) -> None:
    """Checks names, dims and structure of a specification.

    Checked: three distinct string dims (none of them named like the result dims
    ``chain, draw, quantile, sample``), a time dim among them, at least one effect, effect
    types, unique effect names whose generated site names (``s_<name>``, ``phi_<name>``, ...)
    collide neither with each other, nor with dim names, nor with the noise sites, nor with the
    names the decorrelation and the guide create; effect dims that the data have; at most one
    grand mean.

    Raises:
        ValueError: naming the problem and the fix.
        TypeError: for effects or names of the wrong type.
    """
    if len(spec.dims) != 3 or len(set(spec.dims)) != 3:
        raise ValueError(f"ModelSpec.dims must be three distinct names, got {spec.dims}.")
    check_dim_names(spec.dims)
    if spec.time not in spec.dims:
        raise ValueError(
            f"time dim {spec.time!r} is not one of the data dims {spec.dims}; pass one of them."
        )
    if not spec.effects:
        raise ValueError("A specification needs at least one effect (e.g. GrandMean()).")
    owner: dict[str, str] = {}
    for effect in spec.effects:
        if not isinstance(effect, (GrandMean, Shrinkage, Temporal)):
            raise TypeError(
                f"Effects must be GrandMean, Shrinkage or Temporal, got {type(effect).__name__} "
                f"({effect!r}); build them with e.g. GrandMean() or Shrinkage('a', (dim,))."
            )
        _check_name("Effect", effect.name)
        if effect.name in owner and owner[effect.name] == effect.name:
            raise ValueError(
                f"Two effects are named {effect.name!r}; effect names must be unique, rename "
                "one of them."
            )
        _check_reserved(effect.name)
        for site in generated_names(effect):
            if site in owner:
                raise ValueError(
                    f"Effect {effect.name!r} creates the site {site!r}, which effect "
                    f"{owner[site]!r} also creates; rename one of them."
                )
            if site in spec.dims or site in RESERVED_NAMES:
                raise ValueError(
                    f"Effect {effect.name!r} creates the site {site!r}, a name reserved for "
                    f"{'a dim' if site in spec.dims else 'the noise or the data'}; rename it."
                )
            owner[site] = effect.name
        if isinstance(effect, Shrinkage):
            unknown = [d for d in effect.dims if d not in spec.dims]
            if unknown:
                raise ValueError(
                    f"Effect {effect.name!r} names dims {unknown} that the data lack; the "
                    f"data's dims are {spec.dims}: use those names."
                )
        if isinstance(effect, Temporal) and effect.by is not None:
            if effect.by not in spec.dims or effect.by == spec.time:
                raise ValueError(
                    f"Temporal effect {effect.name!r}: by={effect.by!r} must be one of the "
                    f"non-time dims {tuple(d for d in spec.dims if d != spec.time)}, or None "
                    "for one series shared by all."
                )
    if sum(isinstance(e, GrandMean) for e in spec.effects) > 1:
        raise ValueError("A specification can hold at most one GrandMean; remove the others.")
    if not isinstance(spec.noise, Noise):
        raise TypeError(f"ModelSpec.noise must be a Noise, got {type(spec.noise).__name__}.")
    by = spec.noise.time_by
    if by is not None and (by not in spec.dims or by == spec.time):
        raise ValueError(
            f"Noise: time_by={by!r} must be one of the non-time dims "
            f"{tuple(d for d in spec.dims if d != spec.time)}; pass one of them or None."
        )


def _check_reserved(name: str) -> None:
    bad = [s for s in RESERVED_SUFFIXES if name.endswith(s)]
    bad += [s for s in RESERVED_INFIXES if s in name]
    if bad:
        raise ValueError(
            f"Effect name {name!r} uses {bad[0]!r}, which the "
            "decorrelation and the guide use for their own sites; choose another name."
        )


def default_spec(dims: Sequence[str], time: str | None = None) -> ModelSpec:
    """The full model ``mu + a[i] + b[j] + z[t] + A[i,t] + B[j,t] + C[i,j]``.

    Priors (benchmark B2 of ``docs/design.md``): ``mu ~ N(0, 100)``; ``s_a, s_b, s_C ~
    HalfCauchy(1)``; ``s_z, s_A, s_B, sigma ~ HalfNormal(1)``; random walks for ``z, A, B``.

    Args:
        dims: the data's three dim names, in order.
        time: the time dim; defaults to the last dim.
    """
    dims = tuple(dims)
    if len(dims) != 3:
        raise ValueError(f"default_spec needs three dims, got {dims}.")
    time = dims[-1] if time is None else time
    if time not in dims:
        raise ValueError(f"time={time!r} is not one of the dims {dims}; pass one of them.")
    i, j = (d for d in dims if d != time)
    effects: tuple[Effect, ...] = (
        GrandMean("mu"),
        Shrinkage("a", (i,)),
        Shrinkage("b", (j,)),
        Temporal("z"),
        Temporal("A", by=i),
        Temporal("B", by=j),
        Shrinkage("C", (i, j)),
    )
    return ModelSpec(dims=dims, time=time, effects=effects)


def with_effects(spec: ModelSpec, replace: Mapping[str, Effect]) -> ModelSpec:
    """Returns ``spec`` with named effects replaced (e.g. another prior for ``"a"``)."""
    unknown = [n for n in replace if n not in spec.effect_names]
    if unknown:
        raise ValueError(f"with_effects: unknown effects {unknown}; have {spec.effect_names}.")
    effects = tuple(replace.get(e.name, e) for e in spec.effects)
    return ModelSpec(dims=spec.dims, time=spec.time, effects=effects, noise=spec.noise)
