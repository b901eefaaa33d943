"""NUTS chains over a small model compiled once: NumPyro's functional ``hmc`` kernel run by
``lax.scan`` inside ``lax.map`` (chains one after another) or ``vmap`` (chains together).

NumPyro's ``MCMC`` with ``chain_method="sequential"`` compiles its sampling loop again for
every chain (each chain gets a new collection closure); for the collapsed model, whose
gradient costs about a millisecond, those compiles were most of the run (4 x ~10 s against
~20 s of sampling on B2, measured). Here the whole run is one compiled function.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.hmc import hmc
from numpyro.infer.initialization import init_to_uniform, init_to_value
from numpyro.infer.util import initialize_model

from tensorfact.infer.nuts import NUTSDiagnostics, diagnose

CHAIN_METHODS = ("sequential", "vectorized")


def run_chains(
    model: Callable,
    *args: Any,
    rng_key: jax.Array,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    init_values: Mapping[str, Any] | None = None,
    report_sites: Sequence[str] | None = None,
    dense_mass: bool = False,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    chain_method: str = "sequential",
) -> tuple[dict[str, np.ndarray], NUTSDiagnostics]:
    """NUTS (NumPyro's kernel and warmup adaptation, its defaults) on ``model(*args)``.

    Args:
        model: a NumPyro model without ``numpyro.param`` sites.
        *args: model arguments (traced: pass data as arrays).
        rng_key: PRNG key (one part per chain's start, one per chain's kernel).
        num_warmup, num_samples, num_chains, dense_mass, target_accept_prob, max_tree_depth:
            as for NumPyro's ``NUTS`` and ``MCMC``.
        init_values: starting values of sample sites (default ``init_to_uniform``).
        report_sites: sites whose r-hat and bulk ESS enter the diagnostics (default: all).
        chain_method: ``"sequential"`` (``lax.map`` over chains) or ``"vectorized"``.

    Returns:
        Constrained draws (site -> ``(chain, draw, ...)``, deterministic sites included) and
        diagnostics (``seconds`` includes compilation, warmup and sampling).

    Raises:
        ValueError: for an unknown ``chain_method``.
    """
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}.")
    start = time.perf_counter()
    key_init, key_run = jax.random.split(rng_key)
    strategy = init_to_value(values=dict(init_values)) if init_values else init_to_uniform
    # dynamic_args: the model arguments stay traced arguments (not constants) of the compiled run
    info = initialize_model(
        jax.random.split(key_init, num_chains), model, model_args=args,
        init_strategy=strategy, dynamic_args=True,
    )
    init_kernel, sample_kernel = hmc(potential_fn_gen=info.potential_fn, algo="NUTS")

    def one_chain(key: jax.Array, position: dict, args: tuple) -> tuple:
        state = init_kernel(
            position, num_warmup, dense_mass=dense_mass, target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth, model_args=args, rng_key=key,
        )

        def step(state, _):
            state = sample_kernel(state, model_args=args)
            return state, (state.z, state.num_steps, state.diverging)

        _, trace = jax.lax.scan(step, state, None, length=num_warmup + num_samples)
        return jax.tree_util.tree_map(lambda x: x[num_warmup:], trace)

    def run(keys: jax.Array, positions: dict, args: tuple) -> tuple:
        if chain_method == "vectorized":
            return jax.vmap(one_chain, (0, 0, None))(keys, positions, args)
        return jax.lax.map(lambda a: one_chain(*a, args), (keys, positions))

    keys = jax.random.split(key_run, num_chains)
    unconstrained, steps, diverging = jax.jit(run)(keys, info.param_info.z, args)
    flat = jax.tree_util.tree_map(
        lambda x: jnp.reshape(x, (-1, *x.shape[2:])), unconstrained
    )
    constrained = jax.jit(
        lambda z, args: jax.vmap(info.postprocess_fn(*args))(z)
    )(flat, args)
    samples = {
        k: np.asarray(v).reshape(num_chains, num_samples, *v.shape[1:])
        for k, v in constrained.items()
    }
    seconds = time.perf_counter() - start
    sites = list(report_sites) if report_sites is not None else list(samples)
    max_rhat, min_ess = diagnose(samples, sites)
    diagnostics = NUTSDiagnostics(
        divergences=int(np.sum(diverging)),
        max_rhat=max_rhat,
        min_ess=min_ess,
        mean_steps=float(np.mean(steps)),
        seconds=seconds,
    )
    return samples, diagnostics
