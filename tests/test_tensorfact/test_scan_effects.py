"""Learnable centring of a scan site (``reparam.scan_reparam(model, {"x": "learnable"})``):
the centring is a real parameter that SVI trains, towards the parameterization the data favour.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

import reparam
from reparam.scan.strategies import LearnableCentering

T, N = 6, 3


def walk(noise: float):
    """N random walks ``x_t ~ N(x_{t-1}, 1)`` observed as ``y_t ~ N(x_t, noise)``."""

    def model(y):
        def step(previous, y_t):
            x = numpyro.sample("x", dist.Normal(previous, 1.0))
            numpyro.sample("y", dist.Normal(x, noise), obs=y_t)
            return x, x

        scan(step, jnp.zeros(N), y, length=T)

    return model


def test_learnable_centring_starts_at_its_init_and_svi_moves_it_the_right_way():
    """``x_centered`` (one ``c`` per series, ``c = 1`` centred, ``0`` non-centred) exists and
    starts at ``LearnableCentering().init``; SVI moves it and keeps it in ``[0, 1]``: towards
    centred (mean above 0.7) for walks pinned by precise observations, where the centred
    posterior is nearly independent, and to non-centred (below 0.05) for walks the data
    barely inform, where the prior's increments are the independent coordinates."""
    rng = np.random.default_rng(0)
    path = np.cumsum(rng.normal(size=(T, N)), axis=0)
    learned = {}
    for noise in (0.05, 20.0):
        y = jnp.asarray(path + noise * rng.normal(size=(T, N)), jnp.float32)
        model = reparam.scan_reparam(walk(noise), {"x": "learnable"})
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(y)
        params = {name: site for name, site in trace.items() if site["type"] == "param"}
        assert list(params) == ["x_centered"]
        np.testing.assert_array_equal(params["x_centered"]["value"],
                                      np.full(N, LearnableCentering().init))
        svi = SVI(model, AutoNormal(model), optax.adam(0.05), Trace_ELBO(num_particles=8))
        run = svi.run(jax.random.PRNGKey(0), 4000, y, progress_bar=False)
        centred = np.asarray(run.params["x_centered"])
        assert centred.shape == (N,) and np.all((centred >= 0) & (centred <= 1)), centred
        assert np.all(np.abs(centred - LearnableCentering().init) > 0.05), centred
        learned[noise] = centred
    assert learned[0.05].mean() > 0.7 and learned[20.0].max() < 0.05, learned
