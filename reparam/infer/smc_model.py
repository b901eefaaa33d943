"""Finding the ``scan`` of a model for sequential Monte Carlo, and running its body per particle.

A model handled by :mod:`reparam.infer.smc` has the form::

    theta ~ p(theta)                              # sites outside the body ("outer")
    scan(step, init, xs)                          # numpyro.contrib.control_flow.scan
    step(carry, x_t): z_t ~ p(z_t | carry, x_t)   # latent body sites
                      y_t ~ p(y_t | z_t, carry, x_t), obs given   # observed body sites
                      return carry', out_t

:func:`inspect_model` traces it once (eagerly) and checks that form; :func:`capture_scan` runs the
model up to the ``scan`` call (the call is intercepted and the rest of the model is skipped), so
the body, the initial carry and ``xs`` are read at the current outer values (under ``jit`` too);
:func:`run_body` runs one step of the body for one particle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array
from numpyro import handlers
from numpyro.primitives import Messenger

from reparam.control_flow import ScanCall, is_scan_message, scan_call
from reparam.scan.strategies import BodyProbe, probe_body

_NAME = "reparam.particle_filter"


class _ScanReached(Exception):
    """Raised at the ``scan`` call to stop the model there (caught by :func:`capture_scan`)."""

    def __init__(self, call: ScanCall) -> None:
        super().__init__("scan reached")
        self.call = call


class _StopAtScan(Messenger):
    def process_message(self, msg: dict) -> None:
        if is_scan_message(msg):
            raise _ScanReached(scan_call(msg))


class _Inspector(Messenger):
    """Records, outside the body, which sample sites nobody fixed and what follows the scan."""

    def __init__(self, fn: Callable) -> None:
        self.scans, self.free, self.after, self.depth = 0, [], [], 0
        super().__init__(fn)

    def process_message(self, msg: dict) -> None:
        if is_scan_message(msg):
            self.scans, self.depth = self.scans + 1, self.depth + 1
        elif msg["type"] == "sample" and not self.depth:
            if msg["value"] is None and not msg["is_observed"]:
                self.free.append(msg["name"])
            if self.scans and msg["is_observed"]:
                self.after.append(msg["name"])

    def postprocess_message(self, msg: dict) -> None:
        if is_scan_message(msg):
            self.depth -= 1


@dataclass(frozen=True)
class ScanModel:
    """What :func:`inspect_model` found.

    Attributes:
        free: latent sites outside the body that the model leaves unfixed (the static
            parameters: fixed by ``handlers.condition``/``substitute`` for a filter, inferred
            by :func:`reparam.infer.pmmh.pmmh`).
        outer_deterministic: deterministic sites outside the body, before the ``scan``.
        latent: latent body sites (one step's shape each).
        observed: observed body sites.
        deterministic: deterministic body sites.
        length: number of steps.
    """

    free: tuple[str, ...]
    outer_deterministic: tuple[str, ...]
    latent: dict[str, tuple[int, ...]]
    observed: tuple[str, ...]
    deterministic: tuple[str, ...]
    real_support: dict[str, bool]
    length: int


def capture_scan(
    model: Callable, args: tuple, kwargs: Mapping[str, Any], rng_key: Array,
    substitute_fn: Callable | None = None,
) -> tuple[ScanCall, dict]:
    """Runs ``model`` up to its ``scan`` call; returns the call and the trace before it.

    Raises:
        ValueError: when the model returns without calling ``scan``.
    """
    seeded = handlers.seed(model, rng_seed=rng_key)
    if substitute_fn is not None:
        seeded = handlers.substitute(seeded, substitute_fn=substitute_fn)
    tracer = handlers.trace(_StopAtScan(seeded))
    try:
        with handlers.block():
            tracer(*args, **kwargs)
    except _ScanReached as reached:
        return reached.call, dict(tracer.trace)
    raise ValueError(
        f"{_NAME}: the model never calls numpyro.contrib.control_flow.scan. Write the time "
        "series as a scan transition: def step(carry, y_t): x = numpyro.sample('x', ...); "
        "numpyro.sample('y', ..., obs=y_t); return new_carry, out  and call "
        "scan(step, init, ys) (a plain jax.lax.scan repeats one random draw per step)."
    )


def inspect_model(model: Callable, args: tuple, kwargs: Mapping[str, Any]) -> ScanModel:
    """Traces ``model`` once and checks the form of the module docstring.

    Raises:
        ValueError: no ``scan``; no observed site inside the body (observations outside it
            only); an observed site after the ``scan`` (it may depend on the path).
        NotImplementedError: more than one ``scan``, or ``reverse=True``.
    """
    key = jax.random.PRNGKey(0)
    call, before = capture_scan(model, args, kwargs, key)
    if call.reverse:
        raise NotImplementedError(f"{_NAME}: scan(..., reverse=True) is not supported.")
    inspector = _Inspector(handlers.seed(model, rng_seed=key))

    def run() -> int:
        inspector(*args, **kwargs)
        return 0

    with handlers.block():
        jax.eval_shape(run)
    if inspector.scans > 1:
        raise NotImplementedError(f"{_NAME}: the model calls scan {inspector.scans} times; "
                                  "one scan (one time series loop) is supported.")
    probe = probe_body(call.f, call.init, call.first_input)
    after = [n for n in inspector.after if n not in probe.sites]  # the body's are replayed
    _check_observed(probe, after, before)
    latent = {n: s.shape for n, s in probe.sites.items() if not s.observed}
    return ScanModel(
        free=tuple(inspector.free),
        outer_deterministic=tuple(n for n, s in before.items() if s["type"] == "deterministic"),
        latent=latent,
        observed=tuple(n for n, s in probe.sites.items() if s.observed),
        deterministic=probe.deterministic,
        real_support={n: probe.sites[n].real_support for n in latent},
        length=call.length,
    )


def _check_observed(probe: BodyProbe, after: list[str], before: Mapping[str, dict]) -> None:
    if not any(s.observed for s in probe.sites.values()):
        outside = [n for n, s in before.items() if s["type"] == "sample" and s["is_observed"]]
        outside += after
        where = f" (observed outside it: {outside})" if outside else ""
        raise ValueError(
            f"{_NAME}: the scan body observes nothing{where}, so the particles would never be "
            "weighted. Observe the data inside the step function (obs=y_t with y passed as "
            "the scan's xs); if the data were passed as None, pass them."
        )
    if after:
        raise ValueError(
            f"{_NAME}: observed site(s) {after} are sampled after the scan, outside its body; "
            "they may depend on the path, which the filter does not keep. Observe the data "
            "inside the step function (numpyro.sample('y', ..., obs=y_t) with y passed as the "
            "scan's xs)."
        )


def run_body(
    f: Callable, carry: Any, x_t: Any, rng_key: Array,
    values: Mapping[str, Array] | None = None, substitute_fn: Callable | None = None,
) -> tuple[Any, Any, dict]:
    """One step of the body for one particle: ``(new carry, output, trace)``, latent sites
    drawn with ``rng_key`` unless given in ``values`` (or by ``substitute_fn``)."""
    fn = f
    if values is not None or substitute_fn is not None:  # inside seed: no key split for them
        fn = handlers.substitute(fn, data=values, substitute_fn=substitute_fn)
    tracer = handlers.trace(handlers.seed(fn, rng_seed=rng_key))
    with handlers.block():
        new_carry, out = tracer(carry, x_t)
    new_carry = jax.tree.map(lambda a, b: jnp.asarray(a, jnp.result_type(b)), new_carry, carry)
    return new_carry, out, tracer.trace


def log_density_terms(trace: Mapping[str, dict]) -> tuple[Array, Array]:
    """``(sum of latent log densities, sum of observed log densities)`` of a body trace."""
    latent, observed = jnp.zeros(()), jnp.zeros(())
    for site in trace.values():
        if site["type"] != "sample":
            continue
        term = jnp.sum(site["fn"].log_prob(site["value"]))
        if site["is_observed"]:
            observed = observed + term
        else:
            latent = latent + term
    return latent, observed


def recorded_values(trace: Mapping[str, dict], names: tuple[str, ...]) -> dict[str, Array]:
    """The values of sites ``names`` in a body trace."""
    return {n: jnp.asarray(trace[n]["value"]) for n in names}
