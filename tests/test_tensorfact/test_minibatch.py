"""Minibatch likelihood over cells: unbiased for the full one, exact at the full batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

from tensorfact.model.tensor import TensorModel
from tensorfact.simulate import simulate_additive
from tensorfact.spec import default_spec


def _problem():
    data, _ = simulate_additive({"i": 4, "j": 3, "t": 5}, seed=1, missing=0.2)
    spec = default_spec(data.dims)
    sizes = dict(zip(data.dims, data.shape, strict=True))
    y = jnp.asarray(np.nan_to_num(data.values), jnp.float32)
    mask = jnp.asarray(np.isfinite(data.values))
    full = TensorModel(spec, sizes)
    point = {k: v["value"] for k, v in handlers.trace(handlers.seed(full, 0)).get_trace(y, mask)
             .items() if v["type"] == "sample" and not v["is_observed"]}
    return spec, sizes, y, mask, point


def _gradient(model, point, y, mask, key):
    """Gradient of the log joint in all latent sites (batch drawn from ``key``)."""
    def log_joint(values):
        return log_density(handlers.seed(model, key), (y, mask), {}, values)[0]

    grads = jax.grad(log_joint)(point)
    return jnp.concatenate([jnp.ravel(grads[k]) for k in sorted(grads)])


def test_the_full_batch_is_the_full_likelihood():
    spec, sizes, y, mask, point = _problem()
    cells = int(np.prod(mask.shape))
    full = _gradient(TensorModel(spec, sizes), point, y, mask, 0)
    batched = _gradient(TensorModel(spec, sizes, batch_size=cells), point, y, mask, 3)
    assert int(np.sum(mask)) < cells  # missing cells are in the batch, masked
    np.testing.assert_allclose(batched, full, rtol=2e-5, atol=1e-4)


def test_minibatch_gradient_is_unbiased():
    """The mean over 4,000 random batches of 12 of 60 cells equals the full gradient within
    4 Monte Carlo standard errors in every coordinate (and the batches do differ)."""
    spec, sizes, y, mask, point = _problem()
    model = TensorModel(spec, sizes, batch_size=12)
    full = _gradient(TensorModel(spec, sizes), point, y, mask, 0)
    draws = jax.jit(jax.vmap(lambda key: _gradient(model, point, y, mask, key)))(
        jax.random.split(jax.random.PRNGKey(0), 4000))
    draws = np.asarray(draws, np.float64)
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
    assert np.max(draws.std(0)) > 1.0  # the batch gradient is random
    assert np.all(np.abs(mean - full) <= 4 * se + 1e-3 * (1 + np.abs(full)))


@pytest.mark.parametrize("batch_size", [0, 61])
def test_bad_batch_size_is_refused(batch_size):
    import tensorfact

    data, _ = simulate_additive({"i": 4, "j": 3, "t": 5}, seed=1, missing=0.2)
    with pytest.raises(ValueError, match="batch_size"):
        tensorfact.fit(data, batch_size=batch_size, num_steps=10)



def test_a_minibatch_fit_trains_on_batches_and_records_them(small_data, fit_on, tmp_path):
    """fit(batch_size=) trains the batched model from the full-data start (the start program
    is the full fit's); the batch size is in the record and survives save/load."""
    import tensorfact

    fit = tensorfact.fit(small_data[0], batch_size=120, num_steps=200, num_draws=50, seed=0)
    assert fit.info["batch_size"] == 120 and fit._record.svi.batch_size == 120
    assert fit_on.info["batch_size"] is None
    # same start, then a noisy (unbiased) loss: the posterior stays where the full fit is
    assert fit.losses[0] != fit_on.losses[0]
    assert np.isfinite(fit.losses).all()
    mu, reference = fit.posterior["mu"], fit_on.posterior["mu"]
    assert abs(float(mu.mean() - reference.mean())) < 2 * float(reference.std())
    path = tmp_path / "fit.nc"
    fit.save(path)
    loaded = tensorfact.load(path)
    assert loaded._record.svi.batch_size == 120
    assert len(loaded.resume(10).losses) == 210
