"""Fitting a decorrelated NumPyro model: SVI from the Gaussian start, then (optionally) NUTS.

Works for any model wrapped by :func:`reparam.decorrelate`, not only tensorfact's:

1. :func:`reparam.initialize` moves the hyperparameters to their Laplace mode, the decorrelated
   sites to their conditional mode, fits the coefficients to the exact local conditional and
   sets the mean-field guide to the local optimum;
2. SVI trains the guide with Adam whose location steps are relative to the guide scales
   (:func:`reparam.relative_steps`), coefficients held fixed (passed as a traced argument, so
   refreshing them at the guide's current median does not recompile) or, optionally, trained
   with their own learning rate;
3. NUTS runs the model with the coefficients frozen, started from the SVI median.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike
from numpyro import handlers
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoGuide, AutoLowRankMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_value

import reparam
from tensorfact.infer.nuts import NUTSRun, run_nuts
from tensorfact.infer.svi import (
    RUNNER_CACHE_SIZE,
    Plateau,
    SVIRun,
    SVIRunner,
    continue_svi,
    run_svi,
    shareable,
)

GuideKind = Literal["normal", "lowrank"]


class CoefficientModel:
    """``model(*args, coefficients=..., **kwargs)``: the decorrelated model with coefficients
    given as an argument (constants to SVI, so changing them does not recompile)."""

    def __init__(self, decorrelated: reparam.DecorrelateMessenger) -> None:
        self.decorrelated = decorrelated

    def __call__(self, *args: Any, coefficients: Mapping[str, Any], **kwargs: Any) -> Any:
        return reparam.freeze(self.decorrelated, coefficients)(*args, **kwargs)


@dataclass
class SVIFit:
    """A trained guide over a (decorrelated or plain) model.

    Attributes:
        run: the SVI run (params, loss trace, state).
        guide: the autoguide.
        model: the model SVI trained; call it with ``**model_kwargs``.
        coefficients: decorrelation coefficients in use (empty for a plain model).
        start: the initialisation (``None`` for a fit restored from a file).
        args, kwargs: the model arguments (without the coefficients).
        refreshes: steps at which the coefficients were refitted.
        optimizer: the optax transformation that trained the guide (used to resume).
        cache_key: the :func:`svi_cache_key` under which compiled programs are shared
            (``None``: not shared).
    """

    run: SVIRun
    guide: AutoGuide
    model: Callable
    coefficients: dict[str, np.ndarray]
    start: reparam.Initialization | None
    args: tuple
    kwargs: dict
    refreshes: list[int] = field(default_factory=list)
    optimizer: optax.GradientTransformation | None = field(default=None, repr=False)
    cache_key: Hashable | None = field(default=None, repr=False)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        if isinstance(self.model, CoefficientModel):
            return {**self.kwargs, "coefficients": self.coefficients}
        return dict(self.kwargs)

    def draws(
        self, rng_key: jax.Array, num_samples: int, sites: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Posterior draws of model sites (model coordinates) from the guide.

        With a ``cache_key`` the draws run as one compiled program shared by the fits of that
        key (params and arguments traced); without one, NumPyro's ``Predictive`` runs as is.
        """
        returned = tuple(sites) if sites is not None else None
        if self.cache_key is None or not shareable((self.args, self.model_kwargs)):
            draw = _draw_program(self.model, self.guide, num_samples, returned, compiled=False)
        else:
            key = (self.cache_key, num_samples, returned)
            draw = _DRAWS.get(key)
            if draw is None:
                draw = _draw_program(self.model, self.guide, num_samples, returned)
                _DRAWS[key] = draw
                while len(_DRAWS) > RUNNER_CACHE_SIZE:
                    _DRAWS.popitem(last=False)
            else:
                _DRAWS.move_to_end(key)
        out = draw(rng_key, self.run.params, self.args, self.model_kwargs)
        return {k: np.asarray(v) for k, v in out.items()}

    def median_point(self) -> dict[str, np.ndarray]:
        """All latent model sites at the guide's median (model coordinates)."""
        median = self.guide.median(self.run.params)
        model = handlers.substitute(handlers.seed(self.model, 0), data=median)
        trace = handlers.trace(model).get_trace(*self.args, **self.model_kwargs)
        return {
            name: np.asarray(site["value"])
            for name, site in trace.items()
            if site["type"] in ("sample", "deterministic")
            and not site.get("is_observed", False)
            and not name.endswith(reparam.AUX_SUFFIX)
        }


_DRAWS: OrderedDict[Hashable, Callable] = OrderedDict()


def _draw_program(
    model: Callable,
    guide: AutoGuide,
    num_samples: int,
    sites: tuple[str, ...] | None,
    compiled: bool = True,
) -> Callable:
    """``(rng_key, params, args, kwargs) -> draws`` from ``guide`` pushed through ``model``."""

    def draw(rng_key, params, args, kwargs):
        predictive = Predictive(model, guide=guide, params=params, num_samples=num_samples,
                                return_sites=list(sites) if sites is not None else None)
        return predictive(rng_key, *args, **kwargs)

    return jax.jit(draw) if compiled else draw


def default_optimizer(learning_rate: float, relative: bool) -> optax.GradientTransformation:
    """Adam whose rate halves every 750 steps down to 2% of ``learning_rate``; location steps
    relative to the guide scales when ``relative``.

    The start is already near the optimum, so the rate decays early: on B2 this reached the
    loss plateau at step ~1500 versus ~2700 with a cosine decay over 5000 steps, with the same
    accuracy.
    """
    schedule = optax.exponential_decay(
        learning_rate, 750, 0.5, end_value=0.02 * learning_rate
    )
    adam = optax.adam(schedule)
    return optax.chain(adam, reparam.relative_steps()) if relative else adam


def svi_cache_key(
    model_key: Hashable | None, guide: GuideKind, learning_rate: float
) -> Hashable | None:
    """The key under which :func:`fit_svi` and :func:`restore_svi` share compiled SVI steps:
    the model's key (its structure and sizes, as chosen by the caller) with the guide kind and
    the default optimizer's learning rate; ``None`` (no sharing) without a model key."""
    if model_key is None:
        return None
    return ("fit_svi", model_key, guide, float(learning_rate))


def fit_svi(
    model: Callable,
    *args: Any,
    point: Mapping[str, ArrayLike],
    rng_key: jax.Array,
    analysis: reparam.DecorrelateMessenger | None = None,
    guide_names: Mapping[str, str] | None = None,
    num_steps: int = 3000,
    learning_rate: float = 0.005,
    optimizer: optax.GradientTransformation | None = None,
    guide: GuideKind = "normal",
    stopping: Plateau | None = None,
    laplace: bool = True,
    refresh_at: Sequence[int] = (),
    coefficient_learning_rate: float = 0.0,
    progress_bar: bool = False,
    cache_key: Hashable | None = None,
    **kwargs: Any,
) -> SVIFit:
    """Trains a guide over ``model`` from the local Gaussian start.

    Args:
        model: a decorrelated model (:func:`reparam.decorrelate`) or a plain model; for a
            plain model give ``analysis`` (an unrotated decorrelation of it whose children
            have no parents) and ``guide_names`` (identity) so the start can be computed.
        *args, **kwargs: model arguments.
        point: starting values of all latent sites (model coordinates).
        rng_key: PRNG key.
        num_steps: step limit.
        learning_rate: Adam learning rate (relative to guide scales for ``guide="normal"``).
        optimizer: replaces the default optimizer (any optax transformation).
        guide: ``"normal"`` (mean-field) or ``"lowrank"`` (low-rank multivariate normal).
        stopping: optional plateau rule.
        laplace: start from the Laplace mode of the non-decorrelated sites.
        refresh_at: steps at which to refit the coefficients at the guide's median.
        coefficient_learning_rate: train the coefficients by SVI too, with this Adam rate
            (0: keep them at the Gaussian fit; measured to be more accurate).
        progress_bar: show progress.
        cache_key: a hashable identifying ``model`` completely (its structure and sizes;
            the data and coefficients are arguments): fits with equal keys share the
            compiled SVI step in this process. Used only with the default optimizer and
            fixed coefficients. ``None``: compile anew.
    """
    decorrelated = model if isinstance(model, reparam.DecorrelateMessenger) else None
    analysis = analysis if analysis is not None else decorrelated
    if analysis is None:
        raise ValueError("fit_svi on a plain model needs `analysis` to compute the start.")
    local = reparam.LocalGaussian(analysis, point, *args, **kwargs)
    start = reparam.initialize(local, point, laplace=laplace, guide_names=guide_names)
    coefficients = dict(start.coefficients) if decorrelated is not None else {}
    learn = decorrelated is not None and coefficient_learning_rate > 0
    train: Callable = model if decorrelated is None or learn else CoefficientModel(decorrelated)
    # JAX arrays: contrib scan indexes init values with a traced step (NumPy arrays fail)
    init = init_to_value(values={k: jnp.asarray(v) for k, v in start.guide.values.items()})
    if guide == "normal":
        autoguide: AutoGuide = AutoNormal(train, init_loc_fn=init)
        init_params = start.guide.init_params()
    elif guide == "lowrank":
        autoguide = AutoLowRankMultivariateNormal(train, init_loc_fn=init, init_scale=0.01)
        init_params = {}
    else:
        raise ValueError(f"guide must be 'normal' or 'lowrank', got {guide!r}.")
    base = optimizer or default_optimizer(learning_rate, relative=guide == "normal")
    shared = svi_cache_key(cache_key, guide, learning_rate)
    if optimizer is not None or learn or not isinstance(train, CoefficientModel):
        shared = None
    if learn:
        base = optax.multi_transform(
            {"coefficients": optax.adam(coefficient_learning_rate), "guide": base},
            lambda params: {k: "coefficients" if k in coefficients else "guide" for k in params},
        )
        init_params = {**init_params, **coefficients}
    call_kwargs = dict(kwargs)
    if isinstance(train, CoefficientModel):
        call_kwargs["coefficients"] = coefficients
    fit = SVIFit(
        run=None,  # type: ignore[arg-type]
        guide=autoguide,
        model=train,
        coefficients=coefficients,
        start=start,
        args=args,
        kwargs=dict(kwargs),
        optimizer=base,
        cache_key=shared,
    )
    stops = sorted(s for s in refresh_at if 0 < s < num_steps) + [num_steps]
    done, state, runs = 0, None, []
    for stop in stops:
        run = run_svi(
            train, autoguide, base, *args, rng_key=rng_key, num_steps=stop - done,
            stopping=stopping if stop == num_steps else None, init_params=init_params,
            state=state, progress_bar=progress_bar, cache_key=shared, **call_kwargs,
        )
        runs.append(run)
        done = stop
        fit.run = run
        if stop == num_steps or run.stopped == "plateau":
            break
        state, init_params = _refresh(fit, local, guide_names, guide == "normal", stop)
        rng_key = jax.random.fold_in(rng_key, stop)
    fit.run = SVIRun(
        params=runs[-1].params,
        losses=np.concatenate([r.losses for r in runs]),
        state=runs[-1].state,
        stopped=runs[-1].stopped,
        seconds=sum(r.seconds for r in runs),
        runner=runs[-1].runner,
    )
    if learn:
        fit.coefficients = {k: np.asarray(fit.run.params[k]) for k in coefficients}
    return fit


def resume_svi(
    fit: SVIFit,
    num_steps: int,
    *,
    stopping: Plateau | None = None,
    progress_bar: bool = False,
) -> SVIFit:
    """Continues training ``fit`` for ``num_steps`` steps (see :func:`continue_svi`): the
    optimiser state, step count and random key carry on, so training in pieces matches one
    uninterrupted run bitwise. ``fit`` itself is not changed.

    Raises:
        NonFiniteLoss: if a loss becomes NaN or infinite.
    """
    run = continue_svi(fit.run, num_steps, stopping=stopping, progress_bar=progress_bar)
    return replace(fit, run=run, refreshes=list(fit.refreshes))


def restore_svi(
    decorrelated: reparam.DecorrelateMessenger,
    *args: Any,
    coefficients: Mapping[str, ArrayLike],
    guide: GuideKind,
    optimizer: optax.GradientTransformation,
    leaves: Sequence[np.ndarray] | None,
    losses: np.ndarray,
    params: Mapping[str, ArrayLike] | None = None,
    stopped: str = "max_steps",
    chunk: int = 250,
    cache_key: Hashable | None = None,
    **kwargs: Any,
) -> SVIFit:
    """Rebuilds a trained :class:`SVIFit` from its saved ``SVIState`` leaves.

    The guide and optimiser state are initialised once (to learn the state's tree structure;
    no training step runs) and then replaced by ``leaves``, so the restored fit continues
    exactly where the saved one stopped.

    Args:
        decorrelated: the decorrelated model the fit trained (coefficients held fixed).
        *args, **kwargs: model arguments.
        coefficients: the fit's decorrelation coefficients.
        guide: the guide kind it used.
        optimizer: the optax transformation it used.
        leaves: ``jax.tree.leaves`` of its final ``SVIState``; ``None`` restores the guide
            only (from ``params``), without a state to continue from.
        losses: its loss trace.
        params: its final constrained params (used when ``leaves`` is ``None``).
        stopped: why it stopped.
        chunk: steps per compiled chunk.
        cache_key: :func:`svi_cache_key` of the fit (with the default optimizer only), to
            share the compiled step with fits of the same model in this process.

    Raises:
        ValueError: if ``leaves`` do not fit the state this guide and optimiser create.
    """
    train = CoefficientModel(decorrelated)
    coefficients = dict(coefficients)
    if guide == "normal":
        autoguide: AutoGuide = AutoNormal(train)
    else:
        autoguide = AutoLowRankMultivariateNormal(train, init_scale=0.01)
    call_kwargs = {**kwargs, "coefficients": coefficients}
    svi = SVI(train, autoguide, optimizer, Trace_ELBO())
    template = svi.init(jax.random.PRNGKey(0), *args, **call_kwargs)
    if leaves is None:
        run = SVIRun(params={k: jnp.asarray(v) for k, v in dict(params or {}).items()},
                     losses=np.asarray(losses), state=None, stopped=stopped, seconds=0.0)
        return SVIFit(run=run, guide=autoguide, model=train, coefficients=coefficients,
                      start=None, args=args, kwargs=dict(kwargs), optimizer=None)
    expected, treedef = jax.tree.flatten(template)
    shapes = [(np.shape(x), np.dtype(x.dtype)) for x in expected]
    if shapes != [(np.shape(x), np.dtype(x.dtype)) for x in leaves]:
        raise ValueError(
            "The saved SVI state does not match the state of this guide and optimizer; resume "
            "with the optimizer the fit was trained with."
        )
    state = jax.tree.unflatten(treedef, [_like(t, x) for t, x in zip(expected, leaves,
                                                                        strict=True)])
    key = (cache_key, 1) if cache_key is not None else None  # 1: run_svi's particle count
    runner = SVIRunner.build(svi, args, call_kwargs, chunk, key)
    run = SVIRun(params=svi.get_params(state), losses=np.asarray(losses), state=state,
                 stopped=stopped, seconds=0.0, runner=runner)
    return SVIFit(run=run, guide=autoguide, model=train, coefficients=coefficients, start=None,
                  args=args, kwargs=dict(kwargs), optimizer=optimizer, cache_key=cache_key)


def _like(template: jax.Array, value: ArrayLike) -> jax.Array:
    """``value`` as a JAX array typed like ``template``, weak type included (a saved step
    counter must not change the compiled step's signature)."""
    if getattr(template, "weak_type", False) and np.ndim(value) == 0:
        return jax.lax.full_like(template, value)
    return jnp.asarray(value, dtype=template.dtype)


def _refresh(
    fit: SVIFit,
    local: reparam.LocalGaussian,
    guide_names: Mapping[str, str] | None,
    mean_field: bool,
    step: int,
) -> tuple[None, dict[str, Any]]:
    """Refits the coefficients at the guide's median and maps the guide to them."""
    refreshed = reparam.initialize(
        local, fit.median_point(), laplace=False, guide_names=guide_names
    )
    fit.coefficients.clear()
    fit.coefficients.update(refreshed.coefficients)
    fit.refreshes.append(step)
    params = dict(fit.run.params)
    if mean_field:
        for name, scale in refreshed.guide.scales.items():
            params[f"{name}_auto_loc"] = refreshed.guide.values[name]
            params[f"{name}_auto_scale"] = scale
    return None, params


def fit_nuts(
    decorrelated: reparam.DecorrelateMessenger | Callable,
    *args: Any,
    coefficients: Mapping[str, ArrayLike],
    init_values: Mapping[str, ArrayLike],
    rng_key: jax.Array,
    report_sites: Sequence[str] | None = None,
    **options: Any,
) -> NUTSRun:
    """NUTS on the model with coefficients frozen (a preconditioned model of the same
    posterior), started from ``init_values`` (the guide's names, e.g. an SVI median)."""
    model = reparam.freeze(decorrelated, coefficients) if coefficients else decorrelated
    return run_nuts(
        model, *args, rng_key=rng_key, init_values=init_values,
        report_sites=report_sites, **options,
    )
