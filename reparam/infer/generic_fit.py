"""``reparam.fit``: the decorrelated fit of any NumPyro model in one call.

It runs the workflow tensorfact runs on its own model (:mod:`reparam.infer.workflow`), on
anyone's: the configuration (given, or discovered by :func:`reparam.suggest_config`), the start
(the hyperparameters at their Laplace mode, the decorrelated sites at their conditional mode,
the coefficients at the exact local Gaussian conditional, the mean-field guide at its local
optimum: :func:`reparam.initialize`), SVI with location steps relative to the guide scales and
coefficients held fixed, optional refits of the coefficients at the guide's median, and
plateau stopping. The result draws every latent site in model coordinates and hands NUTS a
preconditioned model (``result.model``: the coefficients frozen).

Example::

    result = reparam.fit(model, y, rng_key=jax.random.PRNGKey(0))
    print(result.config)                      # the configuration it used (editable)
    draws = result.sample(jax.random.PRNGKey(1), 1000)
    mcmc = MCMC(NUTS(result.model, init_strategy=init_to_value(values=result.init_values)),
                num_warmup=500, num_samples=1000)
    mcmc.run(jax.random.PRNGKey(2), y)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import numpy as np

from reparam.auto_config import DecorrelationConfig, start_point
from reparam.config import ConfigLike
from reparam.control_flow import narrow_integers
from reparam.decorrelation import freeze
from reparam.handler import DecorrelateMessenger
from reparam.infer.nuts import NUTSRun, run_nuts
from reparam.infer.svi import Plateau
from reparam.infer.workflow import GuideKind, SVIFit, fit_svi


@dataclass
class ModelFit:
    """The result of :func:`fit`.

    Attributes:
        svi: the trained guide and its run (:class:`reparam.infer.workflow.SVIFit`).
        decorrelated: the decorrelated model (coefficients as ``numpyro.param`` sites).
        config: the configuration used.
        sites: the model's latent sites, in the order it samples them.
    """

    svi: SVIFit
    decorrelated: DecorrelateMessenger
    config: DecorrelationConfig
    sites: tuple[str, ...]

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The guide's trained params (constrained)."""
        return {k: np.asarray(v) for k, v in self.svi.run.params.items()}

    @property
    def losses(self) -> np.ndarray:
        """The loss (negative ELBO) per step."""
        return np.asarray(self.svi.run.losses)

    @property
    def coefficients(self) -> dict[str, np.ndarray]:
        """The decorrelation coefficients in use (the model's ``numpyro.param`` names)."""
        return dict(self.svi.coefficients)

    @property
    def model(self) -> Callable:
        """The model with its coefficients frozen: the same posterior, preconditioned, without
        ``numpyro.param`` sites (for ``numpyro.infer.MCMC(NUTS(result.model))``)."""
        return freeze(self.decorrelated, self.svi.coefficients)

    @property
    def init_values(self) -> dict[str, np.ndarray]:
        """The guide's median in the sample-site names of :attr:`model` (a NUTS start:
        ``init_to_value(values=result.init_values)``)."""
        return {k: np.asarray(v) for k, v in self.svi.guide.median(self.svi.run.params).items()}

    def sample(self, rng_key: jax.Array, num_samples: int) -> dict[str, np.ndarray]:
        """``num_samples`` draws of every latent site (model coordinates) from the guide."""
        return self.svi.draws(rng_key, num_samples, self.sites)

    def nuts(self, rng_key: jax.Array, *, num_warmup: int = 500, num_samples: int = 1000,
             num_chains: int = 4, **options: Any) -> NUTSRun:
        """NUTS on :attr:`model` from :attr:`init_values`, with ArviZ diagnostics over the
        latent sites (:func:`reparam.infer.nuts.run_nuts`; ``options`` go to it)."""
        return run_nuts(self.model, *self.svi.args, rng_key=rng_key, num_warmup=num_warmup,
                        num_samples=num_samples, num_chains=num_chains,
                        init_values=self.init_values, report_sites=list(self.sites),
                        **options, **self.svi.kwargs)


def fit(
    model: Callable,
    *args: Any,
    rng_key: jax.Array,
    config: ConfigLike | DecorrelationConfig | Literal["auto"] = "auto",
    num_steps: int = 3000,
    guide: GuideKind = "normal",
    learning_rate: float = 0.005,
    refresh_at: Sequence[int] = (),
    stop_at_plateau: bool = True,
    progress_bar: bool = False,
    **kwargs: Any,
) -> ModelFit:
    """Fits ``model`` by decorrelated SVI from the local Gaussian start (module docstring).

    Args:
        model: a NumPyro model, or one returned by :func:`reparam.decorrelate` (then its
            configuration is used and ``config`` is ignored).
        *args, **kwargs: the model's arguments (the data).
        rng_key: PRNG key (same key, same result).
        config: ``"auto"`` (:func:`reparam.suggest_config`), a
            :class:`reparam.DecorrelationConfig` or a config as :func:`reparam.decorrelate`
            takes it.
        num_steps: SVI step limit.
        guide: ``"normal"`` (mean-field over the decorrelated coordinates) or ``"lowrank"``.
        learning_rate: Adam rate (of location steps relative to the guide scales for
            ``"normal"``), halving every 750 steps.
        refresh_at: steps at which the coefficients are refitted at the guide's median (the
            start already fits them at the hyperparameters' Laplace mode).
        stop_at_plateau: stop once the loss and guide have settled
            (:class:`reparam.infer.svi.Plateau`).
        progress_bar: show progress.

    Raises:
        ValueError: as :func:`reparam.suggest_config` and :func:`reparam.decorrelate` do.
        reparam.infer.svi.NonFiniteLoss: if a loss becomes NaN or infinite.
    """
    args, kwargs = narrow_integers((args, kwargs))  # int64 indices under float64 analyses
    if isinstance(model, DecorrelateMessenger):
        decorrelated = model.clone(*args, **kwargs)
    else:
        decorrelated = DecorrelateMessenger(model, config)
        decorrelated.resolve(*args, **kwargs)
    seed = int(jax.random.randint(jax.random.fold_in(rng_key, 7), (), 0, 2**31 - 1))
    point = start_point(decorrelated.fn, args, kwargs, rng_seed=seed)
    svi = fit_svi(
        decorrelated, *args, point=point, rng_key=rng_key, num_steps=num_steps,
        learning_rate=learning_rate, guide=guide, refresh_at=refresh_at,
        stopping=Plateau() if stop_at_plateau else None, progress_bar=progress_bar, **kwargs,
    )
    return ModelFit(svi=svi, decorrelated=decorrelated, config=decorrelated.suggestion(),
                    sites=tuple(point))

