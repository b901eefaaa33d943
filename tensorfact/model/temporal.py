"""Temporal effects written as transition functions, run with NumPyro's contrib ``scan``.

A *scan prior* is a callable ``prior(name, rows) -> (init_state, step)``. It is called once per
model run, outside the loop: sample the hyperparameters shared by all steps there and close
over them in the step (a site sampled inside the body is a new draw per step, and a
``numpyro.param`` cannot live there). ``step`` is the transition

    step(state, t) -> (new_state, value_t)

with ``numpyro.sample`` statements inside; ``t`` is the step index ``0..T-1``. For example::

    def damped_walk(name, rows):
        s = numpyro.sample(f"s_{name}", dist.HalfNormal(1.0))
        def step(previous, t):
            x = numpyro.sample(f"{name}_t", dist.Normal(0.9 * previous, s))
            return x, x
        return jnp.zeros(rows), step

    Temporal("A", by="region", transition=damped_walk)

tensorfact runs it
with ``numpyro.contrib.control_flow.scan`` (draws differ across steps; ``Predictive``, SVI and
NUTS work) and records the effect as the deterministic site ``name`` with axes ``(*rows, T)``.
Per-step sites are stacked with time first. With ``by=`` the state holds one element per
series (``rows``) and the step's sites are batched over them *without* a plate: NumPyro cannot
run ``scan`` under a plate, and its autoguides fail (``KeyError``) on a plate inside the body.

Scan forms of the built-in priors (:func:`random_walk`, :func:`ar1`,
:func:`local_linear_trend`; :func:`scan_form` converts a built-in :class:`Temporal`) use the
built-ins' hyperparameter names and give the same log density for the same values; their
per-step sites are ``f"{name}_t"`` (and ``f"{name}_slope_t"``), with ``x_{-1} = d_{-1} = 0``:

* random walk: ``x_t ~ N(x_{t-1}, s)``;
* AR(1): ``x_t ~ N(phi x_{t-1}, s_t)``, ``s_0 = s / sqrt(1 - phi^2)``, ``s_t = s`` for ``t > 0``;
* local linear trend: ``d_t ~ N(d_{t-1}, s_slope)``, ``x_t ~ N(x_{t-1} + d_{t-1}, s)``.

Copy one of them and edit the step to customise. A :class:`ScanPrior` can also carry a
:func:`reparam.scan_reparam` config for its per-step sites, e.g.
``random_walk().with_reparam({"z_t": "learnable"})`` (a :class:`reparam.StepAffine` parent must
be sampled in the factory or earlier in the step). ``tensorfact.fit`` trains a learnable
centring with the guide; its SVI start integrates the per-step sites out (see
:func:`step_sites`). The model's own decorrelation does not reach sites inside a scan body.
``"conditional"`` (:class:`reparam.scan.GaussianConditional`) whitens a path by its Gaussian
conditional given the observations *inside* the body; tensorfact's likelihood is outside the
transition, so there it whitens by the transition's prior only (exact, but no posterior
whitening).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import Array
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.infer.initialization import init_to_median

from reparam.scan.handler import NOISE_SUFFIX, WHITENED_SUFFIX, ScanConfig, scan_reparam
from reparam.scan.strategies import probe_body
from tensorfact.spec import Temporal

Step = Callable[[Any, Array], tuple[Any, Array]]
Factory = Callable[[str, tuple[int, ...]], tuple[Any, Step]]


@dataclass(frozen=True)
class ScanPrior:
    """A temporal prior given as a transition, plus an optional scan reparameterization.

    Attributes:
        build: ``build(name, rows) -> (init_state, step)`` (see the module docstring).
        reparam: :func:`reparam.scan_reparam` config for sites inside ``step``.
    """

    build: Factory
    reparam: ScanConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.reparam, Mapping):  # frozen and hashable, like the spec holding it
            object.__setattr__(self, "reparam", tuple(sorted(self.reparam.items())))

    @property
    def config(self) -> ScanConfig:
        """The scan reparameterization config (``{}`` when none)."""
        if self.reparam is None:
            return {}
        return self.reparam if callable(self.reparam) else dict(self.reparam)

    def __call__(self, name: str, rows: tuple[int, ...]) -> tuple[Any, Step]:
        return self.build(name, rows)

    def with_reparam(self, config: ScanConfig | None) -> ScanPrior:
        """This prior with the per-step sites reparameterized by ``config``."""
        return dataclasses.replace(self, reparam=config)


def step_site(name: str) -> str:
    """Name of the per-step site of a built-in scan form (``f"{name}_t"``)."""
    return f"{name}_t"


def random_walk(prior_scale: float = 1.0) -> ScanPrior:
    """Scan form of the random walk: ``s ~ HalfNormal(prior_scale)``, ``x_t ~ N(x_{t-1}, s)``."""

    def build(name: str, rows: tuple[int, ...]) -> tuple[Any, Step]:
        scale = numpyro.sample(f"s_{name}", dist.HalfNormal(prior_scale))

        def step(previous: Array, t: Array) -> tuple[Array, Array]:
            value = numpyro.sample(step_site(name), dist.Normal(previous, scale))
            return value, value

        return jnp.zeros(rows), step

    return ScanPrior(build)


def ar1(prior_scale: float = 1.0) -> ScanPrior:
    """Scan form of the stationary AR(1): ``phi ~ Uniform(-1, 1)``, ``s ~ HalfNormal``,
    ``x_0 ~ N(0, s / sqrt(1 - phi^2))``, ``x_t ~ N(phi x_{t-1}, s)``."""

    def build(name: str, rows: tuple[int, ...]) -> tuple[Any, Step]:
        scale = numpyro.sample(f"s_{name}", dist.HalfNormal(prior_scale))
        phi = numpyro.sample(f"phi_{name}", dist.Uniform(-1.0, 1.0))
        stationary = scale / jnp.sqrt(1 - phi**2)

        def step(previous: Array, t: Array) -> tuple[Array, Array]:
            step_scale = jnp.where(t == 0, stationary, scale)
            value = numpyro.sample(step_site(name), dist.Normal(phi * previous, step_scale))
            return value, value

        return jnp.zeros(rows), step

    return ScanPrior(build)


def local_linear_trend(prior_scale: float = 1.0) -> ScanPrior:
    """Scan form of the local linear trend: slope ``d_t ~ N(d_{t-1}, s_slope)``, level
    ``x_t ~ N(x_{t-1} + d_{t-1}, s)``, both scales ``HalfNormal(prior_scale)``."""

    def build(name: str, rows: tuple[int, ...]) -> tuple[Any, Step]:
        scale = numpyro.sample(f"s_{name}", dist.HalfNormal(prior_scale))
        slope_scale = numpyro.sample(f"s_{name}_slope", dist.HalfNormal(prior_scale))

        def step(state: tuple[Array, Array], t: Array) -> tuple[tuple[Array, Array], Array]:
            level, slope = state
            new_slope = numpyro.sample(f"{name}_slope_t", dist.Normal(slope, slope_scale))
            value = numpyro.sample(step_site(name), dist.Normal(level + slope, scale))
            return (value, new_slope), value

        return (jnp.zeros(rows), jnp.zeros(rows)), step

    return ScanPrior(build)


BUILT_IN: dict[str, Callable[[float], ScanPrior]] = {
    "random_walk": random_walk,
    "ar1": ar1,
    "local_linear_trend": local_linear_trend,
}


def scan_form(effect: Temporal, reparam: ScanConfig | None = None) -> Temporal:
    """The same built-in temporal effect, sampled as a scan transition.

    Args:
        effect: a :class:`Temporal` without a transition.
        reparam: optional scan reparameterization of its per-step sites.
    """
    if effect.transition is not None:
        raise ValueError(f"Temporal {effect.name!r} already has a transition.")
    return dataclasses.replace(
        effect, transition=BUILT_IN[effect.kind](effect.prior_scale).with_reparam(reparam)
    )


def builtin_to_scan_values(effect: Temporal, values: Mapping[str, Array]) -> dict[str, Array]:
    """Maps a built-in effect's site values (axes ``(*rows, T)``) to its scan form's sites
    (time first); hyperparameters keep their names."""
    out = {}
    pairs = {effect.name: step_site(effect.name), f"{effect.name}_slope": f"{effect.name}_slope_t"}
    for key, value in values.items():
        out[pairs.get(key, key)] = jnp.moveaxis(value, -1, 0) if key in pairs else value
    return out


def sample_scan_effect(
    name: str,
    prior: ScanPrior | Factory,
    rows: tuple[int, ...],
    num_steps: int,
) -> Array:
    """Samples a temporal effect from a scan prior and records it as the site ``name``.

    Args:
        name: the effect's name.
        prior: a :class:`ScanPrior` or a bare ``build(name, rows)`` callable.
        rows: the series' shape (``()`` for one series).
        num_steps: number of time steps ``T``.

    Returns:
        The effect, shape ``(*rows, T)``.

    Raises:
        TypeError: if the prior is not callable or does not return ``(init_state, step)``.
        ValueError: if the step's values do not have shape ``rows`` (or broadcast to it), or
            the step uses a plate.
    """
    if not isinstance(prior, ScanPrior):
        if not callable(prior):
            raise TypeError(f"Temporal {name!r}: transition must be callable, got {prior!r}.")
        prior = ScanPrior(prior)
    with scan_reparam(None, prior.config):  # parents sampled in the factory are visible
        built = prior(name, rows)
        if not (isinstance(built, tuple) and len(built) == 2 and callable(built[1])):
            raise TypeError(
                f"Temporal {name!r}: the transition must return (init_state, step) with "
                f"step(state, t) -> (new_state, value), got {built!r}."
            )
        init, step = built
        check_no_plates(name, step, init)
        _, values = scan(step, init, jnp.arange(num_steps))
    values = jnp.asarray(values)
    if jnp.shape(values)[1:] != rows:
        try:
            values = jnp.broadcast_to(values, (num_steps, *rows))
        except ValueError as error:
            raise ValueError(
                f"Temporal {name!r}: the step returned values of shape "
                f"{jnp.shape(values)[1:]}, expected the series shape {rows}."
            ) from error
    return numpyro.deterministic(name, jnp.moveaxis(values, 0, -1))


def check_no_plates(name: str, step: Step, init: Any) -> None:
    """Refuses a transition with a ``plate`` inside (tensorfact trains autoguides, and
    NumPyro's autoguides fail with a ``KeyError`` on a plate inside a ``scan`` body).

    Raises:
        ValueError: naming the plates and the workaround.
    """
    plates = probe_body(step, init, jnp.asarray(0)).plates
    if plates:
        raise ValueError(
            f"Temporal {name!r}: the transition's step uses plate(s) {list(plates)}; NumPyro's "
            "autoguides (used by tensorfact.fit) fail on a plate inside a scan body, and scan "
            "cannot run under a plate. Drop the plate and draw each step's sites with the "
            "series' shape instead: the state holds one element per series (`rows`), e.g. "
            "numpyro.sample(name, dist.Normal(previous, s)) with previous of shape rows."
        )


def step_sites(
    model: Callable, effects: Mapping[str, tuple[str, ...]], time: str, num_steps: int,
    *args: Any,
) -> dict[str, tuple[str, ...]]:
    """Per-step latent sites of scan effects and their dims, found by tracing ``model`` once.

    A site belongs to the scan effect whose deterministic site (``effects``' key) follows it
    first in the trace; it is kept when it is continuous and stacked over the steps (a site
    inside the body, or a :class:`reparam.NonCentered` noise site or a
    :class:`reparam.scan.GaussianConditional` whitened site) with shape ``(T, *rows)``
    (dims ``(time, *by)``) or ``(T,)`` (dims ``(time,)``). Used to include these sites in the
    Gaussian analysis that starts SVI: integrated out, rather than maximised jointly with their
    scale (which collapses the scale to 0, the mode of a hierarchical prior).

    Args:
        model: the model; ``args`` its arguments.
        effects: scan effect name -> the effect's ``by`` dims.
        time: the time dim; ``num_steps`` its length.
    """
    trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*args)
    found: dict[str, tuple[str, ...]] = {}
    pending: list[dict] = []
    for name, site in trace.items():
        if site["type"] == "deterministic" and name in effects:
            rows = jnp.shape(site["value"])[:-1]
            for step_site in pending:
                shape = jnp.shape(step_site["value"])
                if shape == (num_steps, *rows):
                    found[step_site["name"]] = (time, *effects[name])
                elif shape == (num_steps,):
                    found[step_site["name"]] = (time,)
            pending = []
        elif (
            site["type"] == "sample"
            and not site["is_observed"]
            and not site["fn"].support.is_discrete
            and (site.get("_control_flow_done") or name.endswith((NOISE_SUFFIX, WHITENED_SUFFIX)))
        ):
            pending.append(site)
    return found


def start_point(model: Callable, point: Mapping[str, Any], *args: Any) -> dict[str, Array]:
    """Completes a starting point for a model with scan effects.

    Sites named in ``point`` keep their values (a scan form's hyperparameters share the
    built-ins' names); every other latent site, including the per-step sites inside ``scan``,
    starts at the prior median given the values before it (``init_to_median``). Entries of
    ``point`` that are not latent sites of ``model`` are dropped. Values are JAX arrays:
    contrib ``scan`` indexes substituted values with a traced step index, which NumPy arrays
    do not support.
    """

    def start(site: dict) -> Any:
        if site["type"] != "sample" or site["is_observed"]:
            return None
        if site["name"] in point:
            return point[site["name"]]
        return init_to_median(site)

    seeded = handlers.substitute(handlers.seed(model, rng_seed=0), substitute_fn=start)
    trace = handlers.trace(seeded).get_trace(*args)
    return {
        name: jnp.asarray(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
