"""Model specification: which effects, which priors (pure data, validated, no JAX).

A specification describes the additive model for a 3-way array ``y`` with dims ``(i, j, t)``
(any names; ``t`` is the time dim):

    y[i,j,t] ~ Normal(mu + sum_e effect_e[dims_e], sigma[i,j]^2)

* :class:`GrandMean` ``mu ~ Normal(loc, scale)``;
* :class:`Shrinkage` over a subset of the non-time dims (or any 2 dims), elements
  ``iid Normal(0, s)`` with ``s ~ HalfNormal | HalfCauchy(prior_scale)``, or a horseshoe
  (``Normal(0, s * lambda_k)``, ``lambda_k ~ HalfCauchy(1)``);
* :class:`Temporal` over the time dim, one series (``by=None``) or one per element of another
  dim, with a random-walk, local-linear-trend or AR(1) prior whose innovation scale has a
  ``HalfNormal(prior_scale)`` prior;
* :class:`Noise`, one ``sigma`` or one per ``(i, j)`` series with a hierarchical prior.

The default specification (:func:`default_spec`) is the full model of the design notes with
effects ``mu, a, b, z, A, B, C``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

ScalePrior = Literal["half_normal", "half_cauchy", "horseshoe"]
TemporalKind = Literal["random_walk", "local_linear_trend", "ar1"]
SCALE_PRIORS = ("half_normal", "half_cauchy", "horseshoe")
TEMPORAL_KINDS = ("random_walk", "local_linear_trend", "ar1")
MIN_TIME_STEPS = {"random_walk": 2, "local_linear_trend": 3, "ar1": 2}


def _check_positive(owner: str, label: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {label} must be a number, got {value!r}.")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {label} must be finite and > 0, got {value!r}.")


@dataclass(frozen=True)
class GrandMean:
    """``mu ~ Normal(loc, scale)``."""

    name: str = "mu"
    loc: float = 0.0
    scale: float = 100.0

    def __post_init__(self) -> None:
        if not isinstance(self.loc, (int, float)) or not math.isfinite(self.loc):
            raise ValueError(f"GrandMean {self.name!r}: loc must be a finite number.")
        _check_positive(f"GrandMean {self.name!r}", "scale", self.scale)

    @property
    def dims(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class Shrinkage:
    """Shrinkage effect over ``dims``: ``x ~ Normal(0, s)``, ``s ~ prior(prior_scale)``."""

    name: str
    dims: tuple[str, ...]
    prior: ScalePrior = "half_cauchy"
    prior_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        if self.prior not in SCALE_PRIORS:
            raise ValueError(
                f"Shrinkage {self.name!r}: unknown prior {self.prior!r}; use one of "
                f"{SCALE_PRIORS}."
            )
        _check_positive(f"Shrinkage {self.name!r}", "prior_scale", self.prior_scale)
        if not 1 <= len(self.dims) <= 2 or len(set(self.dims)) != len(self.dims):
            raise ValueError(
                f"Shrinkage {self.name!r}: dims must name 1 or 2 distinct dims, got "
                f"{self.dims}. An effect over all three dims is not identifiable against "
                "the noise."
            )

    @property
    def scale_site(self) -> str:
        return f"s_{self.name}"


@dataclass(frozen=True)
class Temporal:
    """Temporal effect over the time dim, one series per element of ``by`` (or one series).

    ``random_walk``: ``x_0 ~ N(0, s)``, ``x_t = x_{t-1} + N(0, s)``.
    ``ar1``: ``x_0 ~ N(0, s / sqrt(1 - phi^2))``, ``x_t = phi x_{t-1} + N(0, s)``,
    ``phi ~ Uniform(-1, 1)``.
    ``local_linear_trend``: slope ``d`` is a random walk with scale ``s_slope``;
    ``x_0 ~ N(0, s)``, ``x_t = x_{t-1} + d_{t-1} + N(0, s)``.
    Innovation scales have ``HalfNormal(prior_scale)`` priors.
    """

    name: str
    by: str | None = None
    kind: TemporalKind = "random_walk"
    prior_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TEMPORAL_KINDS:
            raise ValueError(
                f"Temporal {self.name!r}: unknown kind {self.kind!r}; use one of "
                f"{TEMPORAL_KINDS}."
            )
        _check_positive(f"Temporal {self.name!r}", "prior_scale", self.prior_scale)

    @property
    def scale_site(self) -> str:
        return f"s_{self.name}"


@dataclass(frozen=True)
class Noise:
    """Observation noise: one ``sigma ~ HalfNormal(prior_scale)``, or per ``(i, j)`` series
    ``log sigma[i,j] ~ Normal(log sigma, s_sigma)`` with ``s_sigma ~ HalfNormal(0.5)``."""

    per_series: bool = False
    prior_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("Noise", "prior_scale", self.prior_scale)


Effect = GrandMean | Shrinkage | Temporal


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
        object.__setattr__(self, "dims", tuple(self.dims))
        object.__setattr__(self, "effects", tuple(self.effects))
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


def validate_spec(spec: ModelSpec) -> None:
    """Checks names, dims and structure of a specification.

    Raises:
        ValueError: naming the problem and the fix.
        TypeError: for effects of the wrong type.
    """
    if len(spec.dims) != 3 or len(set(spec.dims)) != 3:
        raise ValueError(f"ModelSpec.dims must be three distinct names, got {spec.dims}.")
    if spec.time not in spec.dims:
        raise ValueError(f"time dim {spec.time!r} is not one of the data dims {spec.dims}.")
    names: set[str] = set()
    for effect in spec.effects:
        if not isinstance(effect, (GrandMean, Shrinkage, Temporal)):
            raise TypeError(
                f"Effects must be GrandMean, Shrinkage or Temporal, got {type(effect).__name__}."
            )
        if not isinstance(effect.name, str) or not effect.name.isidentifier():
            raise ValueError(f"Effect name {effect.name!r} must be a valid identifier.")
        if effect.name in names:
            raise ValueError(f"Two effects are named {effect.name!r}; effect names must be unique.")
        names.add(effect.name)
        if isinstance(effect, Shrinkage):
            unknown = [d for d in effect.dims if d not in spec.dims]
            if unknown:
                raise ValueError(
                    f"Effect {effect.name!r} names dims {unknown} that the data lacks; the "
                    f"data's dims are {spec.dims}."
                )
        if isinstance(effect, Temporal) and effect.by is not None:
            if effect.by not in spec.dims or effect.by == spec.time:
                raise ValueError(
                    f"Temporal effect {effect.name!r}: by={effect.by!r} must be one of the "
                    f"non-time dims {tuple(d for d in spec.dims if d != spec.time)}."
                )
    if sum(isinstance(e, GrandMean) for e in spec.effects) > 1:
        raise ValueError("A specification can hold at most one GrandMean.")
    reserved = {"sigma", "s_sigma", "sigma_series", "y"}
    clash = reserved & names
    if clash:
        raise ValueError(f"Effect names {sorted(clash)} are reserved for the noise and data.")


def default_spec(dims: Sequence[str], time: str | None = None) -> ModelSpec:
    """The full model ``mu + a[i] + b[j] + z[t] + A[i,t] + B[j,t] + C[i,j]``.

    Priors (the design notes' benchmark B2): ``mu ~ N(0, 100)``; ``s_a, s_b, s_C ~
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
        raise ValueError(f"time={time!r} is not one of the dims {dims}.")
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
