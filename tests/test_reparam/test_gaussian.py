"""Exact local-Gaussian coefficients, the family ceiling and the Laplace starting point,
checked against closed-form oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value
from scipy import optimize, stats

import reparam
from reparam.programs import PROGRAMS
from tests.test_reparam.models import (
    NUM_ROWS,
    PANEL_DIMS,
    T,
    panel_data,
    panel_model,
    ridge_model,
    ridge_precision,
)

RIDGE_Y = jnp.asarray(1.5 + 0.1 * np.random.default_rng(0).standard_normal(100), jnp.float32)
PANEL_CONFIG = {"a": ["mu"], "z": ["mu", "a"], "A": ["mu", "a", "z"]}


def test_optimal_factor_diagonalises():
    rng = np.random.default_rng(1)
    root = rng.normal(size=(6, 6))
    precision = root @ root.T + 0.1 * np.eye(6)
    factor = reparam.optimal_factor(precision)
    np.testing.assert_allclose(np.diag(factor), 1.0)
    np.testing.assert_allclose(np.triu(factor, 1), 0.0)
    inverse = np.linalg.inv(factor)
    transformed = inverse.T @ precision @ inverse
    np.testing.assert_allclose(transformed, np.diag(np.diag(transformed)), atol=1e-9)


def test_ridge_coefficient_is_conditional_regression():
    """For u = a + xi mu the exact xi is P_a,mu / P_a,a (0.9999 on B1)."""
    model = reparam.decorrelate(ridge_model, {"a": ["mu"]})
    coefficients = reparam.gaussian_coefficients(model, {"mu": 0.0, "a": 0.0}, RIDGE_Y)
    precision = ridge_precision(100)
    np.testing.assert_allclose(
        coefficients["a_shift_mu"], precision[1, 0] / precision[1, 1], rtol=1e-6
    )


def test_newton_reaches_exact_posterior_mean():
    model = reparam.decorrelate(ridge_model, {"a": ["mu"]})
    local = reparam.LocalGaussian(model, {"mu": 0.0, "a": 0.0}, RIDGE_Y)
    point, _ = local.newton({"mu": 3.0, "a": -7.0})
    precision = ridge_precision(100)
    mean = np.linalg.solve(precision, np.full(2, float(jnp.sum(RIDGE_Y)) / 0.01))
    np.testing.assert_allclose([point["mu"], point["a"]], mean, rtol=1e-6)


def _panel_plan(equal_noise: bool, **options):
    model = reparam.decorrelate(panel_model, PANEL_CONFIG, dims=PANEL_DIMS, **options)
    trace = handlers.trace(handlers.seed(panel_model, 0)).get_trace(panel_data())
    point = {k: v["value"] for k, v in trace.items() if v["type"] == "sample" and k != "y"}
    if equal_noise:
        point["scale"] = jnp.ones(4)
    local = reparam.LocalGaussian(model, point, panel_data())
    # precision in model coordinates: the plan's rotation is orthonormal
    precision_z = local.precision(point)
    with jax.enable_x64(True):
        back = jax.vmap(lambda v: local.plan.rotate(v, inverse=True))
        precision_x = np.asarray(back(back(jnp.asarray(precision_z)).T).T)
    return local, point, precision_x


def test_rotated_family_ceiling_is_exact_on_complete_data():
    """Helmert along i + dense coupling in t: KL 0 and exact marginal sds at the projection."""
    local, _, precision = _panel_plan(True, rotate={"i": "helmert"}, sequence="t")
    result = reparam.ceiling(local.plan, precision, steps=0)
    assert abs(result.kl) < 1e-6
    exact_sd = local.plan.split(np.sqrt(np.diag(np.linalg.inv(precision))))
    for name, sd in exact_sd.items():
        np.testing.assert_allclose(result.sds[name], sd, rtol=1e-6)


def test_naive_family_ceiling_is_too_narrow_and_optimiser_improves_it():
    """Without rotations and time coupling the same parents cannot represent the posterior:
    the ceiling keeps KL > 0 and the time series' implied sds too narrow; L-BFGS lowers the
    KL but cannot reach 0."""
    local, _, precision = _panel_plan(True)
    result = reparam.ceiling(local.plan, precision, steps=30)
    exact_sd = local.plan.split(np.sqrt(np.diag(np.linalg.inv(precision))))
    assert result.kl > 1.0
    assert result.kl_history[-1] < result.kl_history[0] - 0.1
    assert float(np.min(result.sds["z"] / exact_sd["z"])) < 0.7


def test_svi_learns_the_conditional_coefficient():
    """Trained by SVI from 0 (8 particles), the coefficient converges to the oracle's
    conditional regression P_a,mu / P_a,a on a moderately correlated Gaussian."""

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + a, 1.0).expand([10]).to_event(1), obs=y)

    y = jnp.linspace(-1.0, 2.0, 10)
    decorrelated = reparam.decorrelate(model, {"a": ["mu"]}, coefficients="params")
    guide = numpyro.infer.autoguide.AutoNormal(decorrelated)
    svi = numpyro.infer.SVI(
        decorrelated, guide, optax.adam(0.02), numpyro.infer.Trace_ELBO(num_particles=8)
    )
    result = svi.run(jax.random.PRNGKey(0), 3000, y, progress_bar=False)
    oracle = 10.0 / 11.0  # P = [[11, 10], [10, 11]]
    assert abs(float(result.params["a_shift_mu"]) - oracle) < 0.05
    draws = numpyro.infer.Predictive(
        decorrelated, guide=guide, params=result.params, num_samples=20000,
        return_sites=["mu", "a"],
    )(jax.random.PRNGKey(1), y)
    exact_sd = np.sqrt(np.diag(np.linalg.inv(np.array([[11.0, 10.0], [10.0, 11.0]]))))
    np.testing.assert_allclose([draws["mu"].std(), draws["a"].std()], exact_sd, rtol=0.1)


class _ScaleModel:
    """a_k ~ N(0, s), y_k ~ N(a_k, 1), s ~ HalfNormal(2): p(y | s) = prod N(y_k; 0, sqrt(1 + s^2))
    exactly. It names its computation (``program_key``), so its compiled programs are shared."""

    def __call__(self, y):
        s = numpyro.sample("s", dist.HalfNormal(2.0))
        a = numpyro.sample("a", dist.Normal(0.0, s).expand([8]).to_event(1))
        numpyro.sample("y", dist.Normal(a, 1.0).to_event(1), obs=y)

    def program_key(self):
        return ("test_gaussian", "scale model")


def _check_collapsed_mode(mode, y):
    def negative_log_posterior(log_s):
        s = np.exp(log_s)
        return -(
            stats.norm(0, np.sqrt(1 + s**2)).logpdf(np.asarray(y)).sum()
            + stats.halfnorm(scale=2.0).logpdf(s)
            + log_s
        )

    best = optimize.minimize_scalar(negative_log_posterior, bounds=(-5, 3), method="bounded")
    np.testing.assert_allclose(np.log(mode.point["s"]), best.x, atol=1e-4)
    # its Laplace spread: 1 / sqrt of the closed form's curvature in log s at the mode
    h = 1e-3
    curvature = (negative_log_posterior(best.x + h) - 2 * negative_log_posterior(best.x)
                 + negative_log_posterior(best.x - h)) / h**2
    np.testing.assert_allclose(mode.unconstrained_sd["s"], curvature**-0.5, rtol=1e-3)
    # the decorrelated sites sit at their conditional mean given s*
    s2 = float(mode.point["s"]) ** 2
    np.testing.assert_allclose(mode.point["a"], np.asarray(y) * s2 / (1 + s2), rtol=1e-5)


def test_laplace_mode_matches_collapsed_posterior_mode():
    """The mode of the unconstrained log s under p(y | s) p(s) (closed form above), for a
    plain-function model (no program key: compiled for this analysis only)."""
    y = jnp.asarray([1.2, -0.4, 2.5, 0.3, -1.8, 0.9, 1.4, -0.7])

    def model(y):
        _ScaleModel()(y)

    decorrelated = reparam.decorrelate(model, {"a": []})
    start = {"s": 1.0, "a": jnp.zeros(8)}
    _check_collapsed_mode(reparam.laplace_mode(reparam.LocalGaussian(decorrelated, start, y),
                                               start), y)


def test_laplace_programs_are_shared_and_take_the_data_as_argument():
    """Two analyses of one named model with different data compile the Laplace programs once
    (the second adds nothing to the process cache) and each finds its own data's mode."""
    decorrelated = reparam.decorrelate(_ScaleModel(), {"a": []})
    start = {"s": 1.0, "a": jnp.zeros(8)}
    first_y = jnp.asarray([1.2, -0.4, 2.5, 0.3, -1.8, 0.9, 1.4, -0.7])
    first = reparam.LocalGaussian(decorrelated, start, first_y)
    _check_collapsed_mode(reparam.laplace_mode(first, start), first_y)
    cached = len(PROGRAMS)
    second_y = 3.0 * first_y + 1.0
    second = reparam.LocalGaussian(decorrelated, start, second_y)
    _check_collapsed_mode(reparam.laplace_mode(second, start), second_y)
    assert len(PROGRAMS) == cached
    for name in ("laplace_value_1", "laplace_value_and_grad_1", "laplace_mode_1"):  # Gaussian
        assert second._jitted[name] is first._jitted[name], name


def test_laplace_mode_refuses_a_dense_precision_that_cannot_fit():
    """The Laplace objective holds the involved sites' dense Hessian: too large a one is a
    clear error before anything is traced (the size here is made to look too large)."""
    from unittest import mock

    decorrelated = reparam.decorrelate(_ScaleModel(), {"a": []})
    start = {"s": 1.0, "a": jnp.zeros(8)}
    local = reparam.LocalGaussian(decorrelated, start, jnp.ones(8))
    with mock.patch("reparam.local.analysis.dense_bytes", return_value=2**80), \
            pytest.raises(ValueError, match="dense matrices.*decorrelate=False"):
        reparam.laplace_mode(local, start)


def test_relative_steps_scale_location_updates():
    transform = reparam.relative_steps()
    params = {"x_auto_loc": jnp.zeros(2), "x_auto_scale": jnp.array([-1.0, 2.0]), "w": 1.0}
    updates = {"x_auto_loc": jnp.ones(2), "x_auto_scale": jnp.ones(2), "w": jnp.ones(())}
    scaled, _ = transform.update(updates, transform.init(params), params)
    np.testing.assert_allclose(scaled["x_auto_loc"], jax.nn.softplus(jnp.array([-1.0, 2.0])))
    np.testing.assert_allclose(scaled["x_auto_scale"], 1.0)
    np.testing.assert_allclose(scaled["w"], 1.0)
    with pytest.raises(ValueError, match="needs the current params"):
        transform.update(updates, transform.init(params))


def test_freeze_hides_coefficients_from_svi():
    model = reparam.decorrelate(ridge_model, {"a": ["mu"]}, coefficients="params")
    frozen = reparam.freeze(model, {"a_shift_mu": jnp.asarray(0.5), "unrelated": 1.0})
    trace = handlers.trace(handlers.seed(frozen, 0)).get_trace(RIDGE_Y)
    assert not [k for k, v in trace.items() if v["type"] == "param"]
    inner = handlers.trace(handlers.seed(model, 0)).get_trace(RIDGE_Y)
    assert inner["a_shift_mu"]["type"] == "param"
    # the frozen value is used: a = u - 0.5 mu
    values = handlers.trace(handlers.seed(frozen, 1)).get_trace(RIDGE_Y)
    expected = values["a_decorrelated"]["value"] - 0.5 * values["mu"]["value"]
    np.testing.assert_allclose(values["a"]["value"], expected, rtol=1e-6)


def test_decentering_centredness_is_the_likelihood_share():
    """a_k ~ N(0, s), y_k ~ N(a_k, 1): at the mode s*, c = 1 / (1 + 1/s*^2) for every k (the
    likelihood's share of a_k's precision), and the reference scale is s*."""
    y = jnp.asarray([1.2, -0.4, 2.5, 0.3])

    def model():
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        a = numpyro.sample("a", dist.Normal(0.0, s).expand([4]).to_event(1))
        numpyro.sample("y", dist.Normal(a, 1.0).to_event(1), obs=y)

    decentred = {"a": reparam.Affine(decenter=True)}
    local = reparam.LocalGaussian(reparam.decorrelate(model, decentred), {"s": 1.0, "a": y})
    start = reparam.initialize(local, {"s": 1.0, "a": jnp.zeros(4)})
    s_star = float(start.point["s"])
    np.testing.assert_allclose(start.coefficients["a_scale_ref"], s_star, rtol=1e-6)
    np.testing.assert_allclose(start.coefficients["a_centering"], 1 / (1 + s_star**-2),
                               rtol=1e-5)


def _shift_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 100.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    a = numpyro.sample("a", dist.Normal(0.0, s).expand([4]).to_event(1))
    numpyro.sample("y", dist.Normal(mu + a[:, None], 0.5).to_event(2), obs=y)


def _initial_loss(y, recentre=True):
    """Mean-field ELBO loss (400 particles, fixed key) of the initialised guide."""
    model = reparam.decorrelate(_shift_model, {"a": reparam.Affine(("mu",), decenter=True)})
    point = {"mu": float(y.mean()), "s": 1.0, "a": jnp.zeros(4)}
    start = reparam.initialize(reparam.LocalGaussian(model, point, y), point)
    coefficients = dict(start.coefficients)
    if not recentre:
        coefficients["a_decenter_at"] = np.zeros_like(coefficients["a_decenter_at"])
    frozen = reparam.freeze(model, coefficients)
    values = {k: jnp.asarray(v) for k, v in start.guide.values.items()}
    guide = AutoNormal(frozen, init_loc_fn=init_to_value(values=values))
    svi = SVI(frozen, guide, optax.adam(1e-3), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), y, init_params=start.guide.init_params())
    elbo = Trace_ELBO(num_particles=400)
    return float(elbo.loss(jax.random.PRNGKey(1), svi.get_params(state), frozen, guide, y))


def test_decentring_is_invariant_to_a_constant_data_offset():
    """Adding 100 to the data only moves mu's posterior (0.5 nats of its N(0, 100) prior): the
    decentred child is rescaled around its fitted value, not around zero. Rescaled around
    zero, the 100 * shift that u carries turns the scale's spread into ~100-unit noise."""
    y = jnp.asarray(np.random.default_rng(4).normal(size=(4, 3)), jnp.float32)
    base, shifted = _initial_loss(y), _initial_loss(y + 100.0)
    assert abs(shifted - base) < 1.5
    assert _initial_loss(y + 100.0, recentre=False) - base > 100.0


def test_guide_starts_constrained_parents_at_their_constrained_value():
    """A parent-only site with constrained support (``s > 0``) enters the analysis through its
    unconstrained value; the guide's starting values are constrained (``init_to_value``), so
    ``s`` must start at the point's ``s``, not at ``log s`` (a regression: it was ``log s``)."""
    y = jnp.asarray([0.3, 0.1, 0.5, 0.2])

    def model():
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        a = numpyro.sample("a", dist.Normal(s, 1.0).expand([4]).to_event(1))
        numpyro.sample("y", dist.Normal(a, 1.0).to_event(1), obs=y)

    decorrelated = reparam.decorrelate(model, {"a": ["s"]})
    point = {"s": 0.5, "a": y}
    start = reparam.initialize(reparam.LocalGaussian(decorrelated, point), point)
    s_star = float(start.point["s"])
    assert 0 < s_star < 1  # log s* < 0: the old value was negative, an invalid start
    np.testing.assert_allclose(start.guide.values["s"], s_star, rtol=1e-6)
    assert "a_decorrelated" in start.guide.values and "a" not in start.guide.values



def _level_and_walk(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    x = numpyro.sample("x", dist.GaussianRandomWalk(0.2, y.shape[0]))
    numpyro.sample("y", dist.Normal(mu + x, 0.1), obs=y)


def test_markov_family_ceiling_on_a_chain_is_exact():
    """The Markov form is the exact conditional of a Gauss-Markov chain sampled last given its
    parents (a level ``mu`` and a random walk ``x`` confounded with it): the projected factor
    has KL 0 and exact marginal sds, with 2T coefficients instead of T^2."""
    y = np.random.default_rng(2).normal(size=20)
    model = reparam.decorrelate(_level_and_walk, {"x": ["mu"]}, sequence="t", band=1,
                                markov=True, dims={"x": ("t",)})
    with jax.enable_x64(True):
        local = reparam.LocalGaussian(model, {"mu": 0.0, "x": jnp.zeros(20)}, y)
        precision = local.precision({"mu": 0.0, "x": jnp.zeros(20)})  # no rotations: model coords
        result = reparam.ceiling(local.plan, precision, steps=0)
    assert sum(np.size(v) for v in result.coefficients.values()) == 40
    assert abs(result.kl) < 1e-8
    exact_sd = local.plan.split(np.sqrt(np.diag(np.linalg.inv(precision))))
    for name, sd in exact_sd.items():
        np.testing.assert_allclose(result.sds[name], sd, rtol=1e-6)


def test_markov_contrasts_family_ceiling_is_exact_on_complete_data():
    """Markov on the Helmert contrasts, dense on the mean slices (``markov="contrasts"``):
    each contrast chain of ``A`` is the last chain of its block, and ``z`` (no rotated axis)
    is a mean chain, so the projected factor is exact (KL 0, exact sds) with ``O(T)``
    coefficients per contrast row and dense ones only for ``z`` and mean ``A``."""
    local, _, precision = _panel_plan(
        True, rotate={"i": "helmert"}, sequence="t", markov="contrasts"
    )
    result = reparam.ceiling(local.plan, precision, steps=0)
    assert abs(result.kl) < 1e-6
    exact_sd = local.plan.split(np.sqrt(np.diag(np.linalg.inv(precision))))
    for name, sd in exact_sd.items():
        np.testing.assert_allclose(result.sds[name], sd, rtol=1e-6)
    shapes = {k: np.shape(v) for k, v in result.coefficients.items()}
    assert shapes["A_within"] == (NUM_ROWS, T) and shapes["A_within_mean"] == (1, T, T)
    assert shapes["z_within_mean"] == (T, T) and "z_within" not in shapes


def test_markov_contrasts_needs_a_sequence():
    with pytest.raises(ValueError, match="sequence"):
        reparam.decorrelate(panel_model, PANEL_CONFIG, markov="contrasts")
    with pytest.raises(ValueError, match="'contrasts'"):
        reparam.decorrelate(panel_model, PANEL_CONFIG, sequence="t", markov="yes")


def test_markov_family_cannot_marginalise_a_later_chain():
    """Where a later chain is marginalised (``z`` before ``A`` in the panel), ``z``'s exact
    conditional has long memory: the Markov projection keeps a KL gap the dense coupling does
    not (B2: 163 vs 0 nats, ``experiments/ceiling_b2.py``)."""
    local, _, precision = _panel_plan(
        True, rotate={"i": "helmert"}, sequence="t", band=4, markov=True
    )
    assert reparam.ceiling(local.plan, precision, steps=0).kl > 0.01


def test_positive_curvature_is_the_saddle_free_form():
    """An indefinite Hessian (away from the mode along a scale) becomes V |L| V^T; a positive
    definite one is returned unchanged."""
    from reparam.local.factor import positive_curvature

    rng = np.random.default_rng(0)
    vectors = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    indefinite = (vectors * np.array([3.0, -2.0, 0.5, -1e-12])) @ vectors.T
    fixed = positive_curvature(indefinite)
    np.testing.assert_allclose(fixed, (vectors * np.array([3.0, 2.0, 0.5, 3e-8])) @ vectors.T,
                               atol=1e-10)
    definite = indefinite @ indefinite.T + np.eye(4)
    assert positive_curvature(definite) is definite
