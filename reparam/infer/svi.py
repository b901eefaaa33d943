"""A compiled SVI loop with a progress bar, a NaN guard and a drift-aware stopping rule.

Any NumPyro model/guide pair runs here: steps execute in compiled chunks (``lax.scan``), the
full loss trace is kept, and training stops at ``num_steps`` or, with a :class:`Plateau` rule,
once the loss *and the guide's parameters* have settled. Watching only the loss is not enough:
along a posterior ridge the ELBO changes by less than a nat while the grand mean still moves
by 0.4 (``docs/design.md`` section 2), so the rule also requires every guide location to have
moved less than ``max_drift`` of its own guide scale over the last window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike
from numpyro.infer import SVI, Trace_ELBO
from tqdm.auto import tqdm

from reparam.infer.guide_init import initial_state
from reparam.programs import PROGRAMS, Arguments, ProgramKey, model_key


@dataclass(frozen=True)
class Plateau:
    """Stop when the loss and the guide have both settled.

    Attributes:
        window: steps per comparison window.
        loss_tolerance: largest change (nats) of the window-mean loss between two windows.
        max_drift: largest move of any guide location over a window, in units of its guide
            scale (``*_auto_loc`` / ``*_auto_scale`` pairs; other params are not watched).
        min_steps: never stop before this many steps.
    """

    window: int = 500
    loss_tolerance: float = 1.0
    max_drift: float = 0.1
    min_steps: int = 1000


DEFAULT_HINT = (
    "Try a smaller learning rate (or an optimizer with gradient clipping, e.g. "
    "optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))), a better starting point, "
    "or check the data for extreme values."
)


class NonFiniteLoss(FloatingPointError):
    """Raised when SVI produces a NaN or infinite loss.

    Attributes:
        step: the first step whose loss was not finite (0-based).
        params: constrained parameters from just before the failure: those of the last step
            whose loss was finite (``params_step``), or the initial ones if there is none.
        params_step: the step whose parameters ``params`` are (their loss is ``losses[-1]``
            when ``params_step == step - 1``).
        state: the ``SVIState`` holding ``params``.
        losses: the finite part of the loss trace (``losses[k]`` is step ``k``'s loss).
        hint: what to change, as included in the message.
    """

    def __init__(
        self,
        step: int,
        params: dict,
        losses: np.ndarray,
        state: Any = None,
        hint: str = DEFAULT_HINT,
        params_step: int | None = None,
    ) -> None:
        self.step, self.params, self.losses, self.state = step, params, losses, state
        self.params_step = max(step - 1, 0) if params_step is None else params_step
        self.hint = hint
        where = (
            f"the last finite loss was {float(losses[-1]):.6g} at step {step - 1}"
            if len(losses) else "no step had a finite loss"
        )
        super().__init__(
            f"SVI loss became non-finite (NaN or inf) at step {step}; {where}. The parameters "
            f"of step {self.params_step} are kept on this exception (.params, .state). {hint}"
        )

    def __reduce__(self) -> tuple:
        # picklable (e.g. across processes) although __init__ takes more than the message
        return (NonFiniteLoss, (self.step, self.params, self.losses, self.state, self.hint,
                                self.params_step))

    def with_hint(self, hint: str) -> NonFiniteLoss:
        """The same failure with another suggestion in the message."""
        return NonFiniteLoss(
            self.step, self.params, self.losses, self.state, hint, self.params_step
        )


@dataclass
class SVIRunner:
    """An initialised ``SVI`` object and its compiled chunk function (reused on resume).

    The model arguments are arguments of the compiled function, not constants baked into it:
    large data do not bloat the program, and a runner of a named model and optimizer reuses
    the program compiled for an earlier runner of the same (see :meth:`build`).

    Attributes:
        svi: the NumPyro ``SVI`` (``init`` has run, so ``get_params`` works).
        run_chunk: ``(state, active_mask, arrays) -> (state, losses)``, compiled once.
        chunk: steps per compiled chunk.
        arrays: the array leaves of the model arguments, passed to ``run_chunk``.
    """

    svi: SVI
    run_chunk: Callable
    chunk: int
    arrays: tuple = ()

    @classmethod
    def build(
        cls,
        svi: SVI,
        args: tuple,
        kwargs: Mapping[str, Any],
        chunk: int,
        optimizer_key: Hashable | None = None,
        num_particles: int = 1,
    ) -> SVIRunner:
        """Compiles ``chunk`` masked steps of ``svi.update`` (lazily, on first use).

        Array leaves of ``args`` and ``kwargs`` (NumPy or JAX) are traced, so new values of
        the same shapes do not recompile; other leaves (Python numbers, strings, ...) are
        constants of the program.

        Args:
            svi: an initialised ``SVI``.
            args, kwargs: model arguments.
            chunk: steps per compiled chunk.
            optimizer_key: ``None``, or a hashable naming ``svi.optim`` completely (e.g.
                ``reparam.infer.workflow.optimizer_key(lr, relative)`` for ``default_optimizer``).
                With it, runners of models with equal :func:`~reparam.programs.model_key`
                (derived from the model and guide objects, never from the caller) share one
                compiled program in this process (for arguments of at most
                :data:`~reparam.programs.SHARE_MAX_BYTES`).
            num_particles: ELBO particles of ``svi.loss`` (part of the key).
        """
        arguments = Arguments.split(args, kwargs)
        model = model_key(svi.model)
        key = None
        if optimizer_key is not None and model is not None and arguments.shareable:
            key = ProgramKey(
                kind="svi_chunk", model=model,
                settings=(type(svi.guide).__name__, optimizer_key, num_particles, chunk),
                arguments=arguments.key[:3],
            )
        run_chunk = PROGRAMS.get(key, lambda: _compile_chunk(svi, arguments))
        return cls(svi=svi, run_chunk=run_chunk, chunk=chunk, arrays=arguments.arrays)

    def advance(self, state: Any, steps: int) -> tuple[Any, np.ndarray]:
        """Runs ``steps <= chunk`` steps (one compiled chunk, the rest masked)."""
        state, losses = self.run_chunk(state, jnp.arange(self.chunk) < steps, self.arrays)
        return state, np.asarray(losses)[:steps]


def _compile_chunk(svi: SVI, arguments: Arguments) -> Callable:
    """``svi.update`` scanned over a chunk of steps; where ``active`` is false a step is
    masked out (the state, random key included, is left unchanged)."""

    @jax.jit
    def run_chunk(state, length_mask, arrays):
        args, kwargs = arguments.join(arrays)

        def body(state, active):
            new_state, loss = svi.update(state, *args, **kwargs)
            state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, state)
            return state, jnp.where(active, loss, jnp.nan)

        return jax.lax.scan(body, state, length_mask)

    return run_chunk


@dataclass
class SVIRun:
    """Result of :func:`run_svi`.

    Attributes:
        params: final parameters (constrained).
        losses: the full loss trace (one entry per step).
        state: the final ``SVIState`` (to resume).
        stopped: ``"plateau"`` or ``"max_steps"``.
        seconds: wall time of the training loop (excluding setup).
        extra: further facts.
        runner: the compiled stepper (:func:`continue_svi` reuses it).
    """

    params: dict[str, Any]
    losses: np.ndarray
    state: Any
    stopped: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    runner: SVIRunner | None = field(default=None, repr=False)


def _guide_drift(before: Mapping[str, Any], after: Mapping[str, Any]) -> float:
    worst = 0.0
    for key, loc in after.items():
        if not key.endswith("_auto_loc"):
            continue
        scale_key = key[: -len("_auto_loc")] + "_auto_scale"
        if scale_key not in after or key not in before:
            continue
        moved = np.abs(np.asarray(loc) - np.asarray(before[key])) / np.asarray(after[scale_key])
        worst = max(worst, float(np.max(moved)) if moved.size else 0.0)
    return worst


def plateau_reached(losses: np.ndarray, drift: float, rule: Plateau) -> bool:
    """Whether a loss trace and the last window's guide drift satisfy ``rule``."""
    if len(losses) < max(rule.min_steps, 2 * rule.window):
        return False
    last = float(np.mean(losses[-rule.window :]))
    previous = float(np.mean(losses[-2 * rule.window : -rule.window]))
    return abs(last - previous) <= rule.loss_tolerance and drift <= rule.max_drift


def run_svi(
    model: Callable,
    guide: Callable,
    optimizer: optax.GradientTransformation,
    *args: Any,
    rng_key: jax.Array,
    num_steps: int,
    stopping: Plateau | None = None,
    init_params: Mapping[str, Any] | None = None,
    state: Any = None,
    progress_bar: bool = False,
    chunk: int = 250,
    num_particles: int = 1,
    optimizer_key: Hashable | None = None,
    earlier: ArrayLike = (),
    **kwargs: Any,
) -> SVIRun:
    """Runs SVI in compiled chunks.

    Args:
        model, guide: NumPyro model and guide.
        optimizer: an optax transformation.
        *args, **kwargs: model/guide arguments.
        rng_key: PRNG key (ignored when resuming from ``state``).
        num_steps: step limit.
        stopping: optional :class:`Plateau` rule.
        init_params: initial params for ``SVI.init`` (constrained). ``SVI.init`` runs
            compiled for an ``AutoNormal`` guide (:func:`reparam.infer.guide_init.initial_state`).
        state: an ``SVIState`` to continue from instead of the initial one (``SVI.init``
            still runs, to set up the guide; :func:`continue_svi` continues a run without it),
            or a function of the initial state returning the state to start from (e.g. one
            that carries an earlier run's optimiser state over to re-mapped params:
            :func:`reparam.infer.refresh.carry_state`).
        progress_bar: show a tqdm bar.
        chunk: steps per compiled chunk (the rule is checked between chunks, so it is
            aligned to ``chunk``).
        num_particles: ELBO particles.
        optimizer_key: a hashable naming ``optimizer`` completely, to share the compiled
            step with earlier runs of the same model (see :meth:`SVIRunner.build`).
        earlier: the loss trace of training this run continues (e.g. before the model's
            arguments changed): the stopping rule sees it followed by the new steps, and the
            returned ``losses`` start with it.

    Returns:
        The run; its ``runner`` lets :func:`continue_svi` carry on without recompiling.

    Raises:
        NonFiniteLoss: if a loss is NaN or infinite; it reports the step and keeps the
            parameters of the last step with a finite loss.
    """
    svi = SVI(model, guide, optimizer, Trace_ELBO(num_particles=num_particles))
    initial = initial_state(svi, rng_key, args, kwargs, init_params, optimizer_key)
    if callable(state):
        state = state(initial)
    state = initial if state is None else state
    runner = SVIRunner.build(svi, args, kwargs, chunk, optimizer_key, num_particles)
    return _train(runner, state, num_steps, stopping, progress_bar,
                  np.asarray(earlier, dtype=float).reshape(-1))


def continue_svi(
    run: SVIRun,
    num_steps: int,
    *,
    stopping: Plateau | None = None,
    progress_bar: bool = False,
) -> SVIRun:
    """Continues a run for ``num_steps`` more steps from its final state.

    The optimiser state (step count, moments, schedule) and the random key carry on, and the
    compiled chunk is reused, so continuing a run of ``n`` steps by ``m`` gives bitwise the
    same losses and parameters as one run of ``n + m`` steps (without a stopping rule).

    Args:
        run: a run from :func:`run_svi` or :func:`continue_svi` (it needs its ``runner``).
        num_steps: further steps.
        stopping: optional plateau rule, applied to the whole loss trace.
        progress_bar: show a tqdm bar.

    Returns:
        A new run whose ``losses`` are the old trace followed by the new steps.

    Raises:
        ValueError: if ``run`` has no runner.
        NonFiniteLoss: if a loss is NaN or infinite (its step counts from the first run).
    """
    if run.runner is None:
        raise ValueError("This SVI run has no compiled runner to continue from.")
    return _train(run.runner, run.state, num_steps, stopping, progress_bar, run.losses)


def _train(
    runner: SVIRunner,
    state: Any,
    num_steps: int,
    stopping: Plateau | None,
    progress_bar: bool,
    earlier: np.ndarray,
) -> SVIRun:
    """Advances ``state`` by up to ``num_steps`` steps; ``earlier`` is the trace so far."""
    svi, chunk = runner.svi, runner.chunk
    losses: list[np.ndarray] = [np.asarray(earlier)]
    offset = len(earlier)
    done, stopped = 0, "max_steps"
    watched = stopping.window if stopping is not None else 0
    history: list[tuple[int, dict]] = [(0, svi.get_params(state))]
    checkpoint = (state, 0)  # a state and its step, at most one chunk before the current one
    bar = tqdm(total=num_steps, disable=not progress_bar, desc="SVI", unit="step")
    start = time.perf_counter()
    try:
        while done < num_steps:
            length = min(chunk, num_steps - done)
            previous_state = state
            state, chunk_losses = runner.advance(state, length)
            if not np.all(np.isfinite(chunk_losses)):
                bad = int(np.argmin(np.isfinite(chunk_losses)))
                raise _non_finite(runner, losses, chunk_losses, bad, done, offset,
                                  (previous_state, done) if bad else checkpoint)
            losses.append(chunk_losses)
            checkpoint = (previous_state, done)
            done += length
            bar.update(length)
            bar.set_postfix(loss=f"{float(np.mean(chunk_losses)):.4g}")
            if stopping is None:
                continue
            params = svi.get_params(state)
            history.append((done, params))
            while len(history) > 1 and history[1][0] <= done - watched:
                history.pop(0)
            drift = _guide_drift(history[0][1], params) if history[0][0] <= done - watched else 1e9
            if plateau_reached(np.concatenate(losses), drift, stopping):
                stopped = "plateau"
                break
    finally:
        bar.close()
    jax.block_until_ready(state)
    return SVIRun(
        params=svi.get_params(state),
        losses=np.concatenate(losses),
        state=state,
        stopped=stopped,
        seconds=time.perf_counter() - start,
        runner=runner,
    )


def _non_finite(
    runner: SVIRunner,
    losses: list[np.ndarray],
    chunk_losses: np.ndarray,
    bad: int,
    done: int,
    offset: int,
    checkpoint: tuple[Any, int],
) -> NonFiniteLoss:
    """The error for a non-finite loss at local step ``done + bad``, with the state of the
    last finite step recomputed (deterministically) from ``checkpoint``."""
    trace = np.concatenate([*losses, chunk_losses[:bad]])
    last = done + bad - 1  # local index of the last finite step; its params gave a finite loss
    state, at = checkpoint
    steps = max(last - at, 0)
    if steps:
        state, _ = runner.advance(state, steps)
    return NonFiniteLoss(offset + done + bad, runner.svi.get_params(state), trace, state,
                         params_step=offset + at + steps)
