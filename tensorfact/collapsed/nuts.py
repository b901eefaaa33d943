"""Collapsed NUTS: NUTS over the hyperparameters with the location effects integrated out,
then one exact conditional draw of the location effects per posterior draw.

The target of NUTS is the hyperparameters' marginal posterior (in NumPyro's unconstrained
coordinates, Jacobians included by NumPyro):

    log p(h | y_obs) = log p(h) + log p(y_obs | h) + const,

with ``log p(h)`` from the model's own hyperparameter sites
(:meth:`TensorModel._sample_hyperparameters`) and ``log p(y_obs | h)`` the exact collapsed
likelihood of :class:`~tensorfact.collapsed.gaussian.CollapsedGaussian` added as a
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
from numpyro.infer import MCMC

from tensorfact.build import TensorModel
from tensorfact.collapsed.gaussian import CollapsedGaussian
from tensorfact.collapsed.layout import SeriesData
from tensorfact.infer.nuts import NUTSDiagnostics, diagnose, run_nuts, warn_if_unhealthy

FACTOR_SITE = "collapsed_log_marginal"


@dataclass
class CollapsedNUTSRun:
    """Result of :func:`collapsed_nuts`.

    Attributes:
        samples: site name -> draws with leading ``(chain, draw)`` dims, for the
            hyperparameters (and deterministic ``sigma_series``) and the location sites, named
            as in the NumPyro model.
        diagnostics: over ``report_sites`` (default: every site), ``seconds`` including the
            conditional draws.
        hyper_diagnostics: of the NUTS run over the hyperparameters alone.
        mcmc: the NumPyro MCMC object of the hyperparameter run.
        draw_seconds: wall time of the conditional draws (included in ``diagnostics``).
    """

    samples: dict[str, np.ndarray]
    diagnostics: NUTSDiagnostics
    hyper_diagnostics: NUTSDiagnostics
    mcmc: MCMC
    draw_seconds: float


def collapsed_model(gaussian: CollapsedGaussian) -> Callable[[SeriesData], None]:
    """NumPyro model over the hyperparameters: their priors plus ``log p(y_obs | h)``.

    The returned model takes the series data (``gaussian.data``) as its argument.
    """

    def model(data: SeriesData) -> None:
        hyper = gaussian.model._sample_hyperparameters()
        numpyro.factor(FACTOR_SITE, gaussian.log_marginal(hyper, data))

    return model


def draw_locations(
    gaussian: CollapsedGaussian,
    hyper: Mapping[str, Any],
    rng_key: jax.Array,
    *,
    batch_size: int = 64,
) -> dict[str, jax.Array]:
    """One exact conditional draw of the location sites per hyperparameter draw.

    Args:
        gaussian: the structured Gaussian of the model and data.
        hyper: site name -> draws with one leading draw axis (``(n, ...)``).
        rng_key: PRNG key (split into one key per draw).
        batch_size: draws computed together (vectorised) inside the sequential map.

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
    chain_method: str = "sequential",
    draw_batch_size: int = 64,
    progress_bar: bool = False,
    warn: bool = True,
) -> CollapsedNUTSRun:
    """Collapsed NUTS for a tensor model with Gaussian likelihood (float64 inside).

    Args:
        model: the tensor model.
        y: data in the model's dim order (NaN allowed where ``mask`` is false).
        mask: true where a cell is observed.
        rng_key: PRNG key (one part for NUTS, one for the conditional draws).
        num_warmup, num_samples, num_chains, dense_mass, target_accept_prob, max_tree_depth,
        chain_method, progress_bar: passed to NumPyro's NUTS/MCMC.
        init_values: starting values of hyperparameter sites (default: NumPyro's
            ``init_to_uniform``).
        report_sites: sites whose r-hat and bulk ESS enter ``diagnostics`` (default: all).
        draw_batch_size: conditional draws vectorised together.
        warn: emit ``RuntimeWarning`` if the diagnostics look unreliable.

    Returns:
        Draws of the hyperparameters and location sites with diagnostics.
    """
    key_nuts, key_draws = jax.random.split(rng_key)
    with jax.enable_x64(True):
        start = time.perf_counter()
        gaussian = CollapsedGaussian(model, y, mask)
        data = jax.tree_util.tree_map(jnp.asarray, gaussian.data)
        run = run_nuts(
            collapsed_model(gaussian),
            data,
            rng_key=key_nuts,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            init_values=init_values,
            dense_mass=dense_mass,
            target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth,
            chain_method=chain_method,
            progress_bar=progress_bar,
            warn=False,
        )
        nuts_seconds = time.perf_counter() - start
        hyper = run.samples
        lead = next(iter(hyper.values())).shape[:2]
        flat = {k: jnp.reshape(v, (-1, *v.shape[2:])) for k, v in hyper.items()}
        start = time.perf_counter()
        draws = draw_locations(gaussian, flat, key_draws, batch_size=draw_batch_size)
        draws = jax.block_until_ready(draws)
        draw_seconds = time.perf_counter() - start
    samples = dict(hyper)
    for name, value in draws.items():
        samples[name] = np.asarray(value).reshape(lead + value.shape[1:])
    sites = list(report_sites) if report_sites is not None else list(samples)
    max_rhat, min_ess = diagnose(samples, sites)
    diagnostics = NUTSDiagnostics(
        divergences=run.diagnostics.divergences,
        max_rhat=max_rhat,
        min_ess=min_ess,
        mean_steps=run.diagnostics.mean_steps,
        seconds=nuts_seconds + draw_seconds,
    )
    if warn:
        warn_if_unhealthy(diagnostics)
    return CollapsedNUTSRun(
        samples=samples,
        diagnostics=diagnostics,
        hyper_diagnostics=run.diagnostics,
        mcmc=run.mcmc,
        draw_seconds=draw_seconds,
    )
