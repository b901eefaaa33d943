"""The building blocks of a specification: effects (:class:`GrandMean`, :class:`Shrinkage`,
:class:`Temporal`) and the noise model (:class:`Noise`), each validated on construction
(pure data, no JAX); :mod:`tensorfact.spec` composes them into a
:class:`~tensorfact.spec.ModelSpec`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from tensorfact.names import NOISE_SITES, RESERVED_DIMS

ScalePrior = Literal["half_normal", "half_cauchy", "horseshoe"]
TemporalKind = Literal["random_walk", "local_linear_trend", "ar1"]
SCALE_PRIORS: tuple[str, ...] = get_args(ScalePrior)
TEMPORAL_KINDS: tuple[str, ...] = get_args(TemporalKind)
MIN_TIME_STEPS = {"random_walk": 2, "local_linear_trend": 3, "ar1": 2}


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

    ``transition``: a user-written scan prior (see :mod:`tensorfact.model.temporal`), sampled with
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
NOISE_FAMILIES: tuple[str, ...] = get_args(NoiseFamily)
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
