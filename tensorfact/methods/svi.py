"""``method="svi"``: the decorrelated tensor model trained by SVI from its Gaussian start;
also restoring and resuming the trained guide of a fit (the resumer :class:`Fit` calls).

The model arguments, the optimizer and the record are built here once; fitting, restoring a
saved fit and resuming all use the same functions (:func:`model_arguments`,
:func:`optimizer_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from time import perf_counter
from typing import Any

import jax
import numpy as np
import optax

import reparam
from reparam.infer.sharding import shard_cells
from reparam.infer.svi import NonFiniteLoss, Plateau
from reparam.infer.workflow import (
    SVIFit,
    default_optimizer,
    fit_svi,
    optimizer_key,
    restore_svi,
    resume_svi,
)
from reparam.local.laplace import LaplaceMode
from tensorfact.collapsed.mode import collapsed_mode
from tensorfact.data import TensorData
from tensorfact.methods.exact import check_exact_spec
from tensorfact.methods.settings import (
    FitSettings,
    refresh_steps,
    resolve_svi_start,
    seed_of,
)
from tensorfact.model.block_gaussian import BlockGaussian, SurrogateGaussian, block_support
from tensorfact.model.tensor import TensorModel
from tensorfact.results.fit import Fit
from tensorfact.results.labels import check_finite_draws, posterior_dataset
from tensorfact.results.record import FitRecord, SVIRecord
from tensorfact.spec import ModelSpec


def model_arguments(data: TensorData, devices: Any = 1) -> tuple[jax.Array, jax.Array]:
    """``(y, mask)`` as the tensor model takes them (float32 data, NaN cells filled), split
    over ``devices`` along one data axis (:func:`reparam.infer.sharding.shard_cells`)."""
    arrays = (np.asarray(data.filled, np.float32), np.asarray(data.mask))
    return shard_cells(arrays, devices)[0]


def exact_mode(start: str, model: TensorModel, data: TensorData,
               point: Mapping[str, Any]) -> LaplaceMode | None:
    """The Laplace start's hyperparameters from the exact collapsed marginal where it applies
    (Gaussian noise, built-in priors: :func:`~tensorfact.collapsed.mode.collapsed_mode`, the
    same mode without the dense matrix of :func:`reparam.laplace_mode`); else ``None``."""
    if start != "laplace":
        return None
    try:
        check_exact_spec(model.spec)
    except ValueError:
        return None
    return collapsed_mode(model, data.filled, data.mask, point)


def block_analysis(analysis: reparam.DecorrelateMessenger, surrogate: TensorModel,
                   point: Mapping[str, Any], arguments: tuple) -> reparam.LocalGaussian:
    """The start's local Gaussian analysis by Helmert blocks (no dense matrix over the
    location effects: :mod:`tensorfact.model.block_gaussian`) where it applies, else the
    dense one (or, for a plain model, the matrix-free start :func:`reparam.initialize` picks);
    both know that the surrogate is Gaussian, so one Newton step reaches the mode."""
    if block_support(surrogate, analysis) is not None:
        return SurrogateGaussian(analysis, point, *arguments)
    return BlockGaussian(analysis, surrogate, point, *arguments)


def train(
    settings: FitSettings,
    data: TensorData,
    spec: ModelSpec,
    switched: Mapping[str, bool],
    key: jax.Array,
) -> tuple[SVIFit, str]:
    """Trains the guide of a new fit from the Gaussian start; returns it and the start used.

    Raises:
        NonFiniteLoss: with advice matching the settings (:func:`nan_hint`).
    """
    model = TensorModel(spec, data.sizes, batch_size=settings.batch_size)
    start = resolve_svi_start(settings.svi_start, model)
    # the start's Gaussian analysis: every cell (Student-t: its Gaussian surrogate)
    surrogate = model.gaussian_surrogate().full_batch()
    point = model.initial_point(data.filled, data.mask)
    steps = settings.svi_steps
    refresh = (refresh_steps(settings.coefficient_refreshes, start, steps)
               if model.decorrelation_config(switched) else ())  # plain: nothing to refit
    arguments = model_arguments(data, settings.devices)
    analysis = surrogate.decorrelated(switched)
    try:
        svi = fit_svi(
            model.decorrelated(switched), *arguments,
            point=point,
            analysis=analysis if surrogate is not model else None,
            local=block_analysis(analysis, surrogate, point, arguments),
            laplace=start == "laplace", mode=exact_mode(start, surrogate, data, point),
            rng_key=key, num_steps=steps, refresh_at=refresh,
            learning_rate=settings.learning_rate, optimizer=settings.optimizer,
            guide=settings.guide, stopping=Plateau() if settings.stop_at_plateau else None,
            progress_bar=settings.progress_bar,
        )
    except NonFiniteLoss as err:
        raise err.with_hint(nan_hint(settings)) from None
    return svi, start


def fit_by_svi(
    settings: FitSettings,
    data: TensorData,
    spec: ModelSpec,
    switched: Mapping[str, bool],
    key: jax.Array,
) -> Fit:
    """A ``method="svi"`` fit of validated data: train, draw, label."""
    started = perf_counter()
    svi, start = train(settings, data, spec, switched, key)
    record = record_of(settings, svi, TensorModel(spec, data.sizes), key)
    posterior = draw_posterior(svi, record, spec, data)
    info = {**svi_info(svi), "svi_start": start, "seconds": perf_counter() - started}
    return Fit(
        method="svi", spec=spec, data=data, posterior=posterior, decorrelate=dict(switched),
        losses=np.asarray(svi.run.losses),
        coefficients={k: np.asarray(v) for k, v in svi.coefficients.items()},
        seed=seed_of(settings.seed), info=info, _svi=svi, _record=record,
        _resumer=resume_fit,
    )


def nan_hint(settings: FitSettings) -> str:
    """What to change after a non-finite SVI loss, for these settings."""
    if settings.optimizer is not None:
        change = ("Use a smaller learning rate in the optimizer you passed, or chain it with "
                  "gradient clipping (optax.chain(optax.clip_by_global_norm(1.0), ...)).")
    else:
        change = (f"Pass a smaller learning_rate (now {settings.learning_rate:g}), or an "
                  "optimizer with gradient clipping via optimizer=.")
    return (change + " Also check the data for extreme values (rescale them so the "
            "observations are of order 1-100) and try decorrelate=False to rule out the "
            "decorrelation.")


def record_of(
    settings: FitSettings, svi: SVIFit, model: TensorModel, key: jax.Array,
    previous: FitRecord | None = None,
) -> FitRecord:
    """The record of a fit whose guide is ``svi`` (from ``previous`` when it continues one)."""
    if previous is not None:
        sites, svi_record = previous.sites, previous.svi
    else:
        sites = tuple(svi.start.point)  # every latent site, model coordinates
        svi_record = SVIRecord(learning_rate=float(settings.learning_rate),
                               guide=settings.guide,
                               custom_optimizer=settings.optimizer is not None,
                               batch_size=settings.batch_size)
    effects = tuple(e.name for e in model.spec.effects if e.name not in sites)  # e.g. scans
    return FitRecord(
        key=tuple(int(k) for k in np.asarray(key)), sites=tuple(sites),
        returned=(*sites, *effects, *model.noise_deterministics),
        num_draws=settings.num_draws, svi=svi_record,
    )


def svi_info(svi: SVIFit) -> dict[str, Any]:
    """The facts about SVI that a fit reports in ``info``."""
    return {"svi_steps": len(svi.run.losses), "svi_stopped": svi.run.stopped,
            "svi_seconds": svi.run.seconds, "svi_refreshes": [int(s) for s in svi.refreshes],
            "devices": devices_used(svi.args), "batch_size": model_batch(svi)}


def model_batch(svi: SVIFit) -> int | None:
    """Cells per SVI minibatch of a trained guide (``None``: every cell)."""
    inner = getattr(getattr(svi.model, "decorrelated", svi.model), "fn", None)
    return getattr(inner, "batch_size", None)


def devices_used(args: tuple) -> int:
    """The number of devices the data arguments of a fit are split over."""
    return max(len(a.sharding.device_set) if isinstance(a, jax.Array) else 1 for a in args)


def draw_posterior(svi: SVIFit, record: FitRecord, spec: ModelSpec, data: TensorData) -> Any:
    """``record.num_draws`` labelled draws from the guide (key: the fit's key folded with 1).

    Raises:
        FloatingPointError: if a draw is not finite.
    """
    key = jax.random.fold_in(np.asarray(record.key, np.uint32), 1)
    draws = svi.draws(key, record.num_draws, record.returned)
    draws = {k: v[None] for k, v in draws.items()}
    check_finite_draws(draws, "SVI")
    return posterior_dataset(draws, spec, data)


def optimizer_of(record: SVIRecord) -> optax.GradientTransformation:
    """The default optimizer a fit was trained with, rebuilt from its record."""
    return default_optimizer(record.learning_rate, relative=record.guide == "normal")


def trained_guide(fit: Fit, optimizer: Any = None, resumable: bool = False) -> SVIFit:
    """The trained guide of ``fit``; for a loaded fit restored from its saved state (and kept
    on the fit when it can continue training).

    Args:
        fit: an SVI-based fit.
        optimizer: only for a loaded fit trained with a custom ``optimizer=``: the same one.
        resumable: require the optimiser state (to continue training). Without it, a fit
            trained with a custom optimizer is restored for its guide only.

    Raises:
        ValueError: no trained guide, or an ``optimizer`` that is missing or not wanted.
    """
    if fit._svi is not None:
        if optimizer is not None:
            raise ValueError(
                "optimizer= is only for fits loaded from a file that were trained with a "
                "custom optimizer; this fit resumes with the optimizer it was trained with."
            )
        return fit._svi
    if not (fit._saved and fit._saved.get("leaves")) or fit._record is None:
        raise ValueError(f"This {fit.method} fit has no trained SVI guide.")
    svi = _restore(fit, optimizer, resumable)
    if svi.run.runner is not None:
        fit._svi = svi
    return svi


def _restore(fit: Fit, optimizer: Any, resumable: bool) -> SVIFit:
    record = fit._record.svi
    leaves, shared = fit._saved["leaves"], None
    if optimizer is None and record.custom_optimizer:
        if resumable:
            raise ValueError(
                "This fit was trained with a custom optimizer, which cannot be saved; resume "
                "it with the same transformation: fit.resume(num_steps, optimizer=...)."
            )
        optimizer, leaves = optax.identity(), None  # guide only: take the saved params
    elif optimizer is None:
        optimizer = optimizer_of(record)
        shared = optimizer_key(record.learning_rate, record.guide == "normal")
    model = TensorModel(fit.spec, fit.data.sizes, batch_size=record.batch_size)
    return restore_svi(
        model.decorrelated(fit.decorrelate), *model_arguments(fit.data, devices_of(fit)),
        coefficients=fit.coefficients, guide=record.guide, optimizer=optimizer,
        leaves=leaves, losses=fit.losses, params=fit._saved["params"],
        stopped=fit._saved.get("stopped", "max_steps"), optimizer_key=shared,
    )


def devices_of(fit: Fit) -> int | str:
    """The devices a restored fit runs on: as many as it was fitted on where this process
    sees that many, else all it sees."""
    count = int(fit.info.get("devices", 1))
    return count if count <= len(jax.devices()) else "auto"


def resume_fit(
    fit: Fit, num_steps: int, *, stop_at_plateau: bool, optimizer: Any, progress_bar: bool
) -> Fit:
    """:meth:`Fit.resume` of an SVI fit: ``num_steps`` more steps, draws redrawn."""
    svi = trained_guide(fit, optimizer, resumable=True)
    stopping = Plateau() if stop_at_plateau else None
    svi = resume_svi(svi, num_steps, stopping=stopping, progress_bar=progress_bar)
    run = svi.run
    info = {
        **fit.info,
        "svi_steps": len(run.losses),
        "svi_stopped": run.stopped,
        "svi_seconds": float(fit.info.get("svi_seconds", 0.0)) + run.seconds,
        "resumed": [*fit.info.get("resumed", []), int(num_steps)],
    }
    return replace(
        fit,
        posterior=draw_posterior(svi, fit._record, fit.spec, fit.data),
        losses=np.asarray(run.losses),
        info=info,
        _svi=svi,
        _saved=None,
    )
