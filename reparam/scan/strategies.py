"""Strategies of :func:`reparam.scan_reparam` and the probe of a ``scan`` body.

The strategies are plain frozen dataclasses (the config); :class:`Shifted` is the auxiliary
distribution of :class:`StepAffine`; :func:`probe_body` reads the sites of one step of a body
without computing anything, so the learnable quantities and the out-of-loop draws can be
created before the loop with the right shapes.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import Array
from numpyro import handlers
from numpyro.distributions import biject_to, constraints
from numpyro.distributions.batch_util import promote_batch_shape
from numpyro.distributions.util import sum_rightmost

from reparam.sites import is_real_support, unconstrain


@dataclass(frozen=True)
class Centered:
    """Leave the site as written (the default for sites not in the config)."""


@dataclass(frozen=True)
class NonCentered:
    """Draw the site's standard-normal noise for all steps before the loop."""


@dataclass(frozen=True)
class LearnableCentering:
    """Partial centring with a learnable ``c in [0, 1]`` created once, outside the loop.

    Attributes:
        init: starting value of ``c``.
        per_element: one ``c`` per element of a step's value (else one scalar per site).
    """

    init: float = 0.5
    per_element: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.init, bool) or not isinstance(self.init, numbers.Real):
            raise TypeError(f"LearnableCentering.init must be a number, got {self.init!r}.")
        if not 0.0 <= self.init <= 1.0:
            raise ValueError(f"LearnableCentering.init must be in [0, 1], got {self.init!r}.")


@dataclass(frozen=True)
class StepAffine:
    """Shift the site by learned multiples of parent sites (conditional affine decorrelation).

    Attributes:
        parents: names of sites sampled before the ``scan`` or earlier in the same step; each
            (unconstrained) value must broadcast to one step's value of the child.
        per_step: one coefficient row per step (else shared by all steps).
    """

    parents: tuple[str, ...] = ()
    per_step: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.parents, str):
            raise TypeError(
                f"StepAffine.parents must be a sequence of site names, got the string "
                f"{self.parents!r}; write StepAffine(({self.parents!r},))."
            )
        object.__setattr__(self, "parents", tuple(self.parents))


@dataclass(frozen=True)
class GaussianConditional:
    """Draw the site's whole path outside the loop in the whitened coordinates of its Gaussian
    conditional given the values before the loop (and the data): ``x = m + L^{-T} u`` with
    ``m, L`` recomputed in closed form at every evaluation (:mod:`reparam.scan.conditional`).

    Exact whitening for bodies linear-Gaussian in the configured sites; an exact (Jacobian
    included) reparameterization for any real-support site. Sites configured with it in one
    ``scan`` share one joint map. The map conditions on the data the body observes: for
    posterior predictive without them, pass the path (``Predictive(model, samples,
    condition_deterministic=True)`` with the site in ``samples``).
    """


Strategy = Centered | NonCentered | LearnableCentering | StepAffine | GaussianConditional
STRATEGY_TYPES = (Centered, NonCentered, LearnableCentering, StepAffine, GaussianConditional)
SHORTCUTS: dict[str, Strategy] = {
    "centered": Centered(),
    "noncentered": NonCentered(),
    "learnable": LearnableCentering(),
    "conditional": GaussianConditional(),
}
ScanConfig = Mapping[str, "Strategy | str"] | Callable[[str], "Strategy | str | None"]


def as_strategy(name: str, entry: Any) -> Strategy | None:
    """Normalises a config entry (a strategy, a shortcut string or ``None``).

    Raises:
        TypeError: for anything else.
    """
    if entry is None or isinstance(entry, STRATEGY_TYPES):
        return entry
    if isinstance(entry, str) and entry in SHORTCUTS:
        return SHORTCUTS[entry]
    raise TypeError(
        f"scan_reparam config entry for {name!r} must be one of {sorted(SHORTCUTS)} or a "
        f"Centered/NonCentered/LearnableCentering/StepAffine/GaussianConditional instance, "
        f"got {entry!r}."
    )


class Shifted(dist.Distribution):
    """``u = t^-1(x) + shift`` with ``x ~ base`` and ``t = biject_to(base.support)``.

    ``p(u) = p_base(t(u - shift)) |det dt/dy|`` at ``y = u - shift``: a unit-Jacobian shift of
    the base's unconstrained value (``t`` is the identity for real support).
    """

    arg_constraints = {"shift": constraints.real}
    pytree_data_fields = ("base", "shift")

    def __init__(self, base: dist.Distribution, shift: Array) -> None:
        self.base, self.shift = base, jnp.broadcast_to(shift, base.shape())
        super().__init__(base.batch_shape, base.event_shape)

    @property
    def support(self) -> constraints.Constraint:
        if self.event_dim == 0:
            return constraints.real
        return constraints.independent(constraints.real, self.event_dim)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        return unconstrain(self.base.sample(key, sample_shape), self.base.support) + self.shift

    def log_prob(self, value: Array) -> Array:
        y = value - self.shift
        if is_real_support(self.base.support):
            return self.base.log_prob(y)
        transform = biject_to(self.base.support)
        x = transform(y)
        log_det = transform.log_abs_det_jacobian(y, x)
        log_det = sum_rightmost(log_det, self.event_dim - transform.codomain.event_dim)
        return self.base.log_prob(x) + log_det

    def to_model(self, value: Array) -> Array:
        """The base's value (model coordinates) for an auxiliary value ``u``."""
        y = value - self.shift
        return y if is_real_support(self.base.support) else biject_to(self.base.support)(y)


@promote_batch_shape.register
def _promote_shifted(d: Shifted) -> Shifted:
    """Stacked by ``scan``: the shift carries the new leading axes; the base promotes itself."""
    new = copy.copy(d)
    new.base = promote_batch_shape(d.base)
    shape = jnp.shape(d.shift)
    new._batch_shape = shape[: len(shape) - d.event_dim]
    return new


@dataclass(frozen=True)
class SiteInfo:
    """What the probe run saw of one body site (shapes are those of a single step)."""

    name: str
    shape: tuple[int, ...]
    base: str
    real_support: bool
    loc_scale: bool
    observed: bool


@dataclass(frozen=True)
class BodyProbe:
    """Sample sites, plates and deterministic sites of one step of a ``scan`` body."""

    sites: dict[str, SiteInfo]
    plates: tuple[str, ...]
    deterministic: tuple[str, ...] = ()


def unwrap(fn: dist.Distribution) -> dist.Distribution:
    """The distribution under ``Independent`` / ``ExpandedDistribution`` wrappers."""
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn


def probe_body(f: Callable, init: Any, x0: Any) -> BodyProbe:
    """Sample sites and plates of one run of a ``scan`` body (abstract evaluation only)."""
    found: dict[str, SiteInfo] = {}
    plates: list[str] = []
    deterministic: list[str] = []

    def run(carry: Any, x: Any) -> int:
        with handlers.block():
            trace = handlers.trace(handlers.seed(f, rng_seed=0)).get_trace(carry, x)
        for name, site in trace.items():
            if site["type"] == "plate":
                plates.append(name)
            if site["type"] == "deterministic":
                deterministic.append(name)
            if site["type"] != "sample":
                continue
            fn, base = site["fn"], unwrap(site["fn"])
            found[name] = SiteInfo(
                name=name,
                shape=tuple(fn.shape()),
                base=type(base).__name__,
                real_support=is_real_support(fn.support),
                loc_scale=hasattr(base, "loc") and hasattr(base, "scale"),
                observed=bool(site["is_observed"]),
            )
        return 0

    jax.eval_shape(run, init, x0)
    return BodyProbe(sites=found, plates=tuple(plates), deterministic=tuple(deterministic))


def check_strategy(info: SiteInfo, strategy: Strategy) -> None:
    """Refuses a strategy that cannot apply to a site.

    Raises:
        ValueError: for an observed site, learnable centring of a site that is not a
            real-support loc-scale distribution, or a Gaussian conditional of a site without
            real support.
        NotImplementedError: for non-centring a site that is not ``Normal``.
    """
    if info.observed:
        raise ValueError(
            f"Site {info.name!r} in the scan body is observed; scan_reparam applies to latent "
            "sites only. Remove it from the config."
        )
    if isinstance(strategy, NonCentered) and info.base != "Normal":
        raise NotImplementedError(
            f"NonCentered draws standard-normal noise outside the loop and supports Normal "
            f"sites only; {info.name!r} is {info.base}. Use LearnableCentering (or write the "
            "transition with an explicit noise site)."
        )
    if isinstance(strategy, GaussianConditional) and not info.real_support:
        raise ValueError(
            f"GaussianConditional needs a real-support site; {info.name!r} is {info.base} with "
            "constrained support. Use StepAffine or leave the site centred."
        )
    if isinstance(strategy, LearnableCentering) and not (info.loc_scale and info.real_support):
        raise ValueError(
            f"LearnableCentering needs a real-support loc-scale distribution; {info.name!r} "
            f"is {info.base}. Use StepAffine or leave the site centred."
        )
