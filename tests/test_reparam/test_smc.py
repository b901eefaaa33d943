"""Particle filters and PMMH on ``scan`` models (:mod:`reparam.infer.smc`), against exact oracles.

Oracles written here: a Kalman filter for the forum user's state-space model (log likelihood
and filtering moments of ``x_t``), a Kalman filter + RTS smoother for an AR(1) observed in noise
(smoothing and forecasts), the forward algorithm of a two-state HMM (a discrete latent), and the
exact posterior of one noise scale on a grid (PMMH). Tolerances come from the Monte Carlo error
over seeds: ``20`` filters per proposal, so the mean of a per-seed error has standard error
``sd / sqrt(20)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.contrib.control_flow import scan

import reparam
from reparam.infer.filtering import build_particle_filter, summarize
from reparam.infer.particles import effective_sample_size, systematic_indices
from reparam.infer.smc import forecast
from reparam.infer.smoothing import smooth

T, N, SEEDS = 100, 1000, 20
TRUTH = {"phi": 0.5, "beta": 0.9, "q": 0.5, "r": 0.3}
FIXED = {"phi": 0.5, "beta_raw": 0.8, "q": 0.5, "r": 0.3}  # beta = phi + (1 - phi) beta_raw


def state_space(y=None, num_steps=None):
    """The forum model: x_t ~ N(phi x_{t-1}, q), mu_t = beta mu_{t-1} + x_t, y_t ~ N(mu_t, r)."""
    phi = numpyro.sample("phi", dist.Uniform(-1.0, 1.0))
    beta_raw = numpyro.sample("beta_raw", dist.Uniform(0.0, 1.0))
    beta = numpyro.deterministic("beta", phi + (1 - phi) * beta_raw)
    q = numpyro.sample("q", dist.HalfNormal(1.0))
    r = numpyro.sample("r", dist.HalfNormal(1.0))

    def step(carry, y_t):
        x_prev, mu_prev = carry
        x = numpyro.sample("x", dist.Normal(phi * x_prev, q))
        mu = beta * mu_prev + x
        numpyro.sample("y", dist.Normal(mu, r), obs=y_t)
        return (x, mu), mu

    _, mu = scan(step, (0.0, 0.0), y, length=num_steps)
    numpyro.deterministic("mu", mu)


def simulate_forum(num_steps, seed):
    rng = np.random.default_rng(seed)
    x = mu = 0.0
    ys = []
    for _ in range(num_steps):
        x = TRUTH["phi"] * x + TRUTH["q"] * rng.normal()
        mu = TRUTH["beta"] * mu + x
        ys.append(mu + TRUTH["r"] * rng.normal())
    return jnp.asarray(ys, jnp.float32)


def kalman_forum(y, phi, beta, q, r):
    """Exact ``log p(y)`` and filtering mean / sd of ``x_t`` given ``y_{0:t}`` (float64)."""
    f = np.array([[phi, 0.0], [phi, beta]])
    noise = q**2 * np.ones((2, 2))
    mean, cov = np.zeros(2), np.zeros((2, 2))
    log_lik, means, sds = 0.0, [], []
    for y_t in np.asarray(y, np.float64):
        mean, cov = f @ mean, f @ cov @ f.T + noise
        s = cov[1, 1] + r**2
        gain = cov[:, 1] / s
        log_lik += -0.5 * (np.log(2 * np.pi * s) + (y_t - mean[1]) ** 2 / s)
        mean, cov = mean + gain * (y_t - mean[1]), cov - np.outer(gain, gain) * s
        means.append(mean[0])
        sds.append(np.sqrt(cov[0, 0]))
    return log_lik, np.array(means), np.array(sds)


Y = simulate_forum(T, seed=0)
FORUM = handlers.condition(state_space, FIXED)
EXACT = kalman_forum(Y, **TRUTH)


PROPOSALS = ("prior", "optimal")


def _forum_runs(proposal):
    """20 filters of 1000 particles (one compiled, vmapped call)."""
    pf = build_particle_filter(FORUM, Y, num_particles=N, proposal=proposal)

    def one(key):
        out = pf.run(key)
        mean, sd, _ = summarize(out, (0.5,))
        return out.log_evidence, mean["x"], sd["x"], out.ess

    keys = jax.random.split(jax.random.PRNGKey(1), SEEDS)
    return tuple(np.asarray(a, np.float64) for a in jax.jit(jax.vmap(one))(keys))


@pytest.fixture(scope="module")
def forum():
    return {proposal: _forum_runs(proposal) for proposal in PROPOSALS}


@pytest.mark.parametrize("proposal", PROPOSALS)
def test_log_evidence_matches_kalman(forum, proposal):
    """Floor: |mean bias| < 0.5 nats and sd < 1 nat over 20 seeds. And the bias is the one
    an unbiased ``Z^`` implies: ``E log Z^ ~ log Z - var/2`` (delta method), within 4 standard
    errors of the mean, which a filter off by a constant or mis-weighted would fail."""
    log_z = forum[proposal][0]
    bias, sd = log_z.mean() - EXACT[0], log_z.std(ddof=1)
    assert abs(bias) < 0.5 and sd < 1.0, (proposal, bias, sd)
    assert abs(bias + sd**2 / 2) < 4 * sd / np.sqrt(SEEDS) + 0.02, (proposal, bias, sd)


@pytest.mark.parametrize("proposal", PROPOSALS)
def test_filtering_moments_match_kalman(forum, proposal):
    """Filtering means and sds of ``x_t`` at every step within Monte Carlo error of the Kalman
    filter: the seed-averaged error in units of its standard error has RMS near 1 (< 1.6 over
    100 steps) and max < 6; the sd ratio averaged over seeds is within 5% at every step (its
    per-seed error is about ``1 / sqrt(2 ESS)``)."""
    _, mean, sd, ess = forum[proposal]
    _, exact_mean, exact_sd = EXACT
    z = (mean.mean(0) - exact_mean) / (mean.std(0, ddof=1) / np.sqrt(SEEDS))
    assert np.sqrt(np.mean(z**2)) < 1.6 and np.max(np.abs(z)) < 6, (proposal, z)
    assert np.mean(np.abs(mean - exact_mean) / exact_sd) < 0.1
    ratio = sd.mean(0) / exact_sd
    assert np.all(np.abs(ratio - 1) < 0.05), (proposal, ratio.min(), ratio.max())
    assert np.all((ess >= 1) & (ess <= N + 1e-3))


def test_optimal_proposal_has_lower_evidence_variance(forum):
    """Variance of log Z^ over 20 seeds: optimal below 0.4 x bootstrap (an F(19, 19) ratio
    that equal variances would put below 0.4 with probability about 2.5%)."""
    var = {p: forum[p][0].var(ddof=1) for p in PROPOSALS}
    assert var["optimal"] < 0.4 * var["prior"], var


def _expected_offspring(weights):
    """E_U[#offspring of i] for systematic resampling, integrated exactly over U: the counts
    are constant between the breakpoints frac(N C_i), so evaluate at each interval's middle."""
    num = len(weights)
    cumulative = np.cumsum(weights) * num
    breaks = np.unique(np.concatenate([[0.0, 1.0], np.mod(cumulative, 1.0)]))
    expected = np.zeros(num)
    log_w = jnp.log(jnp.asarray(weights, jnp.float32))
    for low, high in zip(breaks[:-1], breaks[1:], strict=True):
        if high - low < 1e-7:
            continue
        idx = np.asarray(systematic_indices(log_w, jnp.float32((low + high) / 2)))
        expected += (high - low) * np.bincount(idx, minlength=num)
    return expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_systematic_resampling_is_unbiased_exactly(seed):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(9, 0.7))
    weights[rng.integers(9)] = 0.0  # a zero weight never gets offspring
    weights /= weights.sum()
    np.testing.assert_allclose(_expected_offspring(weights), 9 * weights, atol=2e-5)
    for u in np.linspace(0.0, 0.999, 37):  # every count is floor or ceil of N w_i
        counts = np.bincount(np.asarray(systematic_indices(jnp.log(weights), u)), minlength=9)
        assert np.all((counts >= np.floor(9 * weights - 1e-5))
                      & (counts <= np.ceil(9 * weights + 1e-5)))


def test_effective_sample_size():
    assert float(effective_sample_size(jnp.zeros(50))) == pytest.approx(50.0)
    assert float(effective_sample_size(jnp.array([0.0, -jnp.inf, -jnp.inf]))) == 1.0


def test_same_key_same_result_and_summaries(forum):
    run = lambda key: reparam.particle_filter(FORUM, Y[:30], num_particles=200,  # noqa: E731
                                              rng_key=key, quantiles=(0.1, 0.5, 0.9))
    a, b = run(jax.random.PRNGKey(3)), run(jax.random.PRNGKey(3))
    assert float(a.log_evidence) == float(b.log_evidence)
    np.testing.assert_array_equal(a.smoothed["x"], b.smoothed["x"])
    assert len(np.unique(forum["prior"][0])) == SEEDS  # different keys, different estimates
    assert a.smoothed["x"].shape == (100, 30) and a.quantiles["x"].shape == (3, 30)
    assert np.all(np.diff(np.asarray(a.quantiles["x"]), axis=0) >= 0)
    assert np.all((a.ess > 0) & (a.ess <= 200.001))
    # each ancestral path follows the genealogy: its value at t is a particle of step t
    out = a.output
    particles = np.asarray(out.particles["x"])
    assert all(np.isin(np.asarray(a.smoothed["x"][:, t]), particles[t]).all() for t in range(30))


def ar1(y=None, num_steps=None, phi=0.8, q=0.6, r=0.5):
    """x_t ~ N(phi x_{t-1}, q) (x_{-1} = 0), y_t ~ N(x_t, r): the carry is the latent site."""

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(phi * x_prev, q))
        numpyro.sample("y", dist.Normal(x, r), obs=y_t)
        return x, x

    scan(step, 0.0, y, length=num_steps)


def rts_ar1(y, phi=0.8, q=0.6, r=0.5):
    """Filtering and smoothing means / variances of the AR(1) (Kalman filter + RTS)."""
    m, p, fm, fp, pm, pp = 0.0, 0.0, [], [], [], []
    for y_t in np.asarray(y, np.float64):
        m_pred, p_pred = phi * m, phi**2 * p + q**2
        gain = p_pred / (p_pred + r**2)
        m, p = m_pred + gain * (y_t - m_pred), (1 - gain) * p_pred
        fm.append(m), fp.append(p), pm.append(m_pred), pp.append(p_pred)
    sm, sp = [fm[-1]], [fp[-1]]
    for t in range(len(fm) - 2, -1, -1):
        c = fp[t] * phi / pp[t + 1]
        sm.insert(0, fm[t] + c * (sm[0] - pm[t + 1]))
        sp.insert(0, fp[t] + c**2 * (sp[0] - pp[t + 1]))
    return np.array(fm), np.array(fp), np.array(sm), np.array(sp)


Y_AR = jnp.asarray(np.random.default_rng(5).normal(size=60) * 1.2, jnp.float32)


@pytest.fixture(scope="module")
def ar1_backward():
    return reparam.particle_filter(ar1, Y_AR, num_particles=300, rng_key=jax.random.PRNGKey(0),
                                   proposal="optimal", smoothing="backward",
                                   num_trajectories=400)


def test_backward_simulation_matches_rts_smoother(ar1_backward):
    """400 backward paths from 300 particles: the smoothed means are unbiased (the signed
    error averages to ~0 over the 60 steps; its size, about 0.07 sd per step, was measured
    over seeds, so the bounds are mean |error| < 0.12 sd and max < 0.5 sd), the sds within
    10% on average; and backward simulation beats ancestral tracing of the same filter, whose
    early steps collapse onto a few particles (path degeneracy)."""
    _, _, sm, sp = rts_ar1(Y_AR)
    paths = np.asarray(ar1_backward.smoothed["x"], np.float64)
    err = (paths.mean(0) - sm) / np.sqrt(sp)
    assert np.abs(err).mean() < 0.12 and np.abs(err).max() < 0.5 and abs(err.mean()) < 0.05
    assert abs(np.mean(paths.std(0) / np.sqrt(sp)) - 1) < 0.1
    pf = build_particle_filter(ar1, Y_AR, num_particles=300, proposal="optimal")
    ancestral = np.asarray(smooth(pf, ar1_backward.output, jax.random.PRNGKey(1), "ancestral",
                                  400)["x"], np.float64)
    assert np.abs(ancestral.mean(0) - sm).mean() > np.abs(paths.mean(0) - sm).mean()
    assert len(np.unique(ancestral[:, 0])) < len(np.unique(paths[:, 0]))
    fm, fp, _, _ = rts_ar1(Y_AR)  # the optimal proposal is exact for this body: tight
    assert np.mean(np.abs(np.asarray(ar1_backward.mean["x"]) - fm) / np.sqrt(fp)) < 0.05


def test_forecast_matches_the_exact_predictive(ar1_backward):
    """x_{T-1+h} | y ~ N(phi^h m, phi^2h P + q^2 (1 - phi^2h) / (1 - phi^2)); y adds r^2."""
    phi, q, r, h = 0.8, 0.6, 0.5, 4
    draws = forecast(ar1, Y_AR, filtered=ar1_backward, num_steps=h,
                     rng_key=jax.random.PRNGKey(1), num_draws=4000)
    assert draws["x"].shape == (4000, h) and draws["y"].shape == (4000, h)
    fm, fp, _, _ = rts_ar1(Y_AR)
    steps = np.arange(1, h + 1)
    var = phi ** (2 * steps) * fp[-1] + q**2 * (1 - phi ** (2 * steps)) / (1 - phi**2)
    mean = phi**steps * fm[-1]
    x = np.asarray(draws["x"], np.float64)
    y = np.asarray(draws["y"], np.float64)
    assert np.all(np.abs(x.mean(0) - mean) < 0.1 * np.sqrt(var))
    assert np.all(np.abs(x.var(0) / var - 1) < 0.12)
    assert np.all(np.abs(y.var(0) / (var + r**2) - 1) < 0.12)


def hmm(y=None):
    """Two-state Markov chain s_t (stay 0.9), y_t ~ N(2 s_t - 1, 0.8): a discrete latent."""

    def step(s_prev, y_t):
        s = numpyro.sample("s", dist.Bernoulli(jnp.where(s_prev == 1, 0.9, 0.1)))
        numpyro.sample("y", dist.Normal(2.0 * s - 1.0, 0.8), obs=y_t)
        return s, s

    scan(step, jnp.int32(0), y)


def test_bootstrap_filter_supports_discrete_latents():
    """Against the forward algorithm (exact log likelihood), 10 seeds of 500 particles."""
    y = np.random.default_rng(2).normal(size=50) + np.repeat([-1.0, 1.0, -1.0, 1.0, 1.0], 10)
    transition = np.array([[0.9, 0.1], [0.1, 0.9]])
    alpha, exact = np.array([1.0, 0.0]), 0.0
    for y_t in y:
        alpha = (alpha @ transition) * np.exp(-0.5 * ((y_t - np.array([-1.0, 1.0])) / 0.8) ** 2)
        alpha /= 0.8 * np.sqrt(2 * np.pi)
        exact += np.log(alpha.sum())
        alpha /= alpha.sum()
    pf = build_particle_filter(hmm, jnp.asarray(y, jnp.float32), num_particles=500)
    keys = jax.random.split(jax.random.PRNGKey(0), 10)
    log_z = np.asarray(jax.jit(jax.vmap(lambda k: pf.run(k).log_evidence))(keys))
    assert abs(log_z.mean() - exact) < 0.3 and log_z.std() < 0.5, (log_z.mean(), exact)
    with pytest.raises(ValueError, match="discrete or constrained"):
        build_particle_filter(hmm, jnp.asarray(y, jnp.float32), num_particles=10,
                              proposal="optimal")


def no_scan(y):
    numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def observed_outside_only(y):
    """The likelihood after the loop, on the scan's output."""

    def step(x_prev, _):
        x = numpyro.sample("x", dist.Normal(x_prev, 1.0))
        return x, x

    _, xs = scan(step, 0.0, None, length=y.shape[0])
    numpyro.sample("y", dist.Normal(xs, 1.0), obs=y)


def observed_after_scan(y):
    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(x_prev, 1.0))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y_t)
        return x, x

    _, xs = scan(step, 0.0, y)
    numpyro.sample("total", dist.Normal(xs.sum(), 1.0), obs=0.0)


def test_clear_errors():
    y = Y[:10]
    with pytest.raises(ValueError, match="never calls numpyro.contrib.control_flow.scan"):
        reparam.particle_filter(no_scan, y, num_particles=10, rng_key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"observes nothing \(observed outside it: \['y'\]\)"):
        reparam.particle_filter(observed_outside_only, y, num_particles=10,
                                rng_key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"\['total'\] are sampled after the scan"):
        reparam.particle_filter(observed_after_scan, y, num_particles=10,
                                rng_key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"\['phi', 'beta_raw', 'q', 'r'\] outside the scan"):
        reparam.particle_filter(state_space, y, num_particles=10, rng_key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="smoothing='backward' needs a body"):
        reparam.particle_filter(FORUM, y, num_particles=10, rng_key=jax.random.PRNGKey(0),
                                smoothing="backward")
    with pytest.raises(ValueError, match="proposal must be"):
        build_particle_filter(FORUM, y, num_particles=10, proposal="learned")
    with pytest.raises(TypeError, match="num_particles must be an int"):
        build_particle_filter(FORUM, y, num_particles=10.0)
    with pytest.raises(ValueError, match="nothing to infer"):
        reparam.pmmh(FORUM, y, num_particles=10, rng_key=jax.random.PRNGKey(0))


def _exact_r_posterior(y):
    """p(r | y) with phi, beta, q fixed: HalfNormal(1) prior x Kalman likelihood on a grid."""
    grid = np.linspace(0.02, 1.0, 1500)
    log_post = np.array([kalman_forum(y, 0.5, 0.9, 0.5, r)[0] for r in grid])
    log_post += -0.5 * grid**2
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    mean = (w * grid).sum()
    return mean, np.sqrt((w * (grid - mean) ** 2).sum())


def test_pmmh_recovers_the_exact_posterior_of_r():
    """PMMH on r alone (phi, beta, q fixed; T = 50, 150 bootstrap particles) against the
    grid posterior: mean within 3 Monte Carlo standard errors (bulk ESS from ArviZ), sd within
    30%, acceptance in (0.1, 0.8)."""
    from reparam.infer.nuts import diagnose

    y = Y[:50]
    model = handlers.condition(state_space, {k: FIXED[k] for k in ("phi", "beta_raw", "q")})
    run = reparam.pmmh(model, y, num_particles=150, rng_key=jax.random.PRNGKey(0),
                       num_warmup=300, num_samples=700, num_chains=2)
    assert np.all((run.accept_rate > 0.1) & (run.accept_rate < 0.8)), run.accept_rate
    r = run.samples["r"]
    assert r.shape == (2, 700) and set(run.samples) == {"r", "beta"}
    _, ess = diagnose({"r": r}, ["r"])
    mean, sd = _exact_r_posterior(y)
    assert abs(r.mean() - mean) < 3 * sd / np.sqrt(ess), (r.mean(), mean, sd, ess)
    assert abs(r.std() / sd - 1) < 0.3, (r.std(), sd)
