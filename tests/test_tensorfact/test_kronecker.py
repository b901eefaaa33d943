"""Kronecker (Helmert-diagonalised) collapsed Gaussian against the dense oracle.

Tolerances (float64): the same quantities by different exact factorizations, agreeing to
rounding error amplified by the posterior's conditioning (as in test_collapsed.py): log
marginal 1e-9 relative, gradient 1e-7 relative to its largest component, the draw map's mean
and covariance (the map is affine in its standard-normal inputs, so its Jacobian gives the
covariance exactly) 1e-8 relative to the largest prior variance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from tensorfact.collapsed import (
    CollapsedGaussian,
    KroneckerGaussian,
    collapsed_gaussian,
    collapsed_nuts,
)
from tensorfact.model.tensor import TensorModel
from tensorfact.simulate import simulate_additive
from tensorfact.spec import GrandMean, ModelSpec, Noise, Shrinkage, Temporal, default_spec
from tensorfact.testing.dense import GaussianOracle

HYPER = {"s_a": 0.7, "s_b": 1.3, "s_C": 0.9, "s_z": 0.3, "s_A": 0.25, "s_B": 0.15, "sigma": 0.2}
EXTENDED = ModelSpec(
    dims=("t", "j", "i"),
    time="t",
    effects=(
        GrandMean("mu", loc=1.5, scale=3.0),
        Shrinkage("a", ("i",), prior="half_cauchy"),
        Temporal("z", kind="ar1"),
        Temporal("A", by="i", kind="local_linear_trend"),
        Temporal("B", by="j", kind="ar1"),
        Shrinkage("C", ("i", "j")),
        Shrinkage("D", ("t", "i")),
    ),
)
NO_GRAND_MEAN = ModelSpec(
    dims=("i", "t", "j"), time="t", effects=(Shrinkage("b", ("j",)), Temporal("A", by="i"))
)
EXTENDED_HYPER = {
    "s_a": 0.6, "phi_z": 0.7, "s_z": 0.4, "s_A": 0.2, "s_A_slope": 0.05, "phi_B": -0.3,
    "s_B": 0.3, "s_C": 0.8, "s_D": 0.25, "sigma": 0.15,
}
# (spec or None for the default, sizes, data dim order, seed, hyperparameters)
CASES = [
    (None, {"i": 3, "j": 4, "t": 6}, ("i", "j", "t"), 1, HYPER),
    (None, {"i": 4, "j": 3, "t": 5}, ("t", "i", "j"), 2, HYPER),
    (None, {"i": 1, "j": 5, "t": 7}, ("j", "t", "i"), 3, {**HYPER, "sigma": 0.05}),
    (EXTENDED, {"i": 3, "j": 2, "t": 6}, EXTENDED.dims, 4, EXTENDED_HYPER),
    (NO_GRAND_MEAN, {"i": 2, "j": 3, "t": 5}, NO_GRAND_MEAN.dims, 5, {"s_b": 0.9, "s_A": 0.3,
                                                                       "sigma": 0.2}),
]


def _problem(spec, sizes, dims, seed):
    data, _ = simulate_additive(sizes, seed=seed, missing=0.0)
    data = data.transpose(*dims)
    spec = default_spec(data.dims, time="t") if spec is None else spec
    model = TensorModel(spec, dict(zip(data.dims, data.shape, strict=True)))
    return model, data.values, np.ones(data.shape, bool)


@pytest.mark.parametrize("case", CASES, ids=["ijt", "tij", "jti-one-row", "extended", "no-mu"])
def test_kronecker_matches_dense_oracle(x64, case):
    spec, sizes, dims, seed, values = case
    model, y, mask = _problem(spec, sizes, dims, seed)
    hyper = {k: jnp.asarray(v, jnp.float64) for k, v in values.items()}
    oracle = GaussianOracle(model, y, mask)
    kron = KroneckerGaussian(model, y, mask)

    value, grad = jax.jit(jax.value_and_grad(kron.log_marginal))(hyper)
    dense_value, dense_grad = jax.jit(jax.value_and_grad(oracle.log_marginal))(hyper)
    np.testing.assert_allclose(value, dense_value, rtol=1e-9)
    scale = max(abs(float(g)) for g in dense_grad.values())
    for name in dense_grad:
        np.testing.assert_allclose(grad[name], dense_grad[name], rtol=1e-7, atol=1e-7 * scale,
                                   err_msg=name)

    posterior = oracle.posterior(hyper)
    names = [site.name for site in model.location_sites]
    zeros = [jnp.zeros(shape) for shape in kron.noise_shapes()]
    flat_noise, unflatten = ravel_pytree(zeros)

    def draw(flat):
        sites = kron.sample_from_noise(hyper, unflatten(flat))
        assert list(sites) == names
        return jnp.concatenate([jnp.ravel(sites[name]) for name in names])

    mean, jacobian = jax.jit(lambda x: (draw(x), jax.jacfwd(draw)(x)))(flat_noise)
    covariance = jacobian @ jacobian.T
    dense_mean = np.concatenate([np.ravel(posterior.mean[n]) for n in names])
    tol = 1e-8 * float(np.max(np.diag(posterior.covariance)))
    np.testing.assert_allclose(mean, dense_mean, atol=1e-8)
    np.testing.assert_allclose(covariance, posterior.covariance, atol=tol)
    assert np.max(np.abs(posterior.covariance)) > 1e3 * tol  # the check is not vacuous


def test_random_draws_have_the_conditional_moments(x64):
    """``sample`` (random inputs) against the dense moments: 4000 draws, within 5 Monte Carlo
    standard errors for the means and 10% for the sds."""
    model, y, mask = _problem(None, {"i": 3, "j": 2, "t": 4}, ("i", "j", "t"), 6)
    hyper = {k: jnp.asarray(v, jnp.float64) for k, v in HYPER.items()}
    posterior = GaussianOracle(model, y, mask).posterior(hyper)
    kron = KroneckerGaussian(model, y, mask)
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = jax.jit(jax.vmap(lambda key: kron.sample(hyper, key)))(keys)
    for name, mean in posterior.mean.items():
        sd = posterior.sd[name]
        assert draws[name].shape == (4000, *mean.shape)
        assert np.all(np.abs(draws[name].mean(0) - mean) < 5 * sd / np.sqrt(4000)), name
        np.testing.assert_allclose(draws[name].std(0), sd, rtol=0.1, err_msg=name)


def test_auto_algebra_and_refusals():
    model, y, mask = _problem(None, {"i": 3, "j": 2, "t": 4}, ("i", "j", "t"), 7)
    assert isinstance(collapsed_gaussian(model, y, mask), KroneckerGaussian)
    holes = mask.copy()
    holes[0, 0, 0] = False
    assert isinstance(collapsed_gaussian(model, y, holes), CollapsedGaussian)
    with pytest.raises(ValueError, match="missing.*algebra='kalman'"):
        collapsed_gaussian(model, y, holes, algebra="kronecker")
    with pytest.raises(ValueError, match="algebra must be one of"):
        collapsed_gaussian(model, y, mask, algebra="fast")
    per_series = ModelSpec(dims=("i", "j", "t"), time="t", effects=(Temporal("z"),),
                           noise=Noise(per_series=True))
    horseshoe = ModelSpec(dims=("i", "j", "t"), time="t",
                          effects=(Shrinkage("a", ("i",), prior="horseshoe"),))
    for spec, reason in [(per_series, "per series"), (horseshoe, "horseshoe")]:
        other = TensorModel(spec, model.sizes)
        assert isinstance(collapsed_gaussian(other, y, mask), CollapsedGaussian)
        with pytest.raises(ValueError, match=reason):
            KroneckerGaussian(other, y, mask)


def test_collapsed_nuts_uses_the_kronecker_path():
    """A short collapsed NUTS run on complete data takes the Kronecker path, is reproducible
    and returns draws of every site (the sampler's accuracy is tested in test_collapsed.py; the
    two paths' log marginals agree to rounding above)."""
    spec = ModelSpec(dims=("i", "j", "t"), time="t",
                     effects=(GrandMean("mu"), Shrinkage("a", ("i",)), Temporal("z")))
    data, _ = simulate_additive({"i": 3, "j": 2, "t": 5}, seed=8, missing=0.0)
    model = TensorModel(spec, dict(data.sizes))
    runs = [
        collapsed_nuts(model, data.values, np.ones(data.shape, bool),
                       rng_key=jax.random.PRNGKey(1), num_warmup=50, num_samples=40,
                       num_chains=1, warn=False)
        for _ in range(2)
    ]
    run = runs[0]
    for name in ("s_a", "mu", "z"):  # same key, same draws
        np.testing.assert_array_equal(runs[1].samples[name], run.samples[name], err_msg=name)
    assert run.algebra == "kronecker"
    assert run.samples["a"].shape == (1, 40, 3) and run.samples["z"].shape == (1, 40, 5)
    assert np.all(np.isfinite(run.samples["mu"])) and np.std(run.samples["s_a"]) > 0
