"""Training guards: NaN/inf losses stop SVI with the step and the last finite parameters;
NUTS problems are reported as warnings with the numbers."""

from __future__ import annotations

import copy
import pickle
import re

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import tensorfact
from reparam.infer import NonFiniteLoss, NUTSDiagnostics, run_svi
from reparam.infer.nuts import warn_if_unhealthy
from tensorfact.results.labels import check_finite_draws
from tests.test_tensorfact import shared_fits
from tests.test_tensorfact.test_validation import _unchanged


# -- a toy whose loss turns NaN at a known step ----------------------------------------------
def _model(limit):
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    numpyro.factor("blowup", jnp.where(x > limit, jnp.nan, 0.0))


def _guide(limit):
    numpyro.sample("x", dist.Delta(numpyro.param("p", 0.0)))


# p moves by exactly +1 per step, so the loss of step k is evaluated at p = k
_PLUS_ONE = optax.GradientTransformation(
    lambda params: optax.EmptyState(),
    lambda updates, state, params=None: (
        optax.tree_utils.tree_full_like(updates, 1.0), state
    ),
)


@pytest.mark.parametrize(
    ("limit", "chunk", "step"),
    [(2.5, 2, 3), (2.5, 3, 3), (4.5, 2, 5), (-1.0, 3, 0)],
    ids=["mid-chunk", "chunk-start", "later-chunk", "first-step"],
)
def test_run_svi_stops_at_the_first_nan_and_keeps_the_last_finite_params(limit, chunk, step):
    with pytest.raises(NonFiniteLoss) as info:
        run_svi(_model, _guide, _PLUS_ONE, limit, rng_key=np.zeros(2, np.uint32),
                num_steps=20, chunk=chunk)
    err = info.value
    assert err.step == step and len(err.losses) == step and np.all(np.isfinite(err.losses))
    assert err.params_step == max(step - 1, 0)
    assert float(err.params["p"]) == err.params_step  # the params of that very step
    assert f"at step {step};" in str(err) and "smaller learning rate" in str(err)
    if step == 0:
        assert "no step had a finite loss" in str(err)
    copied = pickle.loads(pickle.dumps(err))  # e.g. raised in a worker process
    assert str(copied) == str(err) and copied.step == step
    assert float(copied.params["p"]) == err.params_step


def test_fit_with_an_exploding_optimizer_raises_with_step_and_advice():
    data = np.array(shared_fits.data().values)
    snapshot = copy.deepcopy(data)
    with pytest.raises(NonFiniteLoss) as info:
        tensorfact.fit(data, shared_fits.spec(), dims=tuple(shared_fits.SIZES),
                       optimizer=optax.sgd(1e8), num_steps=300, stop_at_plateau=False)
    err = info.value
    message = str(err)
    assert re.search(rf"non-finite \(NaN or inf\) at step {err.step};", message)
    assert "smaller learning rate in the optimizer you passed" in message
    assert "decorrelate=False" in message
    assert 1 <= err.step < 300 and len(err.losses) == err.step
    assert np.all(np.isfinite(err.losses))
    assert {"mu_auto_loc", "mu_auto_scale"} <= set(err.params)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in err.params.values())
    _unchanged(data, snapshot)  # failed fits leave the input untouched too


def test_non_finite_draws_are_refused():
    with pytest.raises(FloatingPointError, match=r"draws of \['b'\] contain NaN or inf"):
        check_finite_draws({"a": np.zeros(3), "b": np.array([0.0, np.inf])}, "SVI")


def test_unhealthy_nuts_diagnostics_warn_with_the_numbers():
    diagnostics = NUTSDiagnostics(divergences=7, max_rhat=1.234, min_ess=12.4,
                                  mean_steps=31.0, seconds=1.0)
    with pytest.warns(RuntimeWarning) as caught:
        warn_if_unhealthy(diagnostics)
    message = str(caught[0].message)
    assert "7 divergent transitions" in message
    assert "max r-hat 1.234 > 1.01" in message
    assert "min bulk ESS 12 < 100" in message
    healthy = NUTSDiagnostics(divergences=0, max_rhat=1.001, min_ess=800.0, mean_steps=7.0,
                              seconds=1.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_unhealthy(healthy)


def test_fit_nuts_surfaces_diagnostic_warnings():
    fit, caught = shared_fits.nuts_fit()
    diagnostics = fit.diagnostics
    assert diagnostics.min_ess < 100  # 2 x 30 draws cannot reach an ESS of 100
    ours = [w for w in caught if "NUTS diagnostics" in str(w.message)]
    messages = [str(w.message) for w in ours]
    assert len(messages) == 1
    assert ours[0].filename.endswith("shared_fits.py")  # points at the caller of fit()
    assert f"min bulk ESS {diagnostics.min_ess:.0f} < 100" in messages[0]
    assert "raise num_warmup and num_samples" in messages[0]
    if diagnostics.max_rhat > 1.01:
        assert f"max r-hat {diagnostics.max_rhat:.3f}" in messages[0]
    if diagnostics.divergences:
        assert f"{diagnostics.divergences} divergent transitions" in messages[0]
    assert fit.posterior.sizes["chain"] == 2 and fit.posterior.sizes["draw"] == 30
    assert all(np.all(np.isfinite(v.values)) for v in fit.posterior.data_vars.values())
