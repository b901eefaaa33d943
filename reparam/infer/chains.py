"""NUTS chains over a small model compiled once: NumPyro's functional ``hmc`` kernel run by
``lax.scan`` inside ``lax.map`` (chains one after another) or ``vmap`` (chains together).

NumPyro's ``MCMC`` with ``chain_method="sequential"`` compiles its sampling loop again for
every chain (each chain gets a new collection closure); for the collapsed model, whose
gradient costs about a millisecond, those compiles were most of the run (4 x ~10 s against
~20 s of sampling on B2, measured). Here the whole run is one compiled function.

The progress bar is a pure display: the compiled run always reports its iteration to the host
(``jax.debug.callback`` every :func:`progress_every` iterations, whether or not a bar is shown),
so the program, and hence every draw, is the same with and without the bar.
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
from tqdm.auto import tqdm

from reparam.infer.nuts import NUTSDiagnostics

CHAIN_METHODS = ("sequential", "vectorized")
PROGRESS_UPDATES = 100  # host updates of the progress bar per chain (at most)


def progress_every(iterations: int) -> int:
    """Iterations between two progress reports of a chain of ``iterations`` iterations."""
    return max(1, iterations // PROGRESS_UPDATES)


class _Progress:
    """Host side of the progress reports: a tqdm bar over all iterations of all chains, or
    nothing (``enabled=False``: the reports are received and dropped)."""

    def __init__(self, enabled: bool, total: int, warmup: int, per_chain: int) -> None:
        self.bar = tqdm(total=total, unit="it", desc="warmup") if enabled else None
        self.warmup, self.per_chain = warmup, per_chain

    def report(self, done: Any) -> None:
        """``done``: iterations completed so far (all chains), a host scalar."""
        if self.bar is None:
            return
        done = int(done)
        iteration = (done - 1) % self.per_chain + 1  # of the chain now running, from 1
        self.bar.set_description("warmup" if iteration <= self.warmup else "sample",
                                 refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    progress_bar: bool = False,
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
        progress_bar: show a tqdm bar (iterations of all chains; vectorized chains advance
            together). Display only: the compiled run and its draws do not depend on it.

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
    length = num_warmup + num_samples
    every = progress_every(length)
    # vectorized chains advance together: the bar counts one chain's iterations
    per_run = length * (num_chains if chain_method == "sequential" else 1)
    progress = _Progress(progress_bar, per_run, num_warmup, length)

    def report(done: jax.Array) -> None:
        # in the program whether or not a bar is shown, so the draws cannot depend on it
        jax.lax.cond(
            (done % every == 0) | (done % length == 0),
            lambda: jax.debug.callback(progress.report, done),
            lambda: None,
        )

    def one_chain(key: jax.Array, position: dict, args: tuple, offset: jax.Array) -> tuple:
        state = init_kernel(
            position, num_warmup, dense_mass=dense_mass, target_accept_prob=target_accept_prob,
            max_tree_depth=max_tree_depth, model_args=args, rng_key=key,
        )

        def step(state, i):
            state = sample_kernel(state, model_args=args)
            report(offset + i + 1)
            return state, (state.z, state.num_steps, state.diverging)

        _, trace = jax.lax.scan(step, state, jnp.arange(length))
        return jax.tree_util.tree_map(lambda x: x[num_warmup:], trace)

    def run(keys: jax.Array, positions: dict, args: tuple) -> tuple:
        if chain_method == "vectorized":
            # the offset stays unbatched, so each report is one host call for all chains
            return jax.vmap(one_chain, (0, 0, None, None))(keys, positions, args, 0)
        offsets = jnp.arange(num_chains) * length
        return jax.lax.map(lambda a: one_chain(a[0], a[1], args, a[2]),
                           (keys, positions, offsets))

    keys = jax.random.split(key_run, num_chains)
    try:
        unconstrained, steps, diverging = jax.block_until_ready(
            jax.jit(run)(keys, info.param_info.z, args)
        )
        jax.effects_barrier()  # every report delivered before the bar closes
    finally:
        progress.close()
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
    diagnostics = NUTSDiagnostics.measure(samples, report_sites, diverging, steps,
                                          time.perf_counter() - start)
    return samples, diagnostics
