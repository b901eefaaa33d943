"""``tensorfact.fit``: DataArray in, labelled Bayesian decomposition out.

Every argument is checked before any JAX work starts (:func:`check_inputs` for the data, the
specification and the decorrelation toggle; :mod:`tensorfact.checks` for the settings), so a
malformed call fails at once with a ``TypeError`` or ``ValueError`` that names the problem and
the fix, and the user's data are never modified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import optax

from tensorfact.checks import check_seed
from tensorfact.data import TensorData, as_tensor_data, check_time_coordinate
from tensorfact.methods.settings import DEFAULTS as D
from tensorfact.methods.settings import FitSettings, GuideKind, Method, SviStart, as_key, seed_of
from tensorfact.model.tensor import DecorrelateToggle, TensorModel
from tensorfact.results.fit import Fit
from tensorfact.spec import MIN_TIME_STEPS, ModelSpec, Temporal, default_spec


def fit(
    data: Any,
    spec: ModelSpec | None = None,
    *,
    method: Method = D.method,
    decorrelate: DecorrelateToggle = True,
    seed: int | Any = D.seed,
    dims: Sequence[str] | None = None,
    time: str | None = None,
    num_steps: int = D.num_steps,
    learning_rate: float = D.learning_rate,
    optimizer: optax.GradientTransformation | None = None,
    guide: GuideKind = D.guide,
    stop_at_plateau: bool = D.stop_at_plateau,
    num_draws: int = D.num_draws,
    num_warmup: int = D.num_warmup,
    num_samples: int = D.num_samples,
    num_chains: int = D.num_chains,
    svi_steps_for_nuts: int = D.svi_steps_for_nuts,
    from_fit: Fit | None = None,
    svi_start: SviStart = D.svi_start,
    coefficient_refreshes: int | Literal["auto"] = D.coefficient_refreshes,
    progress_bar: bool = D.progress_bar,
    devices: int | str | Sequence[Any] = D.devices,
    batch_size: int | None = D.batch_size,
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
        devices: the devices the data's cells are split over for SVI and NUTS (data-parallel
            likelihood, effects replicated: :mod:`reparam.infer.sharding`): ``"auto"`` (every
            visible device; one on a plain CPU machine), a number, or a list of
            ``jax.Device``. The data are split along the longest axis whose length a number of
            devices divides (as many devices as divide one); results equal one device's up to
            the order of floating-point sums. ``fit.info["devices"]`` is the number used.
            ``method="exact"`` runs on one device.
        batch_size: SVI observes a random minibatch of this many cells per step (missing
            cells included, masked), scaled so the ELBO and its gradient are unbiased
            (:mod:`tensorfact.model.minibatch`); the start and the coefficient refreshes use
            every cell, and so does NUTS. ``None`` (default): every cell at every step.

    Returns:
        A :class:`~tensorfact.results.fit.Fit` (save it with :meth:`~tensorfact.Fit.save`,
        continue SVI with :meth:`~tensorfact.Fit.resume`).

    Raises:
        TypeError: an argument of the wrong kind.
        ValueError: an argument with a wrong value (see the rules above).
        reparam.infer.NonFiniteLoss: the SVI loss became NaN or infinite; the exception
            reports the step and keeps the last finite parameters.
        FloatingPointError: posterior draws came out non-finite.
    """
    settings = FitSettings(
        method=method, seed=check_seed(seed), num_steps=num_steps, learning_rate=learning_rate,
        optimizer=optimizer, guide=guide, stop_at_plateau=stop_at_plateau, num_draws=num_draws,
        num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
        svi_steps_for_nuts=svi_steps_for_nuts, svi_start=svi_start,
        coefficient_refreshes=coefficient_refreshes, progress_bar=progress_bar,
        devices=devices, batch_size=batch_size,
    )
    settings.check()
    tensor, spec, switched = check_inputs(data, spec, dims=dims, time=time,
                                          decorrelate=decorrelate)
    settings.check_batch(int(np.prod(list(tensor.sizes.values()))))
    previous = _check_from_fit(from_fit, tensor, spec, switched)
    return _run(settings, tensor, spec, switched, previous)


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
    settings: FitSettings,
    tensor: TensorData,
    spec: ModelSpec,
    switched: dict[str, bool],
    previous: Fit | None,
) -> Fit:
    """Everything after validation: hands over to the method (:mod:`tensorfact.methods`)."""
    key = as_key(settings.seed)
    if settings.method == "exact":
        from tensorfact.methods.exact import fit_exact

        return fit_exact(
            tensor, spec, rng_key=key, seed=seed_of(settings.seed),
            num_warmup=settings.num_warmup, num_samples=settings.num_samples,
            num_chains=settings.num_chains, progress_bar=settings.progress_bar,
        )
    if settings.method == "nuts":
        from tensorfact.methods.nuts import fit_by_nuts

        return fit_by_nuts(settings, tensor, spec, switched, key, previous)
    from tensorfact.methods.svi import fit_by_svi

    return fit_by_svi(settings, tensor, spec, switched, key)


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


def load(path: Any, transitions: Mapping[str, Any] | None = None) -> Fit:
    """Reads a fit written by :meth:`Fit.save`.

    The loaded fit has the same posterior, losses, coefficients, spec and record, so
    ``summary()`` and ``predict()`` give identical results; an SVI fit can be resumed
    (:meth:`Fit.resume`) and used as ``from_fit`` for NUTS.

    Args:
        path: the file.
        transitions: effect name -> transition, for temporal effects fitted with a
            user-written ``transition`` (callables cannot be saved). Without them the
            posterior, ``summary()`` and ``predict()`` work, but resuming does not.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file is not a tensorfact fit (or from another format version).
    """
    from reparam.infer.nuts import NUTSDiagnostics
    from tensorfact.methods.svi import resume_fit
    from tensorfact.results.io import read_fields

    fields = read_fields(path, transitions, {"NUTSDiagnostics": NUTSDiagnostics})
    return Fit(**fields, _resumer=resume_fit if fields["method"] == "svi" else None)
