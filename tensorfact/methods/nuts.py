"""``method="nuts"``: NUTS on the decorrelated tensor model, its coefficients frozen at those of
an SVI fit (a short one run here, or ``from_fit``), started from that fit's median."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from time import perf_counter

import jax
import numpy as np

from reparam.infer.nuts import warn_if_unhealthy
from reparam.infer.workflow import fit_nuts
from tensorfact.data import TensorData
from tensorfact.methods.settings import FitSettings, seed_of
from tensorfact.methods.svi import model_arguments, record_of, svi_info, train, trained_guide
from tensorfact.model.tensor import TensorModel
from tensorfact.results.fit import Fit
from tensorfact.results.labels import check_finite_draws, posterior_dataset
from tensorfact.results.record import NUTSRecord
from tensorfact.spec import ModelSpec

ADVICE = ("Run longer (raise num_warmup and num_samples), start from a longer SVI fit "
          "(svi_steps_for_nuts= or from_fit=), or compare with decorrelate=False.")


def fit_by_nuts(
    settings: FitSettings,
    data: TensorData,
    spec: ModelSpec,
    switched: Mapping[str, bool],
    key: jax.Array,
    previous: Fit | None = None,
) -> Fit:
    """A ``method="nuts"`` fit of validated data.

    Args:
        settings: the fit's settings.
        data, spec, switched: validated data, specification and decorrelation switches.
        key: the fit's PRNG key (SVI uses it, NUTS ``fold_in(key, 2)``).
        previous: an SVI fit of the same data and model whose coefficients and median start
            NUTS (no SVI runs then).

    Raises:
        FloatingPointError: if a draw is not finite.
    """
    started = perf_counter()
    model = TensorModel(spec, data.sizes)
    if previous is not None:
        svi = trained_guide(previous)
        record = record_of(settings, svi, model, key, previous._record)
        info = svi_info(svi)
    else:
        svi, start = train(settings, data, spec, switched, key)
        record = record_of(settings, svi, model, key)
        info = {**svi_info(svi), "svi_start": start}
    nuts = fit_nuts(
        model.decorrelated(switched), *model_arguments(data, settings.devices),
        coefficients=svi.coefficients,
        init_values=svi.guide.median(svi.run.params), rng_key=jax.random.fold_in(key, 2),
        num_warmup=settings.num_warmup, num_samples=settings.num_samples,
        num_chains=settings.num_chains, report_sites=list(record.sites),
        progress_bar=settings.progress_bar, warn=False,
        params=svi.run.params,  # e.g. a learnable centring SVI trained (scan effects)
    )
    warn_if_unhealthy(nuts.diagnostics, stacklevel=5, advice=ADVICE)  # the caller of fit()
    check_finite_draws(nuts.samples, "NUTS")
    info["nuts_seconds"] = nuts.diagnostics.seconds
    info["seconds"] = perf_counter() - started
    record = replace(record, nuts=NUTSRecord(settings.num_warmup, settings.num_samples,
                                             settings.num_chains))
    return Fit(
        method="nuts", spec=spec, data=data,
        posterior=posterior_dataset(nuts.samples, spec, data), decorrelate=dict(switched),
        losses=np.asarray(svi.run.losses),
        coefficients={k: np.asarray(v) for k, v in svi.coefficients.items()},
        diagnostics=nuts.diagnostics, seed=seed_of(settings.seed), info=info, _svi=svi,
        _record=record,
    )
