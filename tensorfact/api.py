"""``tensorfact.fit``: DataArray in, labelled Bayesian decomposition out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tensorfact.build import DecorrelateToggle, TensorModel
from tensorfact.data import TensorData, as_tensor_data, check_time_coordinate
from tensorfact.infer import Plateau, fit_nuts, fit_svi
from tensorfact.infer.decorrelated import SVIFit
from tensorfact.results import Fit, posterior_dataset
from tensorfact.spec import MIN_TIME_STEPS, ModelSpec, Temporal, default_spec

Method = Literal["svi", "nuts"]


def fit(
    data: Any,
    spec: ModelSpec | None = None,
    *,
    method: Method = "svi",
    decorrelate: DecorrelateToggle = True,
    seed: int | jax.Array = 0,
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
    progress_bar: bool = False,
) -> Fit:
    """Fits the additive model ``y[i,j,t] ~ Normal(sum_e effect_e, sigma)`` to 3-way data.

    Args:
        data: a 3-dim ``xarray.DataArray`` (NaN = missing), or a NumPy array with ``dims``.
        spec: the model (default: :func:`tensorfact.default_spec` of the data's dims: effects
            ``mu, a, b, z, A, B, C``).
        method: ``"svi"`` (variational, fast) or ``"nuts"`` (MCMC on the decorrelated model,
            coefficients from a short SVI or from ``from_fit``).
        decorrelate: ``True``, ``False`` or ``{effect: bool}`` (effects not named stay on).
        seed: integer seed or a JAX PRNG key; the same seed gives the same result.
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
            start NUTS.
        progress_bar: show progress bars.

    Returns:
        A :class:`~tensorfact.results.Fit`.
    """
    tensor = as_tensor_data(data, dims)
    spec = _resolve_spec(tensor, spec, time)
    key = _as_key(seed)
    _check_positive_int("num_steps", num_steps)
    _check_positive_int("num_draws", num_draws)
    if method not in ("svi", "nuts"):
        raise ValueError(f"Unknown method {method!r}; use 'svi' or 'nuts'.")
    model = TensorModel(spec, tensor.sizes)
    switched = model._switched_on(decorrelate)
    decorrelated = model.decorrelated(switched)
    args = (jnp.asarray(tensor.filled, jnp.float32), jnp.asarray(tensor.mask))
    started = perf_counter()
    if from_fit is not None:
        svi = _reuse(from_fit, tensor, spec, switched)
    else:
        steps = num_steps if method == "svi" else svi_steps_for_nuts
        svi = fit_svi(
            decorrelated, *args,
            point=model.initial_point(tensor.filled, tensor.mask),
            rng_key=key, num_steps=steps, learning_rate=learning_rate, optimizer=optimizer,
            guide=guide, stopping=Plateau() if stop_at_plateau else None,
            progress_bar=progress_bar,
        )
    info: dict[str, Any] = {
        "svi_steps": len(svi.run.losses), "svi_stopped": svi.run.stopped,
        "svi_seconds": svi.run.seconds,
    }
    sites = list(svi.start.point)  # every latent site, in model coordinates
    if method == "svi":
        returned = sites + (["sigma_series"] if spec.noise.per_series else [])
        draws = {k: v[None] for k, v in svi.draws(jax.random.fold_in(key, 1), num_draws,
                                                  returned).items()}
        diagnostics = None
    else:
        for name, value in (("num_samples", num_samples), ("num_chains", num_chains),
                            ("num_warmup", num_warmup)):
            _check_positive_int(name, value, allow_zero=name == "num_warmup")
        nuts = fit_nuts(
            decorrelated, *args, coefficients=svi.coefficients,
            init_values=svi.guide.median(svi.run.params), rng_key=jax.random.fold_in(key, 2),
            num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
            report_sites=sites, progress_bar=progress_bar,
        )
        draws = nuts.samples  # includes the model-coordinate (deterministic) sites
        diagnostics = nuts.diagnostics
        info["nuts_seconds"] = diagnostics.seconds
    info["seconds"] = perf_counter() - started
    return Fit(
        method=method,
        spec=spec,
        data=tensor,
        posterior=posterior_dataset(draws, model, tensor),
        decorrelate=switched,
        losses=np.asarray(svi.run.losses),
        coefficients={k: np.asarray(v) for k, v in svi.coefficients.items()},
        diagnostics=diagnostics,
        seed=int(seed) if isinstance(seed, (int, np.integer)) else 0,
        info=info,
        _svi=svi,
    )


def _resolve_spec(tensor: TensorData, spec: ModelSpec | None, time: str | None) -> ModelSpec:
    if spec is None:
        spec = default_spec(tensor.dims, time)
    elif not isinstance(spec, ModelSpec):
        raise TypeError(f"spec must be a tensorfact ModelSpec, got {type(spec).__name__}.")
    else:
        if tuple(spec.dims) != tensor.dims:
            raise ValueError(
                f"The spec is for dims {spec.dims} but the data have dims {tensor.dims}; "
                "build the spec for the data's dims (in the same order)."
            )
        if time is not None and time != spec.time:
            raise ValueError(f"time={time!r} disagrees with the spec's time dim {spec.time!r}.")
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


def _as_key(seed: Any) -> jax.Array:
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError("seed must be an integer or a JAX PRNG key, got a bool.")
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}.")
        return jax.random.PRNGKey(int(seed))
    if isinstance(seed, jax.Array) and (
        jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key) or seed.shape == (2,)
    ):
        return seed
    raise TypeError(f"seed must be an integer or a JAX PRNG key, got {seed!r}.")


def _check_positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}.")


def _reuse(
    previous: Fit, tensor: TensorData, spec: ModelSpec, switched: Mapping[str, bool]
) -> SVIFit:
    if previous._svi is None:
        raise ValueError("from_fit must be an SVI-based fit of this session (it has no guide).")
    same = (
        previous.spec == spec
        and previous.data.dims == tensor.dims
        and np.array_equal(previous.data.values, tensor.values, equal_nan=True)
        and previous.decorrelate == dict(switched)
    )
    if not same:
        raise ValueError("from_fit must be a fit of the same data, spec and decorrelation.")
    return previous._svi
