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

The default specification (:func:`default_spec`) is the full model of the design notes with
effects ``mu, a, b, z, A, B, C``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ScalePrior = Literal["half_normal", "half_cauchy", "horseshoe"]
TemporalKind = Literal["random_walk", "local_linear_trend", "ar1"]
SCALE_PRIORS = ("half_normal", "half_cauchy", "horseshoe")
TEMPORAL_KINDS = ("random_walk", "local_linear_trend", "ar1")
MIN_TIME_STEPS = {"random_walk": 2, "local_linear_trend": 3, "ar1": 2}


# Suffixes and infixes of names the package generates (decorrelation params, guide params).
RESERVED_SUFFIXES = (
    "_decorrelated", "_within", "_centering", "_scale_ref", "_decenter_at",  # reparam.decorrelate
    "_noise", "_decentered", "_centered",  # reparam.scan
    "_auto_loc", "_auto_scale", "_auto_scale_tril",  # autoguides
)
NOISE_SITES = ("sigma", "s_sigma", "sigma_series", "log_sigma_series", "df", "s_sigma_time",
               "sigma_time_steps", "log_sigma_time")
RESERVED_NAMES = (*NOISE_SITES, "y")
RESERVED_DIMS = ("chain", "draw", "quantile", "sample")


def check_dim_names(dims: Sequence[object]) -> None:
    """Requires string dim names that the results do not use for their own dims or sites.

    Raises:
        TypeError: for a name that is not a string.
        ValueError: for a reserved name (``chain, draw, quantile, sample`` or a noise site).
    """
    if not all(isinstance(d, str) for d in dims):
        raise TypeError(
            f"Dim names must be strings, got {tuple(dims)}; rename them (e.g. "
            "data.rename({0: 'region'}) or dims=('region', 'product', 'year'))."
        )
    reserved = RESERVED_DIMS + NOISE_SITES
    clash = [d for d in dims if d in reserved]
    if clash:
        raise ValueError(
            f"Dim names {clash} are reserved for posterior draws and noise sites {reserved}; "
            "rename the dims (e.g. data.rename(...))."
        )


def _check_real(owner: str, label: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {label} must be a real number, got {value!r}; pass e.g. 1.0.")
    if not math.isfinite(float(value)):
        raise ValueError(
            f"{owner}: {label} must be finite, got {value!r}; pass a finite number (e.g. 1.0)."
        )
    return float(value)


def _check_positive(owner: str, label: str, value: object) -> None:
    if _check_real(owner, label, value) <= 0:
        raise ValueError(
            f"{owner}: {label} must be > 0, got {value!r}; pass a positive scale (e.g. 1.0)."
        )


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a string, got {name!r}.")
    if not name.isidentifier():
        raise ValueError(
            f"{kind} name {name!r} must be a valid identifier (letters, digits, underscores)."
        )


@dataclass(frozen=True)
class GrandMean:
    """``mu ~ Normal(loc, scale)``."""

    name: str = "mu"
    loc: float = 0.0
    scale: float = 100.0

    def __post_init__(self) -> None:
        _check_name("GrandMean", self.name)
        _check_real(f"GrandMean {self.name!r}", "loc", self.loc)
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
        _check_name("Shrinkage", self.name)
        if isinstance(self.dims, str) or not isinstance(self.dims, Sequence):
            raise TypeError(
                f"Shrinkage {self.name!r}: dims must be a tuple of dim names, e.g. "
                f"({self.dims!r},), got {self.dims!r}."
            )
        object.__setattr__(self, "dims", tuple(self.dims))
        if not all(isinstance(d, str) for d in self.dims):
            raise TypeError(f"Shrinkage {self.name!r}: dim names must be strings, got {self.dims}.")
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
                "the noise: drop it (the noise covers cell-level variation) or give it one or "
                "two dims."
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

    ``transition``: a user-written scan prior (see :mod:`tensorfact.temporal`), sampled with
    NumPyro's contrib ``scan`` instead of the vectorised built-in; ``kind`` and
    ``prior_scale`` are then unused (the transition samples its own hyperparameters).
    """

    name: str
    by: str | None = None
    kind: TemporalKind = "random_walk"
    prior_scale: float = 1.0
    transition: Any = None

    def __post_init__(self) -> None:
        _check_name("Temporal", self.name)
        if self.by is not None and not isinstance(self.by, str):
            raise TypeError(
                f"Temporal {self.name!r}: by must be a dim name or None, got {self.by!r}."
            )
        if self.transition is not None and not callable(self.transition):
            raise TypeError(
                f"Temporal {self.name!r}: transition must be a callable "
                f"prior(name, rows) -> (init_state, step), got {self.transition!r}."
            )
        if self.kind not in TEMPORAL_KINDS:
            raise ValueError(
                f"Temporal {self.name!r}: unknown kind {self.kind!r}; use one of "
                f"{TEMPORAL_KINDS}."
            )
        _check_positive(f"Temporal {self.name!r}", "prior_scale", self.prior_scale)

    @property
    def scale_site(self) -> str:
        return f"s_{self.name}"


NoiseFamily = Literal["normal", "student_t"]
NOISE_FAMILIES = ("normal", "student_t")
DF_PRIOR = (2.0, 0.1)  # Gamma(shape, rate) prior of a learned df: mean 20, mode 10
TIME_NOISE_PRIOR_SCALE = 0.2  # s_sigma_time ~ HalfNormal(0.2): log-noise change per time step


@dataclass(frozen=True)
class Noise:
    """Observation noise: its scale and its family.

    Scale: one ``sigma ~ HalfNormal(prior_scale)``, or per ``(i, j)`` series
    ``log sigma[i,j] ~ Normal(log sigma, s_sigma)`` with ``s_sigma ~ HalfNormal(0.5)``.
    With ``time_by`` (a non-time dim, e.g. ``"disease"``) the scale also changes over time,
    one factor per element ``k`` of that dim and time step: ``sigma[i,j,t] = sigma[i,j]
    exp(w[k,t])`` with ``w[k,:]`` a random walk (non-centred: ``w = s_sigma_time cumsum(e)``,
    ``e ~ N(0, 1)`` the site ``sigma_time_steps``, ``s_sigma_time ~ HalfNormal(0.2)``) centred
    to mean 0 over time (deterministic site ``log_sigma_time``), so ``sigma[i,j]`` stays the
    series' typical scale. Use it when the noise shrinks or grows with the level over time (on
    the US diseases data the residuals of low-incidence years are half as large).

    Family: ``"normal"`` (``y ~ Normal(loc, sigma)``) or ``"student_t"``
    (``y ~ StudentT(df, loc, sigma)``, heavy-tailed: ``sigma`` is then the t scale, the sd is
    ``sigma sqrt(df / (df - 2))`` for ``df > 2``). For ``"student_t"``, ``df`` is a fixed number
    of degrees of freedom (``> 0``), or ``None`` to learn it as the site ``df`` with a
    ``Gamma(2, 0.1)`` prior (Juarez & Steel 2010: mean 20, mode 10). ``df`` must be ``None``
    for ``"normal"``.
    """

    per_series: bool = False
    prior_scale: float = 1.0
    family: NoiseFamily = "normal"
    df: float | None = None
    time_by: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.per_series, bool):
            raise TypeError(f"Noise: per_series must be True or False, got {self.per_series!r}.")
        _check_positive("Noise", "prior_scale", self.prior_scale)
        if self.time_by is not None and not isinstance(self.time_by, str):
            raise TypeError(
                f"Noise: time_by must be a dim name or None, got {self.time_by!r}; pass e.g. "
                "time_by='disease'."
            )
        if not isinstance(self.family, str) or self.family not in NOISE_FAMILIES:
            raise ValueError(
                f"Noise: unknown family {self.family!r}; use one of {NOISE_FAMILIES}."
            )
        if self.df is None:
            return
        if self.family == "normal":
            raise ValueError(
                f"Noise: df={self.df!r} is only used with family='student_t'; drop df or pass "
                "family='student_t'."
            )
        _check_positive("Noise", "df", self.df)
        object.__setattr__(self, "df", float(self.df))

    @property
    def learns_df(self) -> bool:
        """Whether the Student-t degrees of freedom are a latent site ``df``."""
        return self.family == "student_t" and self.df is None


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
    if bad or "_shift_" in name:
        raise ValueError(
            f"Effect name {name!r} uses {bad[0] if bad else '_shift_'!r}, which the "
            "decorrelation and the guide use for their own sites; choose another name."
        )


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
