"""Structured collapsed Gaussian (tensorfact.collapsed) against the dense oracle.

Tolerances (float64): the structured and dense paths compute the same quantities by different
exact factorizations, so they agree to rounding error amplified by the conditioning of the
posterior precision (about 1e4 to 1e6 here: mu has prior sd 100, the noise sd is 0.1-0.3):
log marginal to 1e-9 relative, gradients to 1e-7 relative to the largest component, means and
sds to 1e-8 absolute (posterior sds are 0.05-100). The NUTS comparison is statistical: within
4 combined standard errors (NUTS MCSE and the importance-sampling reference's error).
"""

from __future__ import annotations

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from numpyro import handlers

import tensorfact
from tensorfact.collapsed import CollapsedGaussian
from tensorfact.model.tensor import TensorModel
from tensorfact.simulate import simulate_additive
from tensorfact.spec import (
    GrandMean,
    ModelSpec,
    Noise,
    Shrinkage,
    Temporal,
    default_spec,
)
from tensorfact.testing.dense import GaussianOracle
from tensorfact.testing.reference import importance_reference

HYPER = {
    "s_a": 0.7, "s_b": 1.3, "s_C": 0.9, "s_z": 0.3, "s_A": 0.25, "s_B": 0.15, "sigma": 0.2,
}
# (sizes, data dim order, seed, missing fraction); time first / middle / last.
CASES = [
    ({"i": 3, "j": 4, "t": 6}, ("i", "j", "t"), 1, 0.2),
    ({"i": 4, "j": 3, "t": 5}, ("t", "i", "j"), 2, 0.25),
    ({"i": 2, "j": 5, "t": 7}, ("j", "t", "i"), 3, 0.2),
]


def _problem(sizes, dims, seed, missing, spec=None):
    data, _ = simulate_additive(sizes, seed=seed, missing=missing)
    data = data.transpose(*dims)
    spec = default_spec(data.dims, time="t") if spec is None else spec
    model = TensorModel(spec, dict(zip(data.dims, data.shape, strict=True)))
    mask = np.isfinite(data.values)
    assert 0 < (~mask).sum() < mask.size  # some cells missing, some observed
    return model, data.values, mask


def _hyper(values):
    return {k: jnp.asarray(v, jnp.float64) for k, v in values.items()}


def _assert_close_to_dense(model, y, mask, hypers):
    """Structured vs dense at each hyperparameter set (one compile per path and case)."""
    oracle = GaussianOracle(model, np.nan_to_num(y), mask)
    structured = CollapsedGaussian(model, y, mask)
    dense_value_grad = jax.jit(jax.value_and_grad(oracle.log_marginal))
    dense_solve = jax.jit(oracle.solve)
    value_grad = jax.jit(jax.value_and_grad(structured.log_marginal))
    moments_fn = jax.jit(structured.moments)
    names = [s.name for s in model.location_sites]
    for hyper in hypers:
        dense_value, dense_grad = dense_value_grad(hyper)
        value, grad = value_grad(hyper)
        np.testing.assert_allclose(value, dense_value, rtol=1e-9)
        scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(dense_grad))
        assert set(grad) == set(dense_grad) and scale > 0
        for name in dense_grad:
            np.testing.assert_allclose(grad[name], dense_grad[name], rtol=1e-7,
                                       atol=1e-7 * scale, err_msg=name)
        precision, dense_mean = dense_solve(hyper)
        dense_sd = oracle.split(np.sqrt(np.diag(np.linalg.inv(np.asarray(precision)))))
        dense_mean = oracle.split(np.asarray(dense_mean))
        moments = moments_fn(hyper)
        assert sorted(moments.mean) == sorted(names)
        for name in names:
            np.testing.assert_allclose(moments.mean[name], dense_mean[name], atol=1e-8,
                                       err_msg=name)
            np.testing.assert_allclose(moments.sd[name], dense_sd[name], atol=1e-8,
                                       err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=["ijt", "tij", "jti"])
def test_default_spec_matches_dense_oracle(x64, case):
    model, y, mask = _problem(*case)
    scaled = {k: 3.0 * v if k.startswith("s_") else v for k, v in HYPER.items()}
    _assert_close_to_dense(model, y, mask, [_hyper(HYPER), _hyper({**scaled, "sigma": 0.05})])


def test_posterior_keeps_site_order(x64):
    """``posterior`` returns numpy moments in the model's site order (jit sorts dict keys)."""
    model, y, mask = _problem(*CASES[0])
    moments = CollapsedGaussian(model, y, mask).posterior(HYPER)
    names = [s.name for s in model.location_sites]
    assert list(moments.mean) == names == list(moments.sd)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float64
               for v in moments.sd.values())


def test_cost_is_linear_in_time(x64):
    """Every intermediate of the structured log marginal and its gradient grows at most
    linearly in T (no T x T object): traced sizes at T = 8 and T = 64 differ by <= 8x."""

    def sizes(num_steps):
        model, y, mask = _problem({"i": 3, "j": 2, "t": num_steps}, ("i", "j", "t"), 1, 0.2)
        structured = CollapsedGaussian(model, y, mask)
        jaxpr = jax.make_jaxpr(jax.value_and_grad(structured.log_marginal))(_hyper(HYPER))
        # scan bodies are per-step; everything over time shows up as a top-level output
        out = [int(np.prod(v.aval.shape)) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars]
        return max(out), sum(out)

    (big_small, total_small), (big_large, total_large) = sizes(8), sizes(64)
    assert big_large <= 8 * big_small and total_large <= 8 * total_small
    assert big_large > big_small  # the check sees arrays over time at all


def test_draws_are_exact(x64):
    """The draw is affine in the standard-normal noise: noise 0 gives the mean and the unit
    vectors give the columns of a square root of the posterior covariance."""
    model, y, mask = _problem(*CASES[1])
    hyper = _hyper(HYPER)
    oracle = GaussianOracle(model, np.nan_to_num(y), mask)
    structured = CollapsedGaussian(model, y, mask)
    layout = structured.layout
    ns, steps, p = layout.num_static, layout.num_steps, layout.state_size
    basis = jnp.eye(ns + steps * p)
    noise_static, noise_dynamic = basis[:, :ns], basis[:, ns:].reshape(-1, steps, p)

    def flat(noise_s, noise_d):
        draw = structured.sample_from_noise(hyper, noise_s, noise_d)
        return jnp.concatenate([jnp.ravel(v) for v in draw.values()])

    mean = flat(jnp.zeros(ns), jnp.zeros((steps, p)))
    roots = jax.jit(jax.vmap(flat))(noise_static, noise_dynamic) - mean
    dense = oracle.posterior(hyper)
    np.testing.assert_allclose(mean, np.concatenate([np.ravel(v) for v in dense.mean.values()]),
                               atol=1e-8)
    np.testing.assert_allclose(roots.T @ roots, dense.covariance, atol=1e-8)
    draw = structured.sample(hyper, jax.random.PRNGKey(0))
    assert {k: v.shape for k, v in draw.items()} == {k: v.shape for k, v in dense.mean.items()}


def test_extended_specs_match_dense_oracle(x64):
    """AR(1), local linear trend, horseshoe, iid-over-time effects, per-series noise, a
    non-default grand mean and a spec with no static grand mean."""
    dims = ("t", "j", "i")
    full = ModelSpec(
        dims=dims,
        time="t",
        effects=(
            GrandMean("mu", loc=1.5, scale=3.0),
            Shrinkage("a", ("i",), prior="horseshoe"),
            Shrinkage("b", ("j",), prior="half_normal"),
            Temporal("z", kind="ar1"),
            Temporal("A", by="i", kind="local_linear_trend"),
            Temporal("B", by="j", kind="ar1"),
            Shrinkage("C", ("i", "j")),
            Shrinkage("D", ("t", "i"), prior="horseshoe"),
        ),
        noise=Noise(per_series=True),
    )
    small = ModelSpec(dims=dims, time="t", effects=(Shrinkage("a", ("i",)), Temporal("B", by="j")))
    for spec, seed in [(full, 4), (small, 5)]:
        model, y, mask = _problem({"i": 3, "j": 4, "t": 6}, dims, seed, 0.25, spec)
        trace = handlers.trace(handlers.seed(model._sample_hyperparameters, seed)).get_trace()
        hyper = {k: s["value"] for k, s in trace.items()
                 if s["type"] in ("sample", "deterministic")}
        hyper = {k: jnp.clip(v, 0.05, 3.0) if k.startswith(("s_", "lambda", "sigma")) else v
                 for k, v in hyper.items()}
        _assert_close_to_dense(model, y, mask, [_hyper(hyper)])


# -- collapsed NUTS through tensorfact.fit(method="exact") -------------------------------------
# A small tensor and three hyperparameters (s_a, s_z, sigma) keep the NUTS compile short.
NUTS_SPEC = ModelSpec(
    dims=("i", "j", "t"), time="t",
    effects=(GrandMean("mu"), Shrinkage("a", ("i",)), Temporal("z")),
)


@pytest.fixture(scope="module")
def exact_fit():
    data, _ = simulate_additive({"i": 4, "j": 3, "t": 6}, seed=7, missing=0.2,
                                coords={"i": list("pqrs")}, name="sales")
    fit = tensorfact.fit(data, NUTS_SPEC, method="exact", seed=1, num_warmup=300,
                         num_samples=500, num_chains=2)
    model = TensorModel(NUTS_SPEC, dict(data.sizes))
    mask = np.isfinite(data.values)
    with jax.enable_x64(True):
        reference = importance_reference(model, np.nan_to_num(data.values), mask,
                                         num_draws=1500, seed=2)
    return data, fit, reference


def test_exact_fit_is_labelled_like_other_methods(exact_fit):
    data, fit, _ = exact_fit
    assert fit.method == "exact" and fit.losses is None
    post = fit.posterior
    assert set(post.data_vars) == {"mu", "a", "z", "s_a", "s_z", "sigma"}
    assert post["a"].dims == ("chain", "draw", "i") and post.sizes["chain"] == 2
    assert post.sizes["draw"] == 500 and list(post["a"].i.values) == list("pqrs")
    assert post["z"].dims == ("chain", "draw", "t")
    d = fit.diagnostics
    assert d.divergences == 0 and d.max_rhat < 1.02 and d.min_ess > 150
    table = fit.summary(["mu", "sigma"])
    assert {"r_hat", "ess_bulk"} <= set(table.columns) and len(table) == 2
    assert fit.predict().dims == data.dims


def test_exact_fit_saves_and_loads(exact_fit, tmp_path):
    """An exact fit round-trips through save/load: same draws, summary, prediction, info;
    it has no SVI state, so resume is refused with a message."""
    _, fit, _ = exact_fit
    fit.save(tmp_path / "exact.nc")
    loaded = tensorfact.load(tmp_path / "exact.nc")
    assert loaded.method == "exact" and loaded.losses is None and loaded.spec == fit.spec
    for name in fit.posterior.data_vars:
        np.testing.assert_array_equal(loaded.posterior[name].values, fit.posterior[name].values)
    pd.testing.assert_frame_equal(loaded.summary(), fit.summary())
    np.testing.assert_array_equal(loaded.predict(quantiles=[0.1, 0.9]).values,
                                  fit.predict(quantiles=[0.1, 0.9]).values)
    assert loaded.info["algebra"] == fit.info["algebra"]
    with pytest.raises(ValueError, match="Only SVI fits can be resumed"):
        loaded.resume(10)


def test_exact_fit_matches_dense_reference(exact_fit):
    """Posterior means and sds of the hyperparameters and of mu, a and z (every element),
    within 4 combined standard errors of the dense importance-sampling reference."""
    _, fit, ref = exact_fit
    assert ref.ess > 500
    checks = {name: (ref.hyper_mean[name], ref.hyper_sd[name]) for name in ("s_a", "s_z", "sigma")}
    checks.update({name: (ref.mean[name], ref.sd[name]) for name in ("mu", "a", "z")})
    for name, (ref_mean, ref_sd) in checks.items():
        draws = fit.posterior[name]
        data = az.convert_to_dataset(draws.values)
        mcse_mean = az.mcse(data, method="mean")["x"].values
        mcse_sd = az.mcse(data, method="sd")["x"].values
        se_mean = np.hypot(mcse_mean, ref_sd / np.sqrt(ref.ess))
        se_sd = np.hypot(mcse_sd, ref_sd / np.sqrt(2 * ref.ess))
        mean = draws.mean(("chain", "draw")).values
        sd = draws.std(("chain", "draw")).values
        assert np.all(np.abs(mean - ref_mean) < 4 * se_mean), (name, mean, ref_mean)
        assert np.all(np.abs(sd - ref_sd) < 4 * se_sd), (name, sd, ref_sd)


def test_exact_refuses_scan_transitions():
    from tensorfact.methods.exact import check_exact_spec

    spec = ModelSpec(dims=("i", "j", "t"), time="t",
                     effects=(Temporal("z", transition=lambda name, rows: None),))
    with pytest.raises(ValueError, match="transition"):
        check_exact_spec(spec)
