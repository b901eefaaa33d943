"""Reparameterizations inside ``scan`` bodies (:mod:`reparam.scan.handler`).

The central check is exactness: for every variant, the reparameterized model's density in its
new coordinates ``u`` is the pushforward of the plain model's, ``log q(u) = log p(x(u)) +
log|det dx/du|``, with the Jacobian computed by brute force (``jax.jacfwd``) over all steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
import scipy.optimize
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.util import potential_energy, unconstrain_fn

import reparam
from reparam.scan.handler import GaussianConditional, LearnableCentering, NonCentered, StepAffine

T, N = 5, 3
GLOBALS = ("mu", "phi", "q")
LOCAL = ("d", "x", "v")  # per-step sites of the body


def model(y):
    """Per series n: slope d_t ~ N(d_{t-1}, 0.3), x_t ~ N(phi x_{t-1} + d_{t-1}, q),
    v_t ~ LogNormal(-1, 0.3), y_t ~ N(mu + x_t, v_t)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
    q = numpyro.sample("q", dist.HalfNormal(1.0))

    def step(carry, y_t):  # N series as a batch (AutoNormal fails on plates inside scan)
        x_prev, d_prev = carry
        d = numpyro.sample("d", dist.Normal(d_prev, 0.3))
        x = numpyro.sample("x", dist.Normal(phi * x_prev + d_prev, q))
        v = numpyro.sample("v", dist.LogNormal(-1.0, 0.3).expand((N,)))
        numpyro.sample("y", dist.Normal(mu + x, v), obs=y_t)
        return (x, d), x

    scan(step, (jnp.zeros(N), jnp.zeros(N)), y, length=T)


DATA = jnp.asarray(np.random.default_rng(0).normal(size=(T, N)), jnp.float32)
VARIANTS = {  # together they cover every strategy and option (centred: as written)
    "centered": {"x": "centered"},
    "affine": {
        "d": "centered",
        "x": StepAffine(("mu", "d")),
        "v": StepAffine(("phi",), per_step=False),
    },
    "mixed": {"d": NonCentered(), "x": "learnable", "v": StepAffine(("mu", "d"))},
    "conditional": {"d": "centered", "x": GaussianConditional(), "v": StepAffine(("mu", "x"))},
}
IDENTITY = ("affine", "mixed", "conditional")  # "centered" is the plain model: trivial
UNIT_JACOBIAN = ("affine",)


def _random_params(reparameterized, seed):
    trace = handlers.trace(handlers.seed(reparameterized, 0)).get_trace(DATA)
    rng = np.random.default_rng(seed)
    params = {}
    for name, site in trace.items():
        if site["type"] == "param":
            shape = jnp.shape(site["value"])
            low = 0.05 if name.endswith("_centered") else -1.0
            params[name] = jnp.asarray(rng.uniform(low, 0.95, size=shape), jnp.float32)
    return params


SUFFIXES = ("_noise", "_decentered", "_decorrelated", "_whitened")


def _latent(trace):
    return {
        n: s["value"] for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]
    }


def _pushforward_terms(config):
    """A compiled ``(params, latent) -> (-log q(u), -log p(x(u)), log|det dx/du|)``."""
    reparameterized = reparam.scan_reparam(model, config)

    def terms(params, latent):
        frozen = reparam.freeze(reparameterized, params)
        new = [n for n in latent if n.endswith(SUFFIXES)]
        touched = [n.rsplit("_", 1)[0] for n in new]

        def to_model(flat):  # new coordinates -> all locals, unconstrained (v: log)
            parts = jnp.split(flat, len(new)) if new else []
            values = {n: p.reshape(latent[n].shape) for n, p in zip(new, parts, strict=True)}
            substituted = handlers.substitute(frozen, data={**latent, **values})
            trace = handlers.trace(substituted).get_trace(DATA)
            return {n: trace[n]["value"] for n in LOCAL}

        def touched_flat(flat):
            values = to_model(flat)
            values["v"] = jnp.log(values["v"])
            return jnp.concatenate([jnp.ravel(values[n]) for n in touched])

        flat = jnp.concatenate([jnp.ravel(latent[n]) for n in new]) if new else jnp.zeros(0)
        plain = {**{n: latent[n] for n in GLOBALS}, **to_model(flat)}
        pe_new = potential_energy(frozen, (DATA,), {}, unconstrain_fn(frozen, (DATA,), {}, latent))
        pe_plain = potential_energy(model, (DATA,), {}, unconstrain_fn(model, (DATA,), {}, plain))
        log_jac = jnp.linalg.slogdet(jax.jacfwd(touched_flat)(flat))[1] if new else 0.0
        return pe_new, pe_plain, log_jac

    return reparameterized, jax.jit(terms)


@pytest.mark.parametrize("variant", IDENTITY)
def test_log_joint_is_the_pushforward(variant):
    reparameterized, terms = _pushforward_terms(VARIANTS[variant])
    for seed in (0, 1):
        params = _random_params(reparameterized, seed)
        trace = handlers.trace(
            handlers.seed(reparam.freeze(reparameterized, params), seed)
        ).get_trace(DATA)
        pe_new, pe_plain, log_jac = terms(params, _latent(trace))
        # -log q(u) = -log p(x(u)) - log|det dx/du|
        np.testing.assert_allclose(pe_new, pe_plain - log_jac, rtol=1e-5, atol=1e-3)
        for name, strategy in VARIANTS[variant].items():
            expected = "sample" if strategy == "centered" else "deterministic"
            assert trace[name]["type"] == expected
            assert trace[name]["value"].shape == (T, N)
        if variant in UNIT_JACOBIAN:  # unit Jacobian: the log joint itself is unchanged
            np.testing.assert_allclose(log_jac, 0.0, atol=1e-4)
        else:
            assert abs(float(log_jac)) > 0.1


def test_site_names_and_params_created_once():
    reparameterized = reparam.scan_reparam(model, VARIANTS["mixed"])
    trace = handlers.trace(handlers.seed(reparameterized, 0)).get_trace(DATA)
    params = {n: s["value"].shape for n, s in trace.items() if s["type"] == "param"}
    # one centring per element of a step's value (not per step); shifts: one row per step
    assert params == {"x_centered": (N,), "v_shift_mu": (T, N), "v_shift_d": (T, N)}
    assert trace["d_noise"]["value"].shape == (T, N)  # drawn outside the loop
    assert trace["x_decentered"]["value"].shape == (T, N)
    assert trace["v_decorrelated"]["value"].shape == (T, N)
    config = {"x": LearnableCentering(per_element=False), "v": StepAffine(("phi",), False)}
    trace = handlers.trace(handlers.seed(reparam.scan_reparam(model, config), 0)).get_trace(DATA)
    params = {n: s["value"].shape for n, s in trace.items() if s["type"] == "param"}
    assert params == {"x_centered": (), "v_shift_phi": (N,)}


@pytest.mark.parametrize("variant", ["centered", "mixed", "conditional"])
def test_draws_differ_across_steps_and_predictive(variant):
    reparameterized = reparam.scan_reparam(model, VARIANTS[variant])
    prior = Predictive(reparameterized, num_samples=4)(jax.random.PRNGKey(0), None)
    assert prior["x"].shape == prior["y"].shape == (4, T, N)
    for site in ("d", "x", "v", "y"):
        steps = np.asarray(prior[site])
        assert np.all(np.abs(np.diff(steps, axis=1)) > 0), site  # a new draw at every step
    # posterior predictive: given the new coordinates, x is recomputed and y is drawn
    new = {k: v for k, v in prior.items() if k in GLOBALS or k.endswith(SUFFIXES)}
    if variant == "centered":
        new.update({k: prior[k] for k in LOCAL})
    options = {}
    if variant == "conditional":  # x's map conditions on y: without y, x must be given
        with pytest.raises(ValueError, match="condition_deterministic=True"):
            Predictive(reparameterized, posterior_samples=new)(jax.random.PRNGKey(1), None)
        new["x"], options = prior["x"], {"condition_deterministic": True}
    post = Predictive(reparameterized, posterior_samples=new, **options)(
        jax.random.PRNGKey(1), None
    )
    if variant != "centered":  # x is recomputed from the new coordinates (else it is given)
        np.testing.assert_allclose(post["x"], prior["x"], rtol=1e-5, atol=1e-6)
    assert post["y"].shape == (4, T, N)
    assert not np.allclose(post["y"], prior["y"])


def walk_model(y):
    """A small model for training: q ~ HalfNormal, x_t ~ N(x_{t-1}, q), y_t ~ N(x_t, 0.5)."""
    q = numpyro.sample("q", dist.HalfNormal(1.0))

    def step(carry, y_t):
        x = numpyro.sample("x", dist.Normal(carry, q))
        numpyro.sample("y", dist.Normal(x, 0.5), obs=y_t)
        return x, x

    scan(step, jnp.zeros(N), y, length=T)


def test_learnable_centring_is_trained_and_freezes_for_nuts():
    reparameterized = reparam.scan_reparam(walk_model, {"x": LearnableCentering(init=0.5)})
    guide = AutoNormal(reparameterized)
    svi = SVI(reparameterized, guide, optax.adam(0.05), Trace_ELBO())
    result = svi.run(jax.random.PRNGKey(0), 30, DATA, progress_bar=False)
    centred = np.asarray(result.params["x_centered"])
    assert centred.shape == (N,)  # one per series, shared by the T steps
    assert np.all(np.abs(centred - 0.5) > 1e-3)  # trained
    frozen = reparam.freeze(reparameterized, result.params)
    trace = handlers.trace(handlers.seed(frozen, 0)).get_trace(DATA)
    assert not any(s["type"] == "param" for s in trace.values())


# -- errors ------------------------------------------------------------------------------------
def _scan_model(step, plate=False):
    def run():
        if plate:
            with numpyro.plate("rows", 2):
                scan(step, jnp.zeros(2), None, length=3)
        else:
            scan(step, 0.0, None, length=3)

    return run


def _walk(carry, _):
    x = numpyro.sample("x", dist.Normal(carry, 1.0))
    return x, x


def _run(run, config):
    handlers.trace(handlers.seed(reparam.scan_reparam(run, config), 0)).get_trace()


def test_scan_under_plate_names_the_workaround():
    with pytest.raises(NotImplementedError, match="batch the step's sites over the plate"):
        _run(_scan_model(_walk, plate=True), {"x": "learnable"})


def test_param_inside_body_is_refused():
    def step(carry, _):
        c = numpyro.param("c", 0.5)
        return carry, numpyro.sample("x", dist.Normal(c * carry, 1.0))

    with pytest.raises(ValueError, match="Create it before the scan"):
        _run(_scan_model(step), {"x": "learnable"})


def test_nested_scan_is_refused():
    def step(carry, _):
        inner, _ = scan(_walk, carry, None, length=2)
        return inner, inner

    with pytest.raises(NotImplementedError, match="Nested scan"):
        _run(_scan_model(step), {})


@pytest.mark.parametrize(
    ("config", "error", "match"),
    [
        ({"w": "learnable"}, ValueError, "no scan body sampled"),
        ({"x": "sideways"}, TypeError, "must be one of"),
        ({"x": StepAffine(("later",))}, ValueError, "was not sampled before"),
        (["x"], TypeError, "dict"),
    ],
)
def test_config_errors(config, error, match):
    with pytest.raises(error, match=match):
        _run(_scan_model(_walk), config)


def test_strategy_arguments_are_checked():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        LearnableCentering(init=1.5)
    with pytest.raises(TypeError, match="must be a number"):
        LearnableCentering(init="half")
    with pytest.raises(TypeError, match=r"StepAffine\(\('mu',\)\)"):
        StepAffine("mu")


def test_unsupported_distributions():
    def step(carry, _):
        x = numpyro.sample("x", dist.Gamma(2.0, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=1.0)
        return carry, x

    with pytest.raises(NotImplementedError, match="Normal sites only"):
        _run(_scan_model(step), {"x": "noncentered"})
    with pytest.raises(ValueError, match="real-support loc-scale"):
        _run(_scan_model(step), {"x": "learnable"})
    with pytest.raises(ValueError, match="needs a real-support site"):
        _run(_scan_model(step), {"x": "conditional"})
    with pytest.raises(ValueError, match="observed"):
        _run(_scan_model(step), {"y": "learnable"})


def test_parent_must_broadcast_to_the_child():
    def run():
        numpyro.sample("w", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        scan(_walk, 0.0, None, length=3)

    with pytest.raises(ValueError, match="does not broadcast"):
        _run(run, {"x": StepAffine(("w",))})


def test_gaussian_conditional_whitens_the_exact_conditional():
    """For a linear-Gaussian body the path is ``x = m + L^{-T} u`` with ``m`` and ``L^{-T}
    L^{-1}`` the exact conditional mean and covariance given the parameters and the data
    (dense Gaussian oracle), recomputed for each value of the parameter ``q``."""

    def ar_model(y):
        q = numpyro.sample("q", dist.HalfNormal(1.0))

        def step(carry, y_t):
            x = numpyro.sample("x", dist.Normal(0.8 * carry, q))
            numpyro.sample("y", dist.Normal(x, 0.5), obs=y_t)
            return x, x

        scan(step, jnp.zeros(N), y)

    reparameterized = reparam.scan_reparam(ar_model, {"x": "conditional"})

    def path(q, u):
        data = {"q": q, "x_whitened": u.reshape(T, N)}
        trace = handlers.trace(handlers.substitute(reparameterized, data=data)).get_trace(DATA)
        return trace["x"]["value"].reshape(-1)

    shift = np.eye(T, k=-1)
    for q in (0.3, 1.2):
        prior = (np.eye(T) - 0.8 * shift).T @ (np.eye(T) - 0.8 * shift) / q**2
        covariance = np.linalg.inv(prior + np.eye(T) / 0.25)
        mean = covariance @ (np.asarray(DATA) / 0.25)  # (T, N): the series are independent
        zero = jnp.zeros(T * N)
        np.testing.assert_allclose(path(q, zero).reshape(T, N), mean, rtol=1e-4, atol=1e-5)
        jac = np.asarray(jax.jacfwd(lambda u, q=q: path(q, u))(zero))
        implied = jac @ jac.T  # (T N, T N), row-major (t, n)
        for n in range(N):
            block = implied[n::N, n::N]
            np.testing.assert_allclose(block, covariance, rtol=1e-4, atol=1e-6)
        assert np.allclose(implied[0::N, 1::N], 0.0, atol=1e-6)


@pytest.mark.slow
def test_mean_field_svi_with_the_gaussian_conditional_matches_the_exact_posterior():
    """With the path whitened at every ``q``, a mean-field guide over ``(q, u)`` only has to fit
    ``p(q | y)``: its mean and sd of ``log q`` (the guide's coordinate) match the best Gaussian
    fit (reverse KL, by quadrature) of the exact posterior of ``log q`` (grid of the dense
    Gaussian marginal likelihood ``y ~ N(0, Sigma_x(q) + 0.25 I)``) within 10%, and ``u``'s
    guide scales stay at 1 (``u | q, y ~ N(0, I)``)."""
    length = 40
    rng = np.random.default_rng(3)
    x = np.zeros(length)
    for t in range(length):
        x[t] = 0.8 * (x[t - 1] if t else 0.0) + 0.7 * rng.normal()
    y = jnp.asarray(x + 0.5 * rng.normal(size=length), jnp.float32)

    def ar_model(y):
        q = numpyro.sample("q", dist.HalfNormal(1.0))

        def step(carry, y_t):
            x = numpyro.sample("x", dist.Normal(0.8 * carry, q))
            numpyro.sample("y", dist.Normal(x, 0.5), obs=y_t)
            return x, x

        scan(step, 0.0, y)

    reparameterized = reparam.scan_reparam(ar_model, {"x": GaussianConditional()})
    guide = AutoNormal(reparameterized)
    schedule = optax.exponential_decay(0.02, 400, 0.5, end_value=0.001)
    svi = SVI(reparameterized, guide, optax.adam(schedule), Trace_ELBO(num_particles=4))
    result = svi.run(jax.random.PRNGKey(0), 2500, y, progress_bar=False,
                     init_params={"x_whitened_auto_scale": jnp.ones(length)})
    draws = Predictive(reparameterized, guide=guide, params=result.params, num_samples=4000,
                       return_sites=["q"])(jax.random.PRNGKey(1), y)["q"]

    a = np.eye(length) - 0.8 * np.eye(length, k=-1)
    grid = np.linspace(np.log(0.05), np.log(2.5), 2000)  # log q
    log_post = []
    for q in np.exp(grid):
        cov = q**2 * np.linalg.inv(a.T @ a) + 0.25 * np.eye(length)
        _, logdet = np.linalg.slogdet(cov)
        quad = float(np.asarray(y) @ np.linalg.solve(cov, np.asarray(y)))
        log_post.append(-0.5 * (logdet + quad) - 0.5 * q**2 + np.log(q))  # HalfNormal, Jacobian
    log_post = np.asarray(log_post)
    nodes, node_weights = np.polynomial.hermite_e.hermegauss(40)

    def reverse_kl(loc_log_scale):  # KL(N(m, s) || p) up to a constant, by quadrature
        loc, log_scale = loc_log_scale
        points = loc + np.exp(log_scale) * nodes
        inside = np.interp(points, grid, log_post, left=-1e6, right=-1e6)
        return -np.sum(node_weights * inside) / np.sqrt(2 * np.pi) - log_scale

    weights = np.exp(log_post - log_post.max())
    mean = float(np.sum(weights * grid) / weights.sum())
    best = scipy.optimize.minimize(reverse_kl, [mean, np.log(0.2)], method="Nelder-Mead").x
    sd = float(np.exp(best[1]))  # the best sd any Gaussian guide over log q can reach
    log_q = np.log(np.asarray(draws))
    assert abs(float(log_q.mean()) - best[0]) < 0.1 * sd
    assert 0.9 < float(log_q.std()) / sd < 1.1
    scales = np.asarray(result.params["x_whitened_auto_scale"])  # u | q, y ~ N(0, I)
    assert np.all(np.abs(scales - 1.0) < 0.15)
