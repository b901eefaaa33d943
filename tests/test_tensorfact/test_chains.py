"""The compiled-once NUTS chains of the collapsed sampler against a conjugate posterior."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from reparam.infer.chains import run_chains


def _model(y):
    """m ~ N(0, 3), s ~ HalfNormal(1) (a constrained site), y_n ~ N(m, 0.5)."""
    m = numpyro.sample("m", dist.Normal(0.0, 3.0))
    numpyro.sample("s", dist.HalfNormal(1.0))
    numpyro.deterministic("twice_m", 2 * m)
    numpyro.sample("y", dist.Normal(m, 0.5), obs=y)


def test_chains_match_the_conjugate_posterior():
    """Posterior of m is N(mean, sd^2) in closed form; HalfNormal(1) has sd sqrt(1 - 2/pi).
    Means within 4 Monte Carlo standard errors (ESS-based), sds within 10%. (The vectorized
    chain method runs in test_collapsed.py's exact fit, on the Kalman path.)"""
    y = jnp.asarray(np.random.default_rng(0).normal(1.3, 0.5, size=20))
    precision = 1 / 3.0**2 + 20 / 0.5**2
    mean, sd = float(jnp.sum(y) / 0.5**2 / precision), precision**-0.5
    samples, diag = run_chains(_model, y, rng_key=jax.random.PRNGKey(0), num_warmup=300,
                               num_samples=600, num_chains=2, chain_method="sequential")
    assert samples["m"].shape == (2, 600) and samples["twice_m"].shape == (2, 600)
    np.testing.assert_allclose(samples["twice_m"], 2 * samples["m"], rtol=1e-6)
    assert diag.divergences == 0 and diag.max_rhat < 1.02 and diag.min_ess > 200
    assert 1 <= diag.mean_steps < 10 and diag.seconds > 0
    assert abs(samples["m"].mean() - mean) < 4 * sd / np.sqrt(diag.min_ess)
    np.testing.assert_allclose(samples["m"].std(), sd, rtol=0.1)
    np.testing.assert_allclose(samples["s"].std(), np.sqrt(1 - 2 / np.pi), rtol=0.1)
    assert np.all(samples["s"] > 0)


def test_unknown_chain_method_is_refused():
    with pytest.raises(ValueError, match="chain_method must be one of"):
        run_chains(_model, jnp.zeros(3), rng_key=jax.random.PRNGKey(0), num_warmup=1,
                   num_samples=1, num_chains=1, chain_method="parallel")


@pytest.mark.parametrize("chain_method", ["sequential", "vectorized"])
def test_progress_bar_is_display_only(chain_method, capfd):
    """With the bar the chains report to tqdm (on stderr, counting every chain's iterations
    when they run one after the other, one chain's when vectorized); without it nothing is
    printed; and the draws are bitwise the same either way (the same compiled run)."""
    y = jnp.asarray(np.random.default_rng(1).normal(0.4, 0.5, size=10))
    settings = dict(rng_key=jax.random.PRNGKey(3), num_warmup=30, num_samples=20,
                    num_chains=2, chain_method=chain_method)
    capfd.readouterr()
    shown, _ = run_chains(_model, y, progress_bar=True, **settings)
    bar = capfd.readouterr().err
    hidden, _ = run_chains(_model, y, progress_bar=False, **settings)
    assert capfd.readouterr().err == ""
    total = 100 if chain_method == "sequential" else 50
    assert f"{total}/{total}" in bar and "warmup" in bar and "sample" in bar
    for name in ("m", "s", "twice_m"):
        assert np.array_equal(shown[name], hidden[name]), name
