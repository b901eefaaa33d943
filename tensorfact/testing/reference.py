"""Reference posterior for small tensors: exact conditional Gaussian, hyperparameters
integrated by importance sampling around their Laplace approximation.

With ``phi`` the hyperparameters in unconstrained coordinates,

    log p(phi | y) = log p(y | h(phi)) + log p(h(phi)) + log |dh/dphi| + const,

where ``log p(y | h)`` is the exact collapsed marginal
(:class:`~tensorfact.testing.dense.GaussianOracle`).
The proposal is a multivariate t (``df`` degrees of freedom) centred at the mode with the
inverse Hessian inflated by ``inflate``; each draw contributes its exact conditional mean and
variance, combined by the law of total variance. The effective sample size of the weights is
reported so a poor proposal is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import constrain_fn, potential_energy
from scipy import stats

from reparam.optim import minimize
from tensorfact.model.tensor import TensorModel
from tensorfact.testing.dense import GaussianOracle


@dataclass(frozen=True)
class ReferencePosterior:
    """Posterior means and sds of the location sites, plus the hyperparameters' summary.

    Attributes:
        mean, sd: site name -> array (site shape).
        hyper_mode: hyperparameters at the Laplace mode (constrained).
        hyper_mean, hyper_sd: importance-weighted posterior mean and sd (constrained).
        ess: effective sample size of the importance weights.
        num_draws: proposal draws used.
    """

    mean: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]
    hyper_mode: dict[str, np.ndarray]
    hyper_mean: dict[str, np.ndarray]
    hyper_sd: dict[str, np.ndarray]
    ess: float
    num_draws: int


def importance_reference(
    model: TensorModel,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    num_draws: int = 800,
    seed: int = 0,
    df: float = 6.0,
    inflate: float = 1.2,
) -> ReferencePosterior:
    """Computes the reference posterior (dense: for tensors up to a few thousand effects)."""
    oracle = GaussianOracle(model, y, mask)

    def hyper_model():
        model._sample_hyperparameters()

    with jax.enable_x64(True):
        start = {k: jnp.log(jnp.asarray(v, jnp.float64)) for k, v in _hyper_start(model, y, mask)}
        x0, unflatten = ravel_pytree(start)
        x0 = np.asarray(x0)

        def constrained(flat):
            return constrain_fn(hyper_model, (), {}, unflatten(flat), return_deterministic=True)

        def log_post(flat):
            hyper = constrained(flat)
            prior_energy = potential_energy(hyper_model, (), {}, unflatten(flat))
            return oracle.log_marginal(hyper) - prior_energy

        mode = np.asarray(minimize(lambda f: -log_post(f), jnp.asarray(x0)).x)
        hessian = np.asarray(jax.jit(jax.hessian(lambda f: -log_post(f)))(jnp.asarray(mode)))
        covariance = np.linalg.inv(hessian) * inflate
        proposal = stats.multivariate_t(loc=mode, shape=covariance, df=df, seed=seed)
        draws = np.atleast_2d(proposal.rvs(num_draws))
        log_post_jit = jax.jit(log_post)
        constrained_jit = jax.jit(constrained)

        @jax.jit
        def moments(flat):
            posterior_precision, mean = oracle.solve(constrained(flat))
            chol = jnp.linalg.cholesky(posterior_precision)
            inverse_chol = jax.scipy.linalg.solve_triangular(
                chol, jnp.eye(chol.shape[0]), lower=True
            )
            return mean, jnp.sum(inverse_chol**2, axis=0)

        log_weights, means, variances, hypers = [], [], [], []
        for draw in draws:
            log_weights.append(float(log_post_jit(jnp.asarray(draw))) - proposal.logpdf(draw))
            mean, var = moments(jnp.asarray(draw))
            means.append(np.asarray(mean))
            variances.append(np.asarray(var))
            hypers.append({k: np.asarray(v) for k, v in constrained_jit(jnp.asarray(draw)).items()})
        log_weights = np.asarray(log_weights)
        weights = np.exp(log_weights - log_weights.max())
        weights /= weights.sum()
        means_arr, vars_arr = np.asarray(means), np.asarray(variances)
        mean = weights @ means_arr
        var = weights @ vars_arr + weights @ (means_arr - mean) ** 2
        stacked = {k: np.stack([h[k] for h in hypers]) for k in hypers[0]}
        hyper_mean = {k: np.tensordot(weights, v, 1) for k, v in stacked.items()}
        hyper_sd = {
            k: np.sqrt(np.tensordot(weights, (v - hyper_mean[k]) ** 2, 1))
            for k, v in stacked.items()
        }
        mode_values = {k: np.asarray(v) for k, v in constrained(jnp.asarray(mode)).items()}
    return ReferencePosterior(
        mean=oracle.split(mean),
        sd=oracle.split(np.sqrt(var)),
        hyper_mode=mode_values,
        hyper_mean=hyper_mean,
        hyper_sd=hyper_sd,
        ess=float(1.0 / np.sum(weights**2)),
        num_draws=num_draws,
    )


def _hyper_start(model: TensorModel, y: np.ndarray, mask: np.ndarray):
    """Positive starting values of the hyperparameters (sample sites only)."""
    for name, value in model.initial_hyperparameters(y, mask).items():
        if name.startswith("phi_"):
            raise NotImplementedError("the importance reference supports scale hyperparameters")
        if name == "log_sigma_series":
            raise NotImplementedError("the importance reference supports shared noise only")
        yield name, value
