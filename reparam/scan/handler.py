"""Reparameterizing sample sites inside a ``numpyro.contrib.control_flow.scan`` body.

NumPyro's ``handlers.reparam`` applied outside ``scan`` does not reach the body (the body runs
under ``handlers.block`` and its sites are replayed afterwards, already sampled), and
``numpyro.param`` inside the body is stacked per step. :func:`scan_reparam` instead intercepts
the ``scan`` call itself: it probes the body once for its sites' shapes, creates every
learnable quantity and every out-of-loop draw *outside* the loop, and runs the body under a
per-step handler that rewrites the configured sites. The model code is unchanged::

    model = reparam.scan_reparam(model, {"x": "learnable"})

For a site ``x_t ~ Normal(m_t, s_t)`` at step ``t`` (``m_t, s_t`` may depend on the carry):

* :class:`Centered`: unchanged.
* :class:`NonCentered`: ``eps ~ Normal(0, 1)`` of shape ``(T, *shape)`` is drawn once before the
  loop (site ``f"{x}_noise"``) and the body computes ``x_t = m_t + s_t eps_t``: the transition
  is deterministic given the noise. Jacobian ``prod_t s_t``.
* :class:`LearnableCentering`: ``u_t ~ Normal(c m_t, s_t^c)`` (site ``f"{x}_decentered"``) and
  ``x_t = m_t + s_t^(1-c) (u_t - c m_t)`` with ``c in [0, 1]`` a ``numpyro.param``
  ``f"{x}_centered"`` of one step's shape, created once outside the loop and shared by all
  steps (``c = 1`` centred, ``c = 0`` non-centred). Jacobian ``prod_t s_t^(1-c)``.
* :class:`GaussianConditional`: the whole path of the site is drawn before the loop in the
  whitened coordinates of its Gaussian conditional given the values before the loop and the
  data, ``x = m + L^{-T} u`` (site ``f"{x}_whitened"``, ``u ~ N(0, I)`` a priori), with ``m``
  and ``L`` (``L L^T`` = the path's precision) recomputed in closed form at every evaluation
  (:mod:`reparam.scan.conditional`); the body site becomes the observed site
  ``f"{x}_conditioned"`` (its density is kept), ``x`` is recorded as a deterministic before the
  loop and the factor ``f"{x}_whitened_jacobian"`` adds ``log|det dx/du| - log N(u; 0, I)``.
  Exact whitening for a body linear-Gaussian in ``x``.
* :class:`StepAffine`: the conditional affine decorrelation of :mod:`reparam.handler` inside the
  loop: ``u_t = x~_t + sum_k xi_k[t] * p~_k`` (site ``f"{x}_decorrelated"``), with ``p_k``
  parent sites sampled before the ``scan`` or earlier in the same step, ``~`` the unconstrained
  value, and ``xi_k`` ``numpyro.param`` s ``f"{x}_shift_{p_k}"`` created outside the loop (one
  row per step). Unit Jacobian.

Each variant is an exact reparameterization: the original site stays in the trace as a
deterministic (stacked over steps) and the density of the new coordinates is the pushforward of
the model's. :class:`GaussianConditional`'s map depends on the data the body observes, so
``x`` is a function of ``x_whitened`` *and the data*: for posterior predictive with the data
passed as ``None``, give the path itself (``Predictive(..., condition_deterministic=True)``
with ``x`` in the posterior samples); recomputing it from ``x_whitened`` without the data is
refused (:func:`reparam.scan.conditional.check_data_present`). Unsupported by NumPyro and
reported as errors naming the workaround: ``scan`` under a ``plate`` (batch the body's sites
over the series, or put the plate inside the body), nested ``scan``, ``numpyro.param`` inside
the body, enumerated scans, sample sites inside a plain ``jax.lax.scan`` (drawn once and
repeated: use the contrib ``scan``) and body site names built from a traced step index. Note
that NumPyro 0.22's autoguides fail (``KeyError``) on a plate *inside* a scan body: for SVI,
batch the body's sites over the series without a plate. The strategies and the body probe live in
:mod:`reparam.scan.strategies`; how a ``scan`` message (and a JAX loop) is recognised, in
:mod:`reparam.control_flow`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import constraints
from numpyro.primitives import Messenger

from reparam.control_flow import (
    check_same_trace,
    check_site_names,
    is_scan_message,
    raised_by_plate,
    scan_call,
    trace_state,
)
from reparam.names import (
    AUX_SUFFIX,
    CENTERED_SUFFIX,
    CONDITIONED_SUFFIX,
    DECENTERED_SUFFIX,
    NOISE_SUFFIX,
    SITE_SUFFIXES,
    WHITENED_SUFFIX,
    shift_param,
)
from reparam.scan.conditional import draw_paths
from reparam.scan.strategies import (
    Centered,
    GaussianConditional,
    LearnableCentering,
    NonCentered,
    ScanConfig,
    Shifted,
    StepAffine,
    Strategy,
    as_strategy,
    check_strategy,
    probe_body,
    unwrap,
)
from reparam.sites import unconstrain

__all__ = [  # re-exported: the strategies and the suffixes of the sites created here
    "NOISE_SUFFIX",
    "WHITENED_SUFFIX",
    "Centered",
    "GaussianConditional",
    "LearnableCentering",
    "NonCentered",
    "ScanConfig",
    "ScanReparamMessenger",
    "StepAffine",
    "scan_reparam",
]
_NAME = "reparam.scan_reparam"
_APPLIED = "_scan_reparam_applied"  # our own mark on a scan message we rewrote
_RENAMED = {  # strategy -> suffix of the body site it turns the configured site into
    GaussianConditional: CONDITIONED_SUFFIX,
    LearnableCentering: DECENTERED_SUFFIX,
    StepAffine: AUX_SUFFIX,
}


@dataclass
class _Plan:
    """Per-scan state handed to the body: strategies and the outside-created quantities."""

    strategies: dict[str, Strategy]
    params: dict[str, Array] = field(default_factory=dict)
    outer: dict[str, Array] = field(default_factory=dict)


class _StepMessenger(Messenger):
    """Applied inside the body at every step: rewrites the configured sites."""

    def __init__(self, plan: _Plan, step: Array, noise: Mapping[str, Array]) -> None:
        self.plan, self.step, self.noise = plan, step, noise
        self.values: dict[str, Array] = {}
        super().__init__()

    def process_message(self, msg: dict) -> None:
        if msg["type"] == "param":
            raise ValueError(
                f"numpyro.param({msg['name']!r}) inside a scan body is stacked per step and "
                "breaks guide setup. Create it before the scan and close over it in the step "
                "function, or use reparam.scan.LearnableCentering / StepAffine."
            )
        if msg["type"] == "control_flow":
            raise NotImplementedError(
                "Nested scan is not supported by NumPyro. Carry the inner loop's state in the "
                "outer carry, or vectorise the inner loop."
            )
        if msg["type"] != "sample" or msg["name"] not in self.plan.strategies:
            return
        name, fn = msg["name"], msg["fn"]
        strategy = self.plan.strategies[name]
        if isinstance(strategy, GaussianConditional):  # keep the density, at the path's value
            value = self.noise[name]
            self.values[name] = value
            msg["name"], msg["value"], msg["is_observed"] = name + CONDITIONED_SUFFIX, value, True
            return
        if isinstance(strategy, NonCentered):
            base = unwrap(fn)
            value = base.loc + base.scale * self.noise[name]
        elif isinstance(strategy, LearnableCentering):
            value = self._decenter(name, fn, self.plan.params[name + CENTERED_SUFFIX])
        else:
            value = self._shift(name, fn, strategy)
        value = jnp.broadcast_to(value, fn.shape())
        self.values[name] = unconstrain(value, fn.support)
        msg["type"], msg["value"] = "deterministic", value
        for key in list(msg):
            if key not in ("type", "name", "value", "cond_indep_stack"):
                del msg[key]

    def postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["name"].endswith(SITE_SUFFIXES):
            self.values[msg["name"]] = unconstrain(msg["value"], msg["fn"].support)

    def _decenter(self, name: str, fn: dist.Distribution, c: Array) -> Array:
        base = unwrap(fn)
        loc = jnp.broadcast_to(base.loc, fn.shape())
        scale = jnp.broadcast_to(base.scale, fn.shape())
        prior = dist.Normal if isinstance(base, dist.Normal) else type(base)
        params = {"loc": c * loc, "scale": scale**c}
        if prior is not dist.Normal:  # keep shape parameters (e.g. StudentT's df)
            params.update({k: getattr(base, k) for k in base.arg_constraints if k not in params})
        decentered = prior(**params).to_event(fn.event_dim)
        u = numpyro.sample(name + DECENTERED_SUFFIX, decentered)
        return loc + scale ** (1 - c) * (u - c * loc)

    def _shift(self, name: str, fn: dist.Distribution, strategy: StepAffine) -> Array:
        shift = 0.0
        for parent in strategy.parents:
            if parent in self.values:
                value = self.values[parent]
            elif parent in self.plan.outer:
                value = self.plan.outer[parent]
            else:
                raise ValueError(
                    f"Parent {parent!r} of scan site {name!r} was not sampled before it: a "
                    "parent must be sampled before the scan (under scan_reparam) or earlier "
                    "in the same step."
                )
            if jnp.broadcast_shapes(jnp.shape(value), fn.shape()) != fn.shape():
                raise ValueError(
                    f"Parent {parent!r} (shape {jnp.shape(value)}) does not broadcast to one "
                    f"step of {name!r} (shape {fn.shape()})."
                )
            coefficient = self.plan.params[shift_param(name, parent)]
            if coefficient.ndim > len(fn.shape()):  # one row per step
                coefficient = coefficient[self.step]
            shift = shift + coefficient * value
        aux = Shifted(fn, shift)
        return aux.to_model(numpyro.sample(name + AUX_SUFFIX, aux))


class ScanReparamMessenger(Messenger):
    """Effect handler applying :mod:`reparam.scan` strategies to sites inside ``scan`` bodies.

    Args:
        fn: the model (or ``None`` to use as a context manager around the ``scan`` call).
        config: body site name -> strategy (a :class:`Centered`, :class:`NonCentered`,
            :class:`LearnableCentering`, :class:`StepAffine` or :class:`GaussianConditional`,
            or one of the strings ``"centered"``, ``"noncentered"``, ``"learnable"``,
            ``"conditional"``), or a callable of the name.
    """

    def __init__(self, fn: Callable | None = None, config: ScanConfig | None = None) -> None:
        if config is None or not (isinstance(config, Mapping) or callable(config)):
            raise TypeError("config must be a dict {site: strategy} or a callable.")
        if isinstance(config, Mapping):
            config = {k: as_strategy(k, v) for k, v in config.items()}
        self.config = config
        self.found: set[str] = set()
        self._outer: dict[str, Array] = {}
        self._body: set[str] = set()  # names of the scan bodies' sites, replayed after a scan
        self._outside: set[str] = set()  # configured sites sampled outside any scan body
        self._trace = None
        super().__init__(fn)

    def strategy_for(self, name: str) -> Strategy | None:
        """The strategy configured for body site ``name`` (``None``: not configured)."""
        if isinstance(self.config, Mapping):
            return self.config.get(name)
        return as_strategy(name, self.config(name))

    def __enter__(self):
        self.found, self._outer, self._body, self._outside = set(), {}, set(), set()
        self._trace = trace_state()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        result = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is NotImplementedError and raised_by_plate(exc_value):
            raise NotImplementedError(
                "NumPyro cannot run scan under a plate. Move the plate out of the way: batch "
                "the step's sites over the plate's size inside the step function (give the "
                "carry one element per series and draw e.g. Normal(carry, s) of that shape), "
                "or put the plate inside the step function (fine for NUTS and Predictive, but "
                "NumPyro's autoguides fail on a plate inside a scan body)."
            ) from exc_value
        if exc_type is None and isinstance(self.config, Mapping):
            self._check_found()
        return result

    def _check_found(self) -> None:
        unknown = sorted(set(self.config) - self.found)
        if not unknown:
            return
        outside = sorted(set(unknown) & self._outside)
        hint = (
            f" {outside} were sampled outside any numpyro.contrib.control_flow.scan body: "
            "scan_reparam applies to sites inside a scan body only (use reparam.decorrelate "
            "for the others)."
            if outside
            else ""
        )
        raise ValueError(
            f"scan_reparam config names {unknown}, which no scan body sampled; the body sites "
            f"seen were {sorted(self.found)}.{hint}"
        )

    def postprocess_message(self, msg: dict) -> None:
        if msg["type"] == "control_flow" and msg.get(_APPLIED) and msg["kwargs"].get("enum"):
            raise NotImplementedError(
                "scan_reparam does not support enumerated scans (scan under an enum handler); "
                "leave the body's sites centred or marginalise them in the model."
            )
        if msg["type"] in ("sample", "deterministic") and msg["name"] not in self._body:
            fn = msg.get("fn")
            value = msg["value"]
            self._outer[msg["name"]] = value if fn is None else unconstrain(value, fn.support)

    def process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] not in self._body:
            self._check_outside(msg["name"])
        if not is_scan_message(msg):
            return
        call = scan_call(msg)
        probe = probe_body(call.f, call.init, call.first_input)
        sites = probe.sites
        check_site_names([*sites, *probe.deterministic])
        self.found |= set(sites)
        plan = _Plan(strategies={}, outer=dict(self._outer))
        for name, info in sites.items():
            strategy = self.strategy_for(name)
            if strategy is None or isinstance(strategy, Centered):
                continue
            check_strategy(info, strategy)
            plan.strategies[name] = strategy
        self._body |= set(sites) | set(probe.deterministic) | {
            name + _RENAMED[type(s)] for name, s in plan.strategies.items() if type(s) in _RENAMED
        }
        msg[_APPLIED] = bool(plan.strategies)
        noise = _outside_quantities(plan, sites, call.length)
        conditional = {
            name: sites[name].shape
            for name, strategy in plan.strategies.items()
            if isinstance(strategy, GaussianConditional)
        }
        observed = any(info.observed for info in sites.values())
        noise.update(draw_paths(call, conditional, body_observed=observed))

        def body(carry, packed):
            x, step, noise_t = packed
            with _StepMessenger(plan, step, noise_t):
                return call.f(carry, x)

        packed = (call.xs, jnp.arange(call.length), noise)
        msg["args"] = (body, call.init, packed, call.length, call.reverse)

    def _check_outside(self, name: str) -> None:
        """A configured site sampled outside any scan body: refused at once when inside a
        JAX loop of the model (``jax.lax.scan``), else reported if no scan body has it.

        A callable config is only asked about sites inside such a loop (it is written for
        body sites and may not accept other names)."""
        inner = self._trace is not None and trace_state() != self._trace
        if not (inner or isinstance(self.config, Mapping)):
            return
        strategy = self.strategy_for(name)
        if strategy is None or isinstance(strategy, Centered):
            return
        check_same_trace(self._trace, name, _NAME)
        self._outside.add(name)


def _outside_quantities(plan: _Plan, sites: Mapping, length: int) -> dict[str, Array]:
    """Creates the learnable quantities (into ``plan.params``) and draws the NonCentered noise
    before the loop; returns the noise paths."""
    noise = {}
    for name, strategy in plan.strategies.items():
        shape = sites[name].shape
        if isinstance(strategy, NonCentered):
            prior = dist.Normal(0.0, 1.0).expand((length, *shape)).to_event(len(shape) + 1)
            noise[name] = numpyro.sample(name + NOISE_SUFFIX, prior)
        elif isinstance(strategy, LearnableCentering):
            init_c = jnp.full(shape if strategy.per_element else (), strategy.init)
            plan.params[name + CENTERED_SUFFIX] = numpyro.param(
                name + CENTERED_SUFFIX, init_c, constraint=constraints.unit_interval
            )
        elif isinstance(strategy, StepAffine):
            rows = (length, *shape) if strategy.per_step else shape
            for parent in strategy.parents:
                key = shift_param(name, parent)
                plan.params[key] = numpyro.param(key, jnp.zeros(rows))
    return noise


def scan_reparam(model: Callable | None, config: ScanConfig) -> ScanReparamMessenger:
    """Returns ``model`` with reparameterizations applied to sites inside its ``scan`` bodies.

    Args:
        model: a NumPyro model calling ``numpyro.contrib.control_flow.scan`` (``None``: use the
            result as a context manager around the ``scan`` call).
        config: body site name -> strategy or shortcut string, or a callable of the name.

    Returns:
        The reparameterized model. Configured sites become deterministic (stacked over steps,
        same names); new latent sites are ``f"{x}_noise"``, ``f"{x}_decentered"``,
        ``f"{x}_decorrelated"`` or ``f"{x}_whitened"``; learnable ones are params
        ``f"{x}_centered"`` and ``f"{x}_shift_{parent}"``, fixed for NUTS with
        :func:`reparam.freeze`.
    """
    return ScanReparamMessenger(model, config)
