"""Models as NumPyro users write them (no reparam knowledge), for the automatic configuration."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

TENSOR_SHAPE = (4, 3, 5)
TENSOR_SCALES = {"s_a": 1.0, "s_b": 1.0, "s_z": 0.3, "s_A": 0.3, "s_B": 0.3, "s_C": 1.0,
                 "sigma": 0.5}
SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def tensor_model(y, scales=None):
    """``y[i,j,t] ~ N(mu + a_i + b_j + z_t + A_it + B_jt + C_ij, sigma)``; C's plates are
    renamed (AutoNormal refuses ``i`` at another dim) and the walks' steps are event axes.
    Scales in ``scales`` are fixed, the others sampled."""
    num_i, num_j, num_t = y.shape
    scales = scales or {}

    def scale(name):
        return scales[name] if name in scales else numpyro.sample(name, dist.HalfNormal(1.0))

    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    s_a, s_b, s_z, s_A, s_B, s_C, sigma = (
        scale(n) for n in ("s_a", "s_b", "s_z", "s_A", "s_B", "s_C", "sigma"))
    with numpyro.plate("i", num_i):
        a = numpyro.sample("a", dist.Normal(0.0, s_a))
    with numpyro.plate("j", num_j):
        b = numpyro.sample("b", dist.Normal(0.0, s_b))
    z = numpyro.sample("z", dist.GaussianRandomWalk(s_z, num_t))
    with numpyro.plate("rows", num_i):
        A = numpyro.sample("A", dist.GaussianRandomWalk(s_A, num_t))
    with numpyro.plate("cols", num_j):
        B = numpyro.sample("B", dist.GaussianRandomWalk(s_B, num_t))
    with numpyro.plate("ci", num_i, dim=-2), numpyro.plate("cj", num_j, dim=-1):
        C = numpyro.sample("C", dist.Normal(0.0, s_C))
    loc = (mu + a[:, None, None] + b[None, :, None] + z + A[:, None, :] + B[None, :, :]
           + C[..., None])
    with numpyro.plate("yi", num_i, dim=-3), numpyro.plate("yj", num_j, dim=-2), \
            numpyro.plate("week", num_t, dim=-1):
        numpyro.sample("y", dist.Normal(loc, sigma), obs=y)


def tensor_data(seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).normal(size=TENSOR_SHAPE), jnp.float32)


def schools_model(sigma, y=None):
    """Eight schools, centred."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(sigma)):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def ridge(y):
    """The forum user's ridge: ``y ~ N(mu + a, 0.05)``, one observation."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(mu + a, 0.05), obs=y)


RIDGE_SD_MU = float(np.sqrt(401.0 / (401.0**2 - 400.0**2)))  # exact posterior sd of mu
