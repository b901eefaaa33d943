"""``method="exact"``: collapsed NUTS over the hyperparameters, exact draws of the effects.

For a Gaussian likelihood the location effects are Gaussian given the hyperparameters ``h``,
so :func:`fit_exact` runs NUTS on ``log p(h) + log p(y_obs | h)`` (the location effects
integrated out exactly, :mod:`tensorfact.collapsed`) and draws, for every posterior draw of
``h``, one exact sample of the effects from ``p(theta | y_obs, h)``. The result is the same
labelled :class:`~tensorfact.results.fit.Fit` as the other methods (posterior with ``chain, draw``
and the data's dims and coordinates, NUTS diagnostics from ArviZ).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import jax
import numpy as np

from reparam.infer.nuts import warn_if_unhealthy
from tensorfact.collapsed.sampler import collapsed_nuts
from tensorfact.data import TensorData
from tensorfact.model.tensor import TensorModel
from tensorfact.results.fit import Fit
from tensorfact.results.labels import check_finite_draws, posterior_dataset
from tensorfact.results.record import FitRecord, NUTSRecord
from tensorfact.spec import ModelSpec, Temporal


def check_exact_spec(spec: ModelSpec) -> None:
    """Refuses specifications the collapsed computation does not cover.

    Raises:
        ValueError: for Student-t or time-varying noise (the effects' conditional is then not
            Gaussian with a known covariance), or a temporal effect with a user-written
            ``transition`` (its prior is not a built-in linear-Gaussian one the structured
            algebra knows).
    """
    noise = spec.noise
    if noise.family != "normal" or noise.time_by is not None:
        what = ("Student-t noise" if noise.family != "normal"
                else f"a noise scale that changes over time (time_by={noise.time_by!r})")
        raise ValueError(
            f"method='exact' integrates the effects out under Gaussian noise with a constant "
            f"scale per series, but the spec has {what}; fit it with method='svi' or 'nuts', "
            "or use Noise(per_series=...) without family/time_by for method='exact'."
        )
    scanned = [e.name for e in spec.effects if isinstance(e, Temporal) and e.transition]
    if scanned:
        raise ValueError(
            f"method='exact' needs built-in temporal priors, but {scanned} use a transition=; "
            "use kind='random_walk', 'ar1' or 'local_linear_trend' for them, or fit with "
            "method='svi' or 'nuts'."
        )


def fit_exact(
    data: TensorData,
    spec: ModelSpec,
    *,
    rng_key: jax.Array,
    seed: int | None = 0,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 4,
    progress_bar: bool = False,
    warn: bool = True,
) -> Fit:
    """Collapsed NUTS fit of validated data (called by ``tensorfact.fit(method="exact")``).

    Args:
        data: validated data (:func:`tensorfact.check_inputs`).
        spec: the model specification (Gaussian likelihood, built-in priors).
        rng_key: PRNG key (NUTS and the conditional draws).
        seed: the seed recorded in the fit (``None``: a JAX key was given).
        num_warmup, num_samples, num_chains: NUTS settings.
        progress_bar: NumPyro's progress bar.
        warn: ``RuntimeWarning`` with the numbers if r-hat, ESS or divergences look bad.

    Returns:
        A :class:`~tensorfact.results.fit.Fit` with ``method="exact"``; ``diagnostics`` cover every
        returned site (hyperparameters and effects), ``info`` holds the timings and the
        structured algebra used (``"kronecker"`` for complete data with shared noise, else
        ``"kalman"``).

    Raises:
        ValueError: for an unsupported specification (:func:`check_exact_spec`).
        FloatingPointError: if draws come out non-finite.
    """
    check_exact_spec(spec)
    model = TensorModel(spec, data.sizes)
    started = perf_counter()
    run = collapsed_nuts(
        model, data.filled, data.mask, rng_key=rng_key, num_warmup=num_warmup,
        num_samples=num_samples, num_chains=num_chains,
        init_values=model.initial_hyperparameters(data.filled, data.mask),
        chain_method="auto", progress_bar=progress_bar, warn=False,
    )
    if warn:
        warn_if_unhealthy(
            run.diagnostics, stacklevel=5,
            advice="Run longer (raise num_warmup and num_samples) or check the data scale.",
        )
    check_finite_draws(run.samples, "Exact (collapsed NUTS)")
    posterior = posterior_dataset(run.samples, spec, data)
    info: dict[str, Any] = {
        "seconds": perf_counter() - started,
        "nuts_seconds": run.diagnostics.seconds - run.draw_seconds,
        "draw_seconds": run.draw_seconds,
        "hyper_max_rhat": run.hyper_diagnostics.max_rhat,
        "hyper_min_ess": run.hyper_diagnostics.min_ess,
        "algebra": run.algebra,
    }
    returned = tuple(str(name) for name in posterior.data_vars)
    record = FitRecord(key=tuple(int(k) for k in np.asarray(rng_key)), sites=returned,
                       returned=returned,
                       nuts=NUTSRecord(num_warmup, num_samples, num_chains))
    return Fit(
        method="exact",
        spec=spec,
        data=data,
        posterior=posterior,
        decorrelate=dict.fromkeys(spec.effect_names, False),
        losses=None,
        coefficients={},
        diagnostics=run.diagnostics,
        seed=seed,
        info=info,
        _record=record,
    )
