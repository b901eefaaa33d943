"""Temporal effects as scan transitions (:mod:`tensorfact.model.temporal`)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.infer import Predictive
from numpyro.infer.util import log_density, potential_energy, unconstrain_fn

import reparam
import tensorfact
from reparam.infer.nuts import run_nuts
from tensorfact.model import temporal
from tensorfact.model.tensor import TensorModel
from tensorfact.spec import GrandMean, ModelSpec, Temporal

DIMS = ("i", "j", "t")
SIZES = {"i": 3, "j": 2, "t": 6}
BUILT_IN = (
    GrandMean("mu"),
    Temporal("z", kind="random_walk", prior_scale=0.5),
    Temporal("A", by="i", kind="ar1"),
    Temporal("B", by="j", kind="local_linear_trend", prior_scale=2.0),
)
Y = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 6)), jnp.float32)


def _spec(effects):
    return ModelSpec(dims=DIMS, time="t", effects=tuple(effects))


def _scan_spec(**reparams):
    return _spec(
        temporal.scan_form(e, reparams.get(e.name)) if isinstance(e, Temporal) else e
        for e in BUILT_IN
    )


def _latent(trace):
    return {
        k: v["value"] for k, v in trace.items() if v["type"] == "sample" and not v["is_observed"]
    }


def test_builtin_and_scan_form_give_the_same_log_density():
    builtin, scanned = TensorModel(_spec(BUILT_IN), SIZES), TensorModel(_scan_spec(), SIZES)

    @jax.jit
    def densities(values, mask):
        scan_values = dict(values)
        for effect in BUILT_IN:
            if isinstance(effect, Temporal):
                scan_values = temporal.builtin_to_scan_values(effect, scan_values)
        args = (Y, mask)
        lp_builtin, _ = log_density(builtin, args, {}, values)
        lp_scan, trace = log_density(scanned, args, {}, scan_values)
        pe_builtin = potential_energy(builtin, args, {}, unconstrain_fn(builtin, args, {}, values))
        unconstrained = unconstrain_fn(scanned, args, {}, scan_values)
        pe_scan = potential_energy(scanned, args, {}, unconstrained)
        return lp_builtin, lp_scan, pe_builtin, pe_scan, trace["A"]["value"], trace["B"]["value"]

    for seed in (0, 1):
        trace = handlers.trace(handlers.seed(builtin, seed)).get_trace(Y, jnp.ones(Y.shape, bool))
        values = _latent(trace)
        for mask in (jnp.zeros(Y.shape, bool), jnp.ones(Y.shape, bool)):  # prior only; joint
            lp_b, lp_s, pe_b, pe_s, a, b = densities(values, mask)
            np.testing.assert_allclose(lp_s, lp_b, rtol=1e-5)
            np.testing.assert_allclose(pe_s, pe_b, rtol=1e-5)
            assert np.isfinite(float(lp_b))
        np.testing.assert_allclose(a, values["A"], rtol=1e-6)  # effect site: axes (rows, time)
        np.testing.assert_allclose(b, values["B"], rtol=1e-6)


def stochastic_volatility(name, rows):
    """A user-written transition: AR(1) level whose innovation scale follows its own walk."""
    phi = numpyro.sample(f"phi_{name}", dist.Uniform(0.0, 1.0))
    vol = numpyro.sample(f"vol_{name}", dist.HalfNormal(0.3))

    def step(state, t):
        level, log_scale = state
        log_scale = numpyro.sample(f"{name}_log_scale", dist.Normal(log_scale, vol))
        level = numpyro.sample(f"{name}_level", dist.Normal(phi * level, jnp.exp(log_scale)))
        return (level, log_scale), level

    return (jnp.zeros(rows), jnp.full(rows, -1.0)), step


def test_user_transition_prior_and_posterior_predictive():
    spec = _spec((GrandMean("mu"), Temporal("A", by="i", transition=stochastic_volatility)))
    model = TensorModel(spec, SIZES)
    prior = Predictive(model, num_samples=4)(jax.random.PRNGKey(0), Y, jnp.ones(Y.shape, bool))
    assert prior["A"].shape == (4, 3, 6)  # deterministic in (by, time) order
    assert prior["A_level"].shape == prior["A_log_scale"].shape == (4, 6, 3)  # time first
    np.testing.assert_allclose(prior["A"], np.moveaxis(prior["A_level"], 1, 2))
    assert np.all(np.abs(np.diff(prior["A"], axis=-1)) > 0)  # a new draw at every step
    posterior = {k: prior[k] for k in ("mu", "sigma", "phi_A", "vol_A", "A_level", "A_log_scale")}
    predictive = Predictive(model, posterior_samples=posterior, return_sites=["A", "y"])
    out = predictive(jax.random.PRNGKey(1), Y, jnp.ones(Y.shape, bool))
    np.testing.assert_allclose(out["A"], prior["A"], rtol=1e-6)
    assert out["y"].shape == (4, *Y.shape)
    assert model.decorrelation_config() == {}  # scan effects: reparam.scan_reparam
    # per-step sites join the Gaussian analysis of the SVI start, with time-first dims
    assert model.step_sites == {"A_log_scale": ("t", "i"), "A_level": ("t", "i")}


def damped_walk(name, rows):
    """A user-written transition: ``x_t ~ N(phi x_{t-1}, s)`` per series."""
    scale = numpyro.sample(f"s_{name}", dist.HalfNormal(1.0))
    phi = numpyro.sample(f"phi_{name}", dist.Uniform(0.0, 1.0))

    def step(previous, t):
        level = numpyro.sample(f"{name}_level", dist.Normal(phi * previous, scale))
        return level, level

    return jnp.zeros(rows), step


@pytest.fixture(scope="module")
def tiny_data():
    data, _ = tensorfact.simulate_additive({"region": 3, "product": 2, "year": 6}, seed=1)
    return data


def _transition_spec(data, reparam=None):
    transition = temporal.ScanPrior(damped_walk, reparam=reparam)
    effects = (GrandMean("mu"), Temporal("A", by="region", transition=transition))
    return ModelSpec(dims=data.dims, time="year", effects=effects)


def test_user_transition_through_fit_with_learnable_centring(tiny_data):
    spec = _transition_spec(tiny_data, {"A_level": "learnable"})
    fit = tensorfact.fit(tiny_data, spec, num_steps=200, stop_at_plateau=False, num_draws=50)
    # the centring is one param per series (not per step), trained by SVI
    centring = {k: v for k, v in fit.guide_params.items() if k.endswith("_centered")}
    assert list(centring) == ["A_level_centered"]
    assert centring["A_level_centered"].shape == (3,)
    assert np.all(np.abs(centring["A_level_centered"] - 0.5) > 1e-3)
    assert {"mu", "sigma", "s_A", "phi_A", "A"} <= set(fit.posterior.data_vars)
    assert fit.posterior["A"].dims == ("chain", "draw", "region", "year")
    assert np.all(np.abs(fit.posterior["A"].diff("year")) > 0)
    prediction = fit.predict()
    assert prediction.dims == tiny_data.dims and np.all(np.isfinite(prediction))
    # the model has no product effect: its cells' mean tracks the data's mean over products
    tracked = np.corrcoef(prediction.isel(product=0).values.ravel(),
                          tiny_data.mean("product").values.ravel())[0, 1]
    assert tracked > 0.5


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:NUTS diagnostics")  # 200 draws: low ESS is expected
def test_user_transition_through_fit_with_nuts(tiny_data):
    spec = _transition_spec(tiny_data, {"A_level": "learnable"})
    fit = tensorfact.fit(tiny_data, spec, method="nuts", num_warmup=200, num_samples=200,
                         num_chains=1, svi_steps_for_nuts=300)
    assert fit.posterior["A"].dims == ("chain", "draw", "region", "year")
    assert fit.diagnostics.divergences < 20


def test_errors():
    with pytest.raises(TypeError, match="transition must be a callable"):
        Temporal("z", transition=3)
    with pytest.raises(ValueError, match="already has a transition"):
        temporal.scan_form(temporal.scan_form(Temporal("z")))

    def wrong_shape(name, rows):
        def step(state, t):
            value = numpyro.sample(f"{name}_t", dist.Normal(jnp.zeros(5), 1.0))
            return state, value

        return jnp.zeros(rows), step

    model = TensorModel(_spec((Temporal("A", by="i", transition=wrong_shape),)), SIZES)
    with pytest.raises(ValueError, match="expected the series shape"):
        handlers.seed(model, 0)(Y, jnp.ones(Y.shape, bool))

    def with_plate(name, rows):
        def step(state, t):
            with numpyro.plate("series", rows[0]):
                value = numpyro.sample(f"{name}_t", dist.Normal(state, 1.0))
            return value, value

        return jnp.zeros(rows), step

    model = TensorModel(_spec((Temporal("A", by="i", transition=with_plate),)), SIZES)
    with pytest.raises(ValueError, match="Drop the plate"):
        handlers.seed(model, 0)(Y, jnp.ones(Y.shape, bool))


def test_nuts_runs_at_the_centring_svi_learned():
    """``run_nuts(params=...)`` freezes a scan site's learnable centring at the given (learned)
    value, not at its initial 0.5: NUTS's draws satisfy the map of the learned ``c``."""
    def walk(y):
        def step(previous, y_t):
            x = numpyro.sample("x", dist.Normal(previous, 2.0))
            numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
            return x, x

        scan(step, 0.0, y)

    model = reparam.scan_reparam(walk, {"x": reparam.LearnableCentering(per_element=False)})
    learned = {"x_centered": jnp.asarray(0.9), "x_decentered_auto_loc": jnp.zeros(5)}
    run = run_nuts(model, Y[0, 0, :5], rng_key=jax.random.PRNGKey(0), num_warmup=20,
                   num_samples=10, num_chains=1, params=learned, warn=False)
    u, x = run.samples["x_decentered"][0], run.samples["x"][0]
    previous = np.concatenate([np.zeros((10, 1)), x[:, :-1]], axis=1)

    def model_value(c):  # x_t = m + s^(1-c) (u_t - c m), m = x_{t-1}, s = 2
        return previous + 2.0 ** (1 - c) * (u - c * previous)

    np.testing.assert_allclose(x, model_value(0.9), rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(x - model_value(0.5))) > 1e-2  # the initial value was not used
