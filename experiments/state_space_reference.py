"""The exact reference posterior of the users' state-space model: the state path integrated out.

For fixed parameters the model of ``scan_state_space.py``::

    x_t ~ Normal(phi x_{t-1}, q),   mu_t = beta mu_{t-1} + x_t,   y_t ~ Normal(mu_t, r)

is linear-Gaussian in the state ``s_t = (x_t, mu_t)``::

    s_t = F s_{t-1} + (1, 1)^T q e_t,   F = [[phi, 0], [phi, beta]],   y_t = mu_t + r n_t

with ``s_{-1} = 0``, so a Kalman filter gives ``log p(y | phi, beta, q, r)`` exactly. NUTS over
the four parameters on that marginal likelihood (:func:`collapsed_state_space`, the same priors)
has no state path to fight and mixes in seconds: it is the reference the example's SVI and NUTS
sds are measured against. :func:`dense_log_likelihood` (``y ~ N(0, q^2 M M^T + r^2 I)``) is the
check of the filter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from reparam.infer.nuts import NUTSRun, run_nuts

PARAMS = ("phi", "beta", "q", "r")


def kalman_log_likelihood(y: jax.Array, phi, beta, q, r) -> jax.Array:
    """``log p(y | phi, beta, q, r)`` with the path ``(x, mu)`` integrated out (Kalman filter)."""
    transition = jnp.array([[phi, 0.0], [phi, beta]])
    noise_cov = q**2 * jnp.ones((2, 2))

    def step(carry, y_t):
        mean, cov = carry
        mean = transition @ mean
        cov = transition @ cov @ transition.T + noise_cov
        innovation_var = cov[1, 1] + r**2
        innovation = y_t - mean[1]
        gain = cov[:, 1] / innovation_var
        mean = mean + gain * innovation
        cov = cov - jnp.outer(gain, gain) * innovation_var
        cov = 0.5 * (cov + cov.T)
        log_lik = -0.5 * (jnp.log(2 * jnp.pi * innovation_var) + innovation**2 / innovation_var)
        return (mean, cov), log_lik

    init = (jnp.zeros(2, dtype=y.dtype), jnp.zeros((2, 2), dtype=y.dtype))
    _, log_liks = jax.lax.scan(step, init, y)
    return log_liks.sum()


def dense_log_likelihood(y: jax.Array, phi, beta, q, r) -> jax.Array:
    """The same as a dense Gaussian: ``mu = q (I - beta L)^{-1} (I - phi L)^{-1} e``."""
    num = y.shape[0]
    eye = jnp.eye(num, dtype=y.dtype)
    lag = jnp.eye(num, k=-1, dtype=y.dtype)
    path = jnp.linalg.solve(eye - beta * lag, jnp.linalg.solve(eye - phi * lag, eye))
    cov = q**2 * path @ path.T + r**2 * eye
    return dist.MultivariateNormal(jnp.zeros(num, dtype=y.dtype), cov).log_prob(y)


def collapsed_state_space(y: jax.Array) -> None:
    """The four parameters with the example's priors and the Kalman marginal likelihood."""
    phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
    beta_raw = numpyro.sample("beta_raw", dist.Uniform(0.0, 1.0))
    beta = numpyro.deterministic("beta", phi + (1 - phi) * beta_raw)
    q = numpyro.sample("q", dist.HalfNormal(1.0))
    r = numpyro.sample("r", dist.HalfNormal(1.0))
    numpyro.factor("y", kalman_log_likelihood(y, phi, beta, q, r))


def filter_check(y: jax.Array) -> float:
    """Largest ``|kalman - dense|`` log likelihood over a few parameter points (float64)."""
    points = [(0.5, 0.9, 0.5, 0.3), (-0.5, 0.2, 1.0, 1.0), (0.9, 0.99, 0.3, 0.05)]
    with jax.enable_x64(True):
        y64 = jnp.asarray(np.asarray(y), dtype=jnp.float64)
        return max(abs(float(kalman_log_likelihood(y64, *p) - dense_log_likelihood(y64, *p)))
                   for p in points)


def exact_reference(y: jax.Array, seed: int, warmup: int = 1000, samples: int = 2000,
                    chains: int = 8) -> tuple[dict[str, np.ndarray], NUTSRun]:
    """Draws of the parameters from the exact marginal posterior ``p(phi, beta, q, r | y)``
    (NUTS in float64: the filter near the unit root loses digits in float32)."""
    with jax.enable_x64(True):
        y64 = jnp.asarray(np.asarray(y), dtype=jnp.float64)
        run = run_nuts(collapsed_state_space, y64, rng_key=jax.random.PRNGKey(seed),
                       num_warmup=warmup, num_samples=samples, num_chains=chains,
                       report_sites=list(PARAMS), target_accept_prob=0.95,
                       chain_method="vectorized", warn=False)
    return {k: np.asarray(run.samples[k]).reshape(-1) for k in PARAMS}, run
