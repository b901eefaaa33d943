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

from reparam.decorrelation import freeze
from reparam.handler import DecorrelateMessenger
from reparam.infer.guide_init import initial_state
from reparam.infer.nuts import NUTSRun, run_nuts
from reparam.infer.refresh import train_with_refreshes
from reparam.infer.svi import Plateau, SVIRun, SVIRunner, continue_svi
from reparam.local.analysis import LocalGaussian
from reparam.local.laplace import LaplaceMode
from reparam.names import AUX_SUFFIX
from reparam.optim import relative_steps
from reparam.programs import PROGRAMS, Arguments, ProgramKey, model_key, shareable
from reparam.start import Initialization, initialize

GuideKind = Literal["normal", "lowrank"]  # tensorfact.methods.settings reads this one


class CoefficientModel:
    """``model(*args, coefficients=..., **kwargs)``: the decorrelated model with coefficients
    given as an argument (constants to SVI, so changing them does not recompile)."""

    def __init__(self, decorrelated: DecorrelateMessenger) -> None:
        self.decorrelated = decorrelated

    def __call__(self, *args: Any, coefficients: Mapping[str, Any], **kwargs: Any) -> Any:
        return freeze(self.decorrelated, coefficients)(*args, **kwargs)


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
        optimizer_key: names the optimizer for sharing compiled programs (``None``: the
            programs of this fit are not shared).
    """

    run: SVIRun
    guide: AutoGuide
    model: Callable
    coefficients: dict[str, np.ndarray]
    start: Initialization | None
    args: tuple
    kwargs: dict
    refreshes: list[int] = field(default_factory=list)
    optimizer: optax.GradientTransformation | None = field(default=None, repr=False)
    optimizer_key: Hashable | None = field(default=None, repr=False)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        if isinstance(self.model, CoefficientModel):
            return {**self.kwargs, "coefficients": self.coefficients}
        return dict(self.kwargs)

    def draws(
        self, rng_key: jax.Array, num_samples: int, sites: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Posterior draws of model sites (model coordinates) from the guide.

        The draws run as one compiled program, shared by the fits of the same model
        (:func:`~reparam.programs.model_key`) and guide kind in this process (params and
        arguments traced); a model without a key runs NumPyro's ``Predictive`` as is.
        """
        returned = tuple(sites) if sites is not None else None
        model = model_key(self.model)
        if model is None or not shareable((self.args, self.model_kwargs)):
            draw = _draw_program(self.model, self.guide, num_samples, returned, compiled=False)
        else:
            key = ProgramKey(kind="draws", model=model,
                             settings=(type(self.guide).__name__, num_samples, returned))
            draw = PROGRAMS.get(key, lambda: _draw_program(self.model, self.guide, num_samples,
                                                           returned))
        out = draw(rng_key, self.run.params, self.args, self.model_kwargs)
        return {k: np.asarray(v) for k, v in out.items()}

    def median_point(self) -> dict[str, np.ndarray]:
        """All latent model sites at the guide's median (model coordinates), with the
        coefficients in use (trained ones included, for ``coefficient_learning_rate > 0``).

        Only the guide's latent sample sites are taken from its median; every other site is
        recomputed by the model with the current arguments (a guide's own deterministic
        values may keep the arguments of its set-up). Runs compiled, shared by the fits of
        the same model and argument shapes."""
        median = self.guide.median(self.run.params)
        trace = self.guide.prototype_trace
        latent = {k: v for k, v in median.items() if trace[k]["type"] == "sample"}
        # coefficients trained by SVI are model params: take them from the run
        params = {} if isinstance(self.model, CoefficientModel) else dict(self.run.params)
        arguments = Arguments.split(self.args, self.model_kwargs)
        model = model_key(self.model)
        key = None
        if model is not None and arguments.shareable:
            key = ProgramKey(kind="point", model=model, settings=(), arguments=arguments.key)
        point = PROGRAMS.get(key, lambda: _point_program(self.model, arguments))
        return {k: np.asarray(v) for k, v in point({**params, **latent}, arguments.arrays).items()}


def _point_program(model: Callable, arguments: Arguments) -> Callable:
    """``(values, arrays) -> latent model sites`` (sample and deterministic, auxiliary ones
    left out) of ``model`` run with ``values`` substituted, compiled."""

    def point(values, arrays):
        args, kwargs = arguments.join(arrays)
        substituted = handlers.substitute(handlers.seed(model, 0), data=values)
        trace = handlers.trace(substituted).get_trace(*args, **kwargs)
        return {
            name: site["value"]
            for name, site in trace.items()
            if site["type"] in ("sample", "deterministic")
            and not site.get("is_observed", False)
            and not name.endswith(AUX_SUFFIX)
        }

    return jax.jit(point)


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
    return optax.chain(adam, relative_steps()) if relative else adam


def optimizer_key(learning_rate: float, relative: bool) -> tuple:
    """The name of :func:`default_optimizer`'s transformation (for sharing programs)."""
    return ("default_optimizer", float(learning_rate), bool(relative))


def fit_svi(
    model: Callable,
    *args: Any,
    point: Mapping[str, ArrayLike],
    rng_key: jax.Array,
    analysis: DecorrelateMessenger | None = None,
    guide_names: Mapping[str, str] | None = None,
    num_steps: int = 3000,
    learning_rate: float = 0.005,
    optimizer: optax.GradientTransformation | None = None,
    guide: GuideKind = "normal",
    stopping: Plateau | None = None,
    laplace: bool = True,
    mode: LaplaceMode | None = None,
    refresh_at: Sequence[int] = (),
    coefficient_learning_rate: float = 0.0,
    progress_bar: bool = False,
    local: LocalGaussian | None = None,
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
        stopping: optional plateau rule, checked on the whole loss trace (across refreshes;
            its drift condition needs ``stopping.window`` steps after the last refresh).
        laplace: start from the Laplace mode of the non-decorrelated sites.
        mode: that mode computed by the caller (:func:`reparam.initialize`'s ``mode``), e.g.
            from an exact marginal likelihood; default: :func:`reparam.laplace_mode`.
        refresh_at: steps at which to refit the coefficients at the guide's median; the guide
            is re-mapped to them and the optimiser state carries on (step count and schedule,
            moments of the params not re-mapped: :mod:`reparam.infer.refresh`).
        coefficient_learning_rate: train the coefficients by SVI too, with this Adam rate
            (0: keep them at the Gaussian fit; measured to be more accurate).
        progress_bar: show progress.
        local: the local Gaussian analysis to start and refresh from, built by the caller
            (e.g. a structured one with the interface of :class:`LocalGaussian`); default: a
            :class:`LocalGaussian` of ``analysis``.

    Fits of the same model (:func:`~reparam.programs.model_key`) with the default
    optimizer and fixed coefficients share their compiled programs in this process.
    """
    decorrelated = model if isinstance(model, DecorrelateMessenger) else None
    if decorrelated is not None and decorrelated.fixed_at is not None:
        decorrelated = model = decorrelated.clone(*args, **kwargs)  # coefficients as params
    analysis = analysis if analysis is not None else decorrelated
    if analysis is None and local is None:
        raise ValueError("fit_svi on a plain model needs `analysis` to compute the start.")
    local = local if local is not None else LocalGaussian(analysis, point, *args, **kwargs)
    start = initialize(local, point, laplace=laplace, guide_names=guide_names, mode=mode)
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
    shared = optimizer_key(learning_rate, guide == "normal")
    if optimizer is not None or learn or not isinstance(train, CoefficientModel):
        shared = None
    if learn:
        base = optax.multi_transform(
            {"coefficients": optax.adam(coefficient_learning_rate), "guide": base},
            lambda params: {k: "coefficients" if k in coefficients else "guide" for k in params},
        )
        init_params = {**init_params, **coefficients}
    fit = SVIFit(
        run=None,  # type: ignore[arg-type]
        guide=autoguide,
        model=train,
        coefficients=coefficients,
        start=start,
        args=args,
        kwargs=dict(kwargs),
        optimizer=base,
        optimizer_key=shared,
    )
    fit.run = train_with_refreshes(
        fit, local, guide_names, rng_key=rng_key, num_steps=num_steps, refresh_at=refresh_at,
        stopping=stopping, init_params=init_params, progress_bar=progress_bar,
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
    decorrelated: DecorrelateMessenger,
    *args: Any,
    coefficients: Mapping[str, ArrayLike],
    guide: GuideKind,
    optimizer: optax.GradientTransformation,
    leaves: Sequence[np.ndarray] | None,
    losses: np.ndarray,
    params: Mapping[str, ArrayLike] | None = None,
    stopped: str = "max_steps",
    chunk: int = 250,
    optimizer_key: Hashable | None = None,
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
        optimizer_key: :func:`optimizer_key` of the fit (with the default optimizer only),
            to share the compiled step with fits of the same model in this process.

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
    template = initial_state(svi, jax.random.PRNGKey(0), args, call_kwargs,
                             optimizer_key=optimizer_key)
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
    runner = SVIRunner.build(svi, args, call_kwargs, chunk, optimizer_key)
    run = SVIRun(params=svi.get_params(state), losses=np.asarray(losses), state=state,
                 stopped=stopped, seconds=0.0, runner=runner)
    return SVIFit(run=run, guide=autoguide, model=train, coefficients=coefficients, start=None,
                  args=args, kwargs=dict(kwargs), optimizer=optimizer,
                  optimizer_key=optimizer_key)


def _like(template: jax.Array, value: ArrayLike) -> jax.Array:
    """``value`` as a JAX array typed like ``template``, weak type included (a saved step
    counter must not change the compiled step's signature)."""
    if getattr(template, "weak_type", False) and np.ndim(value) == 0:
        return jax.lax.full_like(template, value)
    return jnp.asarray(value, dtype=template.dtype)


def fit_nuts(
    decorrelated: DecorrelateMessenger | Callable,
    *args: Any,
    coefficients: Mapping[str, ArrayLike],
    init_values: Mapping[str, ArrayLike],
    rng_key: jax.Array,
    report_sites: Sequence[str] | None = None,
    **options: Any,
) -> NUTSRun:
    """NUTS on the model with coefficients frozen (a preconditioned model of the same
    posterior), started from ``init_values`` (the guide's names, e.g. an SVI median)."""
    model = freeze(decorrelated, coefficients) if coefficients else decorrelated
    return run_nuts(
        model, *args, rng_key=rng_key, init_values=init_values,
        report_sites=report_sites, **options,
    )
