"""``tensorfact.fit``: DataArray in, labelled Bayesian decomposition out.

Every argument is checked before any JAX work starts (:func:`check_inputs` for the data, the
specification and the decorrelation toggle; :mod:`tensorfact.checks` for the settings), so a
malformed call fails at once with a ``TypeError`` or ``ValueError`` that names the problem and
the fix, and the user's data are never modified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Literal

import numpy as np
import optax

from tensorfact.build import DecorrelateToggle, TensorModel
from tensorfact.checks import (
    check_choice,
    check_flag,
    check_optimizer,
    check_positive_int,
    check_positive_real,
    check_seed,
)
from tensorfact.data import TensorData, as_tensor_data, check_time_coordinate
from tensorfact.results import Fit, check_finite_draws, posterior_dataset, svi_posterior
from tensorfact.spec import MIN_TIME_STEPS, ModelSpec, Temporal, default_spec
from tensorfact.start import (
    SVI_STARTS,
    SviStart,
    check_refreshes,
    model_cache_key,
    refresh_steps,
    resolve_svi_start,
)

Method = Literal["svi", "nuts", "exact"]
METHODS = ("svi", "nuts", "exact")
GUIDES = ("normal", "lowrank")


def fit(
    data: Any,
    spec: ModelSpec | None = None,
    *,
    method: Method = "svi",
    decorrelate: DecorrelateToggle = True,
    seed: int | Any = 0,
    dims: Sequence[str] | None = None,
    time: str | None = None,
    num_steps: int = 5000,
    learning_rate: float = 0.005,
    optimizer: optax.GradientTransformation | None = None,
    guide: Literal["normal", "lowrank"] = "normal",
    stop_at_plateau: bool = True,
    num_draws: int = 1000,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 4,
    svi_steps_for_nuts: int = 2000,
    from_fit: Fit | None = None,
    svi_start: SviStart = "auto",
    coefficient_refreshes: int | Literal["auto"] = "auto",
    progress_bar: bool = False,
) -> Fit:
    """Fits the additive model ``y[i,j,t] ~ Normal(sum_e effect_e, sigma)`` to 3-way data.

    Input rules (checked before any computation; the input object is never modified):

    * ``data`` is a 3-dim ``xarray.DataArray``, or a NumPy array with ``dims=``; other
      containers (lists, pandas, JAX arrays, masked arrays, Datasets) raise ``TypeError``.
    * Values are real numbers. **Integer data (e.g. counts) are converted to float64** and
      modelled as Gaussian measurements like any other numbers (transform counts first, e.g.
      ``log1p``, if that is not appropriate). Booleans, complex numbers, strings and objects
      raise ``TypeError``. ``NaN`` marks a missing cell (left out of the likelihood);
      ``+-inf`` and magnitudes beyond 1e30 raise ``ValueError``.
    * Every dim has at least one entry, and every entry of every dim has at least one
      observed cell; coordinate labels are unique and not missing; numeric or datetime time
      labels are strictly increasing; the time axis is long enough for the temporal priors
      (2 steps for random walks and AR(1), 3 for local linear trends).
    * Dim names are strings other than ``chain, draw, quantile, sample`` and the noise sites.

    Args:
        data: a 3-dim ``xarray.DataArray`` (NaN = missing), or a NumPy array with ``dims``.
        spec: the model (default: :func:`tensorfact.default_spec` of the data's dims: effects
            ``mu, a, b, z, A, B, C``); its dims must be the data's, in the same order.
        method: ``"svi"`` (variational, fast), ``"nuts"`` (MCMC on the decorrelated model,
            coefficients from a short SVI or from ``from_fit``) or ``"exact"`` (Gaussian
            likelihood only: the location effects integrated out, NUTS over the scales, exact
            conditional draws; :mod:`tensorfact.collapsed`). NUTS warns
            (``RuntimeWarning``) with the numbers when it diverges or r-hat/ESS look bad.
        decorrelate: ``True``, ``False`` or ``{effect: bool}`` (effects not named stay on).
        seed: integer in ``[0, 2**32)`` or a JAX PRNG key; the same data, spec, settings and
            seed give bitwise-identical losses and draws on the same machine.
        dims: dim names for a NumPy array.
        time: the time dim (default: the spec's, or the last dim).
        num_steps: SVI step limit.
        learning_rate: Adam learning rate (guide locations move in units of their scale).
        optimizer: any optax transformation, replacing the default Adam schedule.
        guide: ``"normal"`` (mean-field) or ``"lowrank"``.
        stop_at_plateau: stop SVI once the loss and the guide parameters have settled.
        num_draws: posterior draws taken from the SVI guide.
        num_warmup, num_samples, num_chains: NUTS settings.
        svi_steps_for_nuts: SVI steps that set the coefficients before NUTS.
        from_fit: an SVI fit of the same data and model whose coefficients and solution
            start NUTS (a fit loaded with :func:`tensorfact.load` works too).
        svi_start: how SVI (and so NUTS's coefficients) starts. ``"laplace"``: the scale
            hyperparameters at the Laplace mode of their marginal, then a Newton step of the
            location effects (each L-BFGS evaluation factorises the dense Hessian of all
            location dims: cubic in their number, minutes per evaluation at ~5,000 dims).
            ``"newton"``: only the Newton step, at the data-scaled initial scales (one dense
            factorisation); SVI then trains the scales. ``"auto"`` (default): ``"laplace"``
            up to :data:`LAPLACE_MAX_DIM` (2,500) location dims, ``"newton"`` above. The choice
            made is ``fit.info["svi_start"]``.
        coefficient_refreshes: how many times SVI refits the decorrelation coefficients at
            the guide's current median, at evenly spaced steps (the optimiser restarts from
            the refitted guide each time; each refit costs one Hessian of the location
            effects). ``"auto"`` (default): one per 500 steps with the Newton start, whose
            hyperparameters start far from where SVI takes them, none with the Laplace
            start. A fit without decorrelation has nothing to refit. The steps used are
            ``fit.info["svi_refreshes"]``.
        progress_bar: show progress bars.

    Returns:
        A :class:`~tensorfact.results.Fit` (save it with :meth:`~tensorfact.Fit.save`,
        continue SVI with :meth:`~tensorfact.Fit.resume`).

    Raises:
        TypeError: an argument of the wrong kind.
        ValueError: an argument with a wrong value (see the rules above).
        tensorfact.infer.NonFiniteLoss: the SVI loss became NaN or infinite; the exception
            reports the step and keeps the last finite parameters.
        FloatingPointError: posterior draws came out non-finite.
    """
    request = _Request(
        method=method, seed=check_seed(seed), num_steps=num_steps, learning_rate=learning_rate,
        optimizer=optimizer, guide=guide, stop_at_plateau=stop_at_plateau, num_draws=num_draws,
        num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
        svi_steps_for_nuts=svi_steps_for_nuts, svi_start=svi_start,
        coefficient_refreshes=coefficient_refreshes, progress_bar=progress_bar,
    )
    request.check()
    tensor, spec, switched = check_inputs(data, spec, dims=dims, time=time,
                                          decorrelate=decorrelate)
    previous = _check_from_fit(from_fit, tensor, spec, switched)
    return _run(request, tensor, spec, switched, previous)


@dataclass(frozen=True)
class _Request:
    """The settings of one :func:`fit` call."""

    method: str
    seed: Any
    num_steps: int
    learning_rate: float
    optimizer: Any
    guide: str
    stop_at_plateau: bool
    num_draws: int
    num_warmup: int
    num_samples: int
    num_chains: int
    svi_steps_for_nuts: int
    svi_start: str
    coefficient_refreshes: int | str
    progress_bar: bool

    def check(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("guide", self.guide, GUIDES)
        check_choice("svi_start", self.svi_start, SVI_STARTS)
        check_refreshes(self.coefficient_refreshes)
        for name in ("num_steps", "num_draws", "num_samples", "num_chains",
                     "svi_steps_for_nuts"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("num_warmup", self.num_warmup, allow_zero=True)
        check_positive_real("learning_rate", self.learning_rate)
        check_optimizer(self.optimizer)
        check_flag("stop_at_plateau", self.stop_at_plateau)
        check_flag("progress_bar", self.progress_bar)


def check_inputs(
    data: Any,
    spec: ModelSpec | None = None,
    *,
    dims: Sequence[str] | None = None,
    time: str | None = None,
    decorrelate: DecorrelateToggle = True,
) -> tuple[TensorData, ModelSpec, dict[str, bool]]:
    """Validates data, specification and decorrelation toggle as :func:`fit` does, without
    fitting (no JAX work; the input is not modified).

    Args:
        data, spec, dims, time, decorrelate: as for :func:`fit`.

    Returns:
        The validated data (a float64 copy), the specification (the default one if ``spec``
        is ``None``) and the decorrelation switch of every effect.

    Raises:
        TypeError, ValueError: naming the problem and the fix.
    """
    if time is not None and not isinstance(time, str):
        raise TypeError(f"time must be a dim name (a string), got {time!r}.")
    tensor = as_tensor_data(data, dims)
    spec = _resolve_spec(tensor, spec, time)
    switched = TensorModel(spec, tensor.sizes)._switched_on(decorrelate)
    return tensor, spec, switched


def _run(
    request: _Request,
    tensor: TensorData,
    spec: ModelSpec,
    switched: dict[str, bool],
    previous: Fit | None,
) -> Fit:
    """Everything after validation: the JAX part of :func:`fit`."""
    import jax
    import jax.numpy as jnp

    from tensorfact.infer import NonFiniteLoss, Plateau, fit_nuts, fit_svi
    from tensorfact.infer.nuts import warn_if_unhealthy

    key = _as_key(request.seed)
    if request.method == "exact":  # collapsed NUTS, no SVI: tensorfact.infer.exact
        from tensorfact.infer.exact import fit_exact

        return fit_exact(
            tensor, spec, rng_key=key, seed=int(request.seed) if isinstance(
                request.seed, (int, np.integer)) else 0, num_warmup=request.num_warmup,
            num_samples=request.num_samples, num_chains=request.num_chains,
            progress_bar=request.progress_bar,
        )
    model = TensorModel(spec, tensor.sizes)
    decorrelated = model.decorrelated(switched)
    args = (jnp.asarray(tensor.filled, jnp.float32), jnp.asarray(tensor.mask))
    started = perf_counter()
    if previous is not None:
        svi = previous._svi_fit()
        svi_settings = dict(previous._settings.get("svi", {}))
    else:
        steps = request.num_steps if request.method == "svi" else request.svi_steps_for_nuts
        start = resolve_svi_start(request.svi_start, model)
        surrogate = model.gaussian_surrogate()  # the start's Gaussian analysis (Student-t)
        try:
            svi = fit_svi(
                decorrelated, *args,
                point=model.initial_point(tensor.filled, tensor.mask),
                analysis=surrogate.decorrelated(switched) if surrogate is not model else None,
                laplace=start == "laplace", rng_key=key, num_steps=steps,
                refresh_at=refresh_steps(request.coefficient_refreshes, start, steps)
                if model.decorrelation_config(switched) else (),  # plain: nothing to refit
                learning_rate=request.learning_rate,
                optimizer=request.optimizer, guide=request.guide,
                stopping=Plateau() if request.stop_at_plateau else None,
                progress_bar=request.progress_bar,
                cache_key=model_cache_key(spec, tensor.sizes, switched),
            )
        except NonFiniteLoss as err:
            raise err.with_hint(_nan_hint(request)) from None
        svi_settings = {"learning_rate": float(request.learning_rate), "guide": request.guide,
                        "custom_optimizer": request.optimizer is not None}
    info: dict[str, Any] = {
        "svi_steps": len(svi.run.losses), "svi_stopped": svi.run.stopped,
        "svi_seconds": svi.run.seconds, "svi_refreshes": [int(s) for s in svi.refreshes],
    }
    if previous is None:
        info["svi_start"] = start
    sites = (list(svi.start.point) if svi.start is not None
             else list(previous._settings["sites"]))  # every latent site, model coordinates
    effects = [e.name for e in spec.effects if e.name not in sites]  # e.g. scan transitions
    returned = sites + effects + list(model.noise_deterministics)
    settings = {"key": [int(k) for k in np.asarray(key)], "num_draws": request.num_draws,
                "sites": sites, "returned": returned, "svi": svi_settings}
    if request.method == "svi":
        posterior = svi_posterior(svi, settings, model, tensor)
        diagnostics = None
    else:
        nuts = fit_nuts(
            decorrelated, *args, coefficients=svi.coefficients,
            init_values=svi.guide.median(svi.run.params), rng_key=jax.random.fold_in(key, 2),
            num_warmup=request.num_warmup, num_samples=request.num_samples,
            num_chains=request.num_chains, report_sites=sites,
            progress_bar=request.progress_bar, warn=False,
            params=svi.run.params,  # e.g. a learnable centring SVI trained (scan effects)
        )
        warn_if_unhealthy(  # stacklevel 4: points at the caller of fit()
            nuts.diagnostics, stacklevel=4,
            advice="Run longer (raise num_warmup and num_samples), start from a longer SVI "
            "fit (svi_steps_for_nuts= or from_fit=), or compare with decorrelate=False.",
        )
        check_finite_draws(nuts.samples, "NUTS")
        posterior = posterior_dataset(nuts.samples, model, tensor)
        diagnostics = nuts.diagnostics
        info["nuts_seconds"] = diagnostics.seconds
    info["seconds"] = perf_counter() - started
    return Fit(
        method=request.method,
        spec=spec,
        data=tensor,
        posterior=posterior,
        decorrelate=switched,
        losses=np.asarray(svi.run.losses),
        coefficients={k: np.asarray(v) for k, v in svi.coefficients.items()},
        diagnostics=diagnostics,
        seed=int(request.seed) if isinstance(request.seed, (int, np.integer)) else 0,
        info=info,
        _svi=svi,
        _settings=settings,
    )


def _nan_hint(request: _Request) -> str:
    if request.optimizer is not None:
        change = ("Use a smaller learning rate in the optimizer you passed, or chain it with "
                  "gradient clipping (optax.chain(optax.clip_by_global_norm(1.0), ...)).")
    else:
        change = (f"Pass a smaller learning_rate (now {request.learning_rate:g}), or an "
                  "optimizer with gradient clipping via optimizer=.")
    return (change + " Also check the data for extreme values (rescale them so the "
            "observations are of order 1-100) and try decorrelate=False to rule out the "
            "decorrelation.")


def _resolve_spec(tensor: TensorData, spec: ModelSpec | None, time: str | None) -> ModelSpec:
    if spec is None:
        spec = default_spec(tensor.dims, time)
    elif not isinstance(spec, ModelSpec):
        raise TypeError(
            f"spec must be a tensorfact ModelSpec, got {type(spec).__name__}; build one with "
            "tensorfact.default_spec(dims) or ModelSpec(...)."
        )
    else:
        if tuple(spec.dims) != tensor.dims:
            missing = [d for d in spec.dims if d not in tensor.dims]
            problem = (f"names dims {missing} that the data lack" if missing
                       else "orders the dims differently")
            raise ValueError(
                f"The spec is for dims {spec.dims} but the data have dims {tensor.dims} (it "
                f"{problem}); build the spec for the data's dims, in the same order."
            )
        if time is not None and time != spec.time:
            raise ValueError(
                f"time={time!r} disagrees with the spec's time dim {spec.time!r}; drop time= "
                "(the spec's is used) or build the spec with that time dim."
            )
    check_time_coordinate(tensor, spec.time)
    length = tensor.sizes[spec.time]
    for effect in spec.effects:
        if isinstance(effect, Temporal) and length < MIN_TIME_STEPS[effect.kind]:
            raise ValueError(
                f"The time dim {spec.time!r} has {length} step(s); a {effect.kind} effect "
                f"({effect.name!r}) needs at least {MIN_TIME_STEPS[effect.kind]}. Drop the "
                "temporal effects (build a spec without them) or use longer series."
            )
    return spec


def _as_key(seed: Any) -> Any:
    """A raw ``uint32[2]`` key from a checked seed (typed keys are unwrapped)."""
    import jax

    if isinstance(seed, (int, np.integer)):
        return jax.random.PRNGKey(int(seed))
    if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(seed)
    return seed


def _check_from_fit(
    previous: Any, tensor: TensorData, spec: ModelSpec, switched: Mapping[str, bool]
) -> Fit | None:
    if previous is None:
        return None
    if not isinstance(previous, Fit):
        raise TypeError(
            f"from_fit must be a tensorfact Fit, got {type(previous).__name__}; pass the result "
            "of tensorfact.fit(..., method='svi') or tensorfact.load(path)."
        )
    if not previous._has_svi():
        raise ValueError(
            "from_fit must be an SVI-based fit (it has no trained guide); fit with "
            "method='svi' first."
        )
    same = (
        previous.spec == spec
        and previous.data.dims == tensor.dims
        and np.array_equal(previous.data.values, tensor.values, equal_nan=True)
        and previous.decorrelate == dict(switched)
    )
    if not same:
        raise ValueError(
            "from_fit must be a fit of the same data, spec and decorrelation; pass the same "
            "data, spec and decorrelate= as for that fit, or drop from_fit."
        )
    return previous
