"""Collapsed NUTS: NUTS over the hyperparameters with the location effects integrated out,
then one exact conditional draw of the location effects per posterior draw.

The target of NUTS is the hyperparameters' marginal posterior (in NumPyro's unconstrained
coordinates, Jacobians included by NumPyro):

    log p(h | y_obs) = log p(h) + log p(y_obs | h) + const,

with ``log p(h)`` from the model's own hyperparameter sites
(:meth:`TensorModel._sample_hyperparameters`) and ``log p(y_obs | h)`` the exact collapsed
likelihood of :class:`~tensorfact.collapsed.kalman.CollapsedGaussian` added as a
``numpyro.factor``. For each draw ``h^(k)``, ``theta^(k) ~ p(theta | y_obs, h^(k))`` exactly, so
``(h^(k), theta^(k))`` are draws from the joint posterior of the original model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from reparam.infer.chains import run_chains
from reparam.infer.nuts import NUTSDiagnostics, warn_if_unhealthy
from tensorfact.collapsed.kalman import CollapsedGaussian
from tensorfact.collapsed.kronecker import KroneckerGaussian, kronecker_unsupported
from tensorfact.collapsed.series import SeriesData
from tensorfact.collapsed.structured import StructuredGaussian
from tensorfact.model.tensor import TensorModel

FACTOR_SITE = "collapsed_log_marginal"
ALGEBRAS = ("auto", "kronecker", "kalman")
# The Kronecker path costs O(T^3) per evaluation (four dense T x T factors), the Kalman path
# O(T (p^3 + p^2 S + p S^2)). Measured at I x J = 20 x 10 (experiments/scaling_exact.py,
# seconds per log marginal + gradient): Kronecker 0.0039 / 0.058 / 1.41 against Kalman
# 0.079 / 0.177 / 0.747 at T = 100 / 300 / 1000, so "auto" uses Kronecker up to this many steps.
KRONECKER_MAX_STEPS = 400


@dataclass
class CollapsedNUTSRun:
    """Result of :func:`collapsed_nuts`.

    Attributes:
        samples: site name -> draws with leading ``(chain, draw)`` dims, for the
            hyperparameters (and deterministic ``sigma_series``) and the location sites, named
            as in the NumPyro model.
        diagnostics: over ``report_sites`` (default: every site), ``seconds`` including the
            conditional draws.
        hyper_diagnostics: of the NUTS run over the hyperparameters alone (the chains run as
            one compiled function, :func:`reparam.infer.chains.run_chains`).
        draw_seconds: wall time of the conditional draws (included in ``diagnostics``).
        algebra: ``"kronecker"`` or ``"kalman"``, the structured path used.
    """

    samples: dict[str, np.ndarray]
    diagnostics: NUTSDiagnostics
    hyper_diagnostics: NUTSDiagnostics
    draw_seconds: float
    algebra: str = "kalman"


def collapsed_gaussian(
    model: TensorModel, y: np.ndarray, mask: np.ndarray, algebra: str = "auto"
) -> StructuredGaussian:
    """The collapsed Gaussian of a model and data by the chosen linear algebra.

    Args:
        model: the tensor model.
        y: data in the model's dim order (NaN allowed where ``mask`` is false).
        mask: true where a cell is observed.
        algebra: ``"kronecker"`` (complete data, shared noise, no horseshoe; cost ``O(T^3)``
            per evaluation whatever the number of series), ``"kalman"`` (any data and
            specification; cost linear in ``T``) or ``"auto"`` (Kronecker where it applies and
            ``T <= KRONECKER_MAX_STEPS``, else Kalman).

    Raises:
        ValueError: for an unknown ``algebra``, or ``"kronecker"`` where it does not apply.
    """
    if algebra not in ALGEBRAS:
        raise ValueError(f"algebra must be one of {ALGEBRAS}, got {algebra!r}.")
    if algebra == "auto":
        fits = kronecker_unsupported(model, np.asarray(mask, bool)) is None
        short = model.sizes[model.spec.time] <= KRONECKER_MAX_STEPS
        algebra = "kronecker" if fits and short else "kalman"
    if algebra == "kronecker":
        return KroneckerGaussian(model, y, mask)
    return CollapsedGaussian(model, y, mask)


def collapsed_model(
    gaussian: StructuredGaussian,
) -> Callable[[SeriesData], None]:
    """NumPyro model over the hyperparameters: their priors plus ``log p(y_obs | h)``.

    The returned model takes the series data (``gaussian.data``) as its argument.
    """

    def model(data: SeriesData) -> None:
        hyper = gaussian.model._sample_hyperparameters()
        numpyro.factor(FACTOR_SITE, gaussian.log_marginal(hyper, data))

    return model


def draw_locations(
    gaussian: StructuredGaussian,
    hyper: Mapping[str, Any],
    rng_key: jax.Array,
    *,
    batch_size: int | None = 64,
) -> dict[str, jax.Array]:
    """One exact conditional draw of the location sites per hyperparameter draw.

    Args:
        gaussian: the structured Gaussian of the model and data.
        hyper: site name -> draws with one leading draw axis (``(n, ...)``).
        rng_key: PRNG key (split into one key per draw).
        batch_size: draws computed together (vectorised) inside the sequential map; ``None``
            computes them one at a time.

    Returns:
        Location site name -> ``(n, *site shape)``.
    """
    num = len(next(iter(hyper.values())))
    keys = jax.random.split(rng_key, num)

    def one(args, data):
        values, key = args
        return gaussian.sample(values, key, data)

    def run(hyper, keys, data):
        return jax.lax.map(lambda a: one(a, data), (hyper, keys), batch_size=batch_size)

    data = jax.tree_util.tree_map(jnp.asarray, gaussian.data)
    return jax.jit(run)(dict(hyper), keys, data)


def collapsed_nuts(
    model: TensorModel,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    rng_key: jax.Array,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 4,
    init_values: Mapping[str, Any] | None = None,
    report_sites: Sequence[str] | None = None,
    dense_mass: bool = False,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    chain_method: str = "auto",
    draw_batch_size: int | None = None,
    progress_bar: bool = False,
    warn: bool = True,
    algebra: str = "auto",
) -> CollapsedNUTSRun:
    """Collapsed NUTS for a tensor model with Gaussian likelihood (float64 inside).

    Args:
        model: the tensor model.
        y: data in the model's dim order (NaN allowed where ``mask`` is false).
        mask: true where a cell is observed.
        rng_key: PRNG key (one part for NUTS, one for the conditional draws).
        num_warmup, num_samples, num_chains, dense_mass, target_accept_prob, max_tree_depth,
        chain_method: NumPyro's NUTS settings; ``chain_method="auto"`` runs the chains
            one after the other on the Kronecker path (a single evaluation is about 1 ms and
            vectorising four chains made each step 7x slower, measured on B2) and vectorised
            on the Kalman path.
        progress_bar: show a progress bar of the NUTS iterations (display only: the same
            compiled run, and the same draws, with or without it).
        init_values: starting values of hyperparameter sites (default: NumPyro's
            ``init_to_uniform``).
        report_sites: sites whose r-hat and bulk ESS enter ``diagnostics`` (default: all).
        draw_batch_size: conditional draws vectorised together (default: one at a time on
            the Kronecker path, where vectorised draws compiled and ran far slower, 64 on the
            Kalman path).
        warn: emit ``RuntimeWarning`` if the diagnostics look unreliable.
        algebra: the structured linear algebra (:func:`collapsed_gaussian`).

    Returns:
        Draws of the hyperparameters and location sites with diagnostics.
    """
    key_nuts, key_draws = jax.random.split(rng_key)
    with jax.enable_x64(True):
        start = time.perf_counter()
        gaussian = collapsed_gaussian(model, y, mask, algebra)
        kronecker = isinstance(gaussian, KroneckerGaussian)
        if chain_method == "auto":
            chain_method = "sequential" if kronecker else "vectorized"
        if draw_batch_size is None and not kronecker:
            draw_batch_size = 64
        data = jax.tree_util.tree_map(jnp.asarray, gaussian.data)
        settings = dict(
            rng_key=key_nuts, num_warmup=num_warmup, num_samples=num_samples,
            num_chains=num_chains, init_values=init_values, dense_mass=dense_mass,
            target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth,
            chain_method=chain_method,
        )
        hyper, hyper_diagnostics = run_chains(
            collapsed_model(gaussian), data, progress_bar=progress_bar, **settings
        )
        nuts_seconds = time.perf_counter() - start
        lead = next(iter(hyper.values())).shape[:2]
        flat = {k: jnp.reshape(v, (-1, *v.shape[2:])) for k, v in hyper.items()}
        start = time.perf_counter()
        draws = draw_locations(gaussian, flat, key_draws, batch_size=draw_batch_size)
        draws = jax.block_until_ready(draws)
        draw_seconds = time.perf_counter() - start
    samples = dict(hyper)
    for name, value in draws.items():
        samples[name] = np.asarray(value).reshape(lead + value.shape[1:])
    # the NUTS run's divergences and step counts, r-hat and ESS over every reported site
    diagnostics = NUTSDiagnostics.measure(
        samples, report_sites, hyper_diagnostics.divergences, hyper_diagnostics.mean_steps,
        nuts_seconds + draw_seconds,
    )
    if warn:
        warn_if_unhealthy(diagnostics)
    return CollapsedNUTSRun(
        samples=samples,
        diagnostics=diagnostics,
        hyper_diagnostics=hyper_diagnostics,
        draw_seconds=draw_seconds,
        algebra="kronecker" if kronecker else "kalman",
    )
