"""Small NumPyro models shared by the reparam tests."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

NUM_ROWS, T = 4, 5


def ridge_model(y):
    """B1-style ridge: y_n ~ N(mu + a, 0.1), mu ~ N(0, 10), a ~ N(0, 1)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu + a, 0.1), obs=y)


def ridge_precision(n: int, noise: float = 0.1) -> np.ndarray:
    """Exact posterior precision of ``ridge_model`` (order: mu, a)."""
    w = n / noise**2
    return np.array([[1 / 100 + w, w], [w, 1 + w]])


def panel_model(y):
    """mu + a[i] + z[t] + A[i, t] with plates for a, event dims for the series."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("i", NUM_ROWS):
        a = numpyro.sample("a", dist.Normal(0.0, s))
    z = numpyro.sample("z", dist.GaussianRandomWalk(0.3, T))
    with numpyro.plate("i", NUM_ROWS):
        A = numpyro.sample("A", dist.GaussianRandomWalk(0.2, T))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 0.5).expand([NUM_ROWS]).to_event(1))
    loc = mu + a[:, None] + z + A
    numpyro.sample("y", dist.Normal(loc, 0.5 * scale[:, None]).to_event(2), obs=y)


PANEL_DIMS = {"mu": (), "a": ("i",), "z": ("t",), "A": ("i", "t"), "scale": ("i",)}


def panel_data(seed: int = 0) -> jnp.ndarray:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(NUM_ROWS, T)), jnp.float32)
