"""Decorrelated models run under SVI (several guides), NUTS and Predictive, and their answers
agree with exact posteriors."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoNormal,
)
from numpyro.infer.initialization import init_to_value

import reparam
from tests.test_reparam.models import (
    PANEL_DIMS,
    panel_data,
    panel_model,
    ridge_model,
    ridge_precision,
)

RIDGE_Y = jnp.asarray(1.5 + 0.1 * np.random.default_rng(0).standard_normal(100), jnp.float32)
PANEL = reparam.decorrelate(
    panel_model,
    {"a": ["mu"], "z": ["mu", "a"], "A": ["mu", "a", "z"]},
    rotate={"i": "helmert"},
    sequence="t",
    dims=PANEL_DIMS,
    coefficients="params",  # SVI trains them (test_unfrozen_coefficients_are_svi_params)
)


def _ridge_exact():
    precision = ridge_precision(100)
    covariance = np.linalg.inv(precision)
    mean = covariance @ np.full(2, float(jnp.sum(RIDGE_Y)) / 0.01)
    return mean, np.sqrt(np.diag(covariance))


@pytest.fixture(scope="module")
def ridge_start():
    model = reparam.decorrelate(ridge_model, {"a": ["mu"]})
    local = reparam.LocalGaussian(model, {"mu": 0.0, "a": 0.0}, RIDGE_Y)
    return model, reparam.initialize(local, {"mu": 0.0, "a": 0.0}, laplace=False)


def test_mean_field_svi_matches_exact_ridge(ridge_start):
    """B1 in miniature: exact sds (0.995, corr -0.99995) within 5% after 1500 steps."""
    model, start = ridge_start
    frozen = reparam.freeze(model, start.coefficients)
    guide = AutoNormal(frozen, init_loc_fn=init_to_value(values=start.guide.values))
    optimizer = optax.chain(optax.adam(optax.cosine_decay_schedule(0.05, 1500)),
                            reparam.relative_steps())
    svi = SVI(frozen, guide, optimizer, Trace_ELBO())
    result = svi.run(jax.random.PRNGKey(0), 1500, RIDGE_Y, progress_bar=False,
                     init_params=start.guide.init_params())
    draws = Predictive(frozen, guide=guide, params=result.params, num_samples=20000,
                       return_sites=["mu", "a"])(jax.random.PRNGKey(1), RIDGE_Y)
    mean, sd = _ridge_exact()
    np.testing.assert_allclose([draws["mu"].std(), draws["a"].std()], sd, rtol=0.05)
    np.testing.assert_allclose([draws["mu"].mean(), draws["a"].mean()], mean, atol=0.1 * sd[0])


def test_nuts_on_frozen_model_within_mcse(ridge_start):
    """NUTS on the decorrelated ridge: mean and sd within 4 Monte Carlo standard errors of the
    exact Gaussian posterior, few leapfrog steps."""
    model, start = ridge_start
    frozen = reparam.freeze(model, start.coefficients)
    kernel = NUTS(frozen, init_strategy=init_to_value(values=start.guide.values))
    mcmc = MCMC(kernel, num_warmup=300, num_samples=1000, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(2), RIDGE_Y, extra_fields=("num_steps",))
    samples = mcmc.get_samples()
    mean, sd = _ridge_exact()
    for k, name in enumerate(("mu", "a")):
        draws = np.asarray(samples[name])
        ess = float(az.ess(draws[None]))
        assert abs(draws.mean() - mean[k]) < 4 * sd[k] / np.sqrt(ess)
        assert abs(draws.std() - sd[k]) < 4 * sd[k] / np.sqrt(2 * ess) + 0.01
    assert float(np.mean(mcmc.get_extra_fields()["num_steps"])) < 8


@pytest.mark.parametrize("guide_class", [AutoNormal, AutoDiagonalNormal,
                                         AutoLowRankMultivariateNormal])
def test_guides_run_and_predictive_uses_model_names(guide_class):
    y = panel_data()
    coefficients = {k: jnp.full(v.shape, 0.1) for k, v in
                    reparam.linear_plan(PANEL, {}, y).zero_coefficients(jnp.float32).items()}
    frozen = reparam.freeze(PANEL, coefficients)
    guide = guide_class(frozen)
    result = SVI(frozen, guide, optax.adam(0.01), Trace_ELBO()).run(
        jax.random.PRNGKey(0), 200, y, progress_bar=False)
    assert np.all(np.isfinite(result.losses))
    assert result.losses[-20:].mean() < result.losses[:20].mean()
    posterior = Predictive(frozen, guide=guide, params=result.params, num_samples=7)(
        jax.random.PRNGKey(1), y)
    assert posterior["A"].shape == (7, 4, 5) and posterior["a"].shape == (7, 4)
    # model-coordinate values follow from the auxiliary draws exactly
    prior = Predictive(frozen, num_samples=5)(jax.random.PRNGKey(2), y)
    assert {"A", "A_decorrelated", "a", "y"} <= set(prior)
    assert prior["A"].shape == (5, 4, 5)
    assert float(jnp.std(prior["A"][:, 0, 0])) > 0  # draws differ


def test_unfrozen_coefficients_are_svi_params():
    y = panel_data()
    result = SVI(PANEL, AutoNormal(PANEL), optax.adam(0.01), Trace_ELBO()).run(
        jax.random.PRNGKey(0), 5, y, progress_bar=False)
    assert {"a_shift_mu", "z_shift_a", "z_within", "A_shift_z", "A_within"} <= set(result.params)
    assert result.params["A_shift_z"].shape == (1, 5, 5)  # only the i-mean row of A, dense in t
