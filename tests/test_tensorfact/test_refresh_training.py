"""Training across coefficient refreshes, asserted by its effects: the guide (mean-field and
low-rank) is re-mapped to the refitted coefficients so the loss does not jump, the optimiser's
step count (and so its schedule) carries on through a refresh, the plateau rule can stop a
refreshed fit, and coefficients trained by SVI (``coefficient_learning_rate``) move.

The first three use ``tensorfact.fit`` only, so they run against older commits too."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import tensorfact
from tests.test_tensorfact import shared_fits

STEPS, REFRESHES = 600, 2  # refreshed at steps 200 and 400
WIDTH = 20  # steps averaged before and after a refresh


@functools.cache
def _refreshed(guide: str) -> tensorfact.Fit:
    return tensorfact.fit(
        shared_fits.data(), shared_fits.spec(), guide=guide, svi_start="newton",
        num_steps=STEPS, coefficient_refreshes=REFRESHES, stop_at_plateau=False,
        num_draws=20, seed=0,
    )


def _jumps(fit: tensorfact.Fit) -> list[tuple[float, float]]:
    """Per refresh: the mean loss of the ``WIDTH`` steps after it minus that of the steps
    before, and the sd of the single-step losses over the 100 steps before (the noise of a
    one-particle ELBO, ~80 nats for the mean-field guide here, ~10 for the low-rank one)."""
    losses = np.asarray(fit.losses)
    return [(float(losses[s:s + WIDTH].mean() - losses[s - WIDTH:s].mean()),
             float(losses[s - 100:s].std())) for s in fit.info["svi_refreshes"]]


@pytest.mark.parametrize("guide", ["normal", "lowrank"])
def test_a_refresh_does_not_throw_the_guide_off(guide):
    """Re-mapped to the refitted coefficients, the guide describes the same model values, so
    the loss after a refresh stays within its own noise of the loss before. Left unmapped,
    the low-rank guide describes other values (before the fix: +565 and +339 nats here)."""
    fit = _refreshed(guide)
    assert fit.info["svi_refreshes"] == [200, 400]
    assert len(fit.losses) == STEPS and np.all(np.isfinite(fit.losses))
    for jump, noise in _jumps(fit):
        assert jump < max(noise, 5.0), _jumps(fit)


@pytest.mark.parametrize("guide", ["normal", "lowrank"])
def test_the_optimiser_step_count_carries_on_through_refreshes(guide):
    """Every step counter of the optimiser state (NumPyro's and optax's, which drives the
    learning-rate schedule) has counted all steps, not those since the last refresh."""
    state = _refreshed(guide)._svi.run.state.optim_state
    counts = [int(leaf) for leaf in jax.tree.leaves(state)
              if np.ndim(leaf) == 0 and np.issubdtype(np.asarray(leaf).dtype, np.integer)]
    assert counts and set(counts) == {STEPS}, counts


def test_the_median_point_after_refreshes_follows_the_current_coefficients():
    """After refreshes, the model sites of ``median_point`` are those the model gives with the
    coefficients in use, as a guide set up with them says. (The compiled guide holds copies
    of its arguments: were they not renewed at each segment's start, its deterministic sites
    would keep the first coefficients, off by up to 0.03 here.)"""
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    from reparam.infer.guide_init import initial_state

    svi = _refreshed("normal")._svi
    fresh = SVI(svi.model, AutoNormal(svi.model), svi.optimizer, Trace_ELBO())
    initial_state(fresh, jax.random.PRNGKey(0), svi.args, svi.model_kwargs)
    expected = fresh.guide.median(svi.run.params)
    point = svi.median_point()
    assert point and set(point) <= set(expected)
    for name, value in point.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_the_plateau_rule_stops_a_refreshed_fit():
    """With refreshes every 1,000 steps the rule (1,000 steps at least, two 500-step windows)
    still sees the whole trace, so it can stop the fit, at a chunk boundary after a refresh."""
    fit = tensorfact.fit(shared_fits.data(), shared_fits.spec(), svi_start="newton",
                         num_steps=6000, coefficient_refreshes=5, stop_at_plateau=True,
                         num_draws=20, seed=0)
    refreshes = fit.info["svi_refreshes"]
    steps = len(fit.losses)
    assert fit.info["svi_stopped"] == "plateau", (steps, refreshes)
    assert 1000 <= steps < 6000 and steps % 250 == 0
    assert all(r < steps for r in refreshes) and steps - max(refreshes) >= 500


def test_coefficients_trained_by_svi_move_and_frozen_ones_do_not():
    """``coefficient_learning_rate=0`` keeps the Gaussian start's coefficients; a positive
    rate trains them as params of the guide's optimiser (they leave the start)."""
    from reparam.infer.workflow import fit_svi
    from tensorfact.methods.svi import model_arguments
    from tensorfact.model.tensor import TensorModel

    data = tensorfact.as_tensor_data(shared_fits.data())
    model = TensorModel(shared_fits.spec(), data.sizes)
    point = model.initial_point(data.filled, data.mask)
    runs = {rate: fit_svi(model.decorrelated(True), *model_arguments(data), point=point,
                          rng_key=jax.random.PRNGKey(0), num_steps=300, laplace=False,
                          coefficient_learning_rate=rate)
            for rate in (0.0, 0.05)}
    frozen, trained = runs[0.0], runs[0.05]
    assert frozen.coefficients.keys() == trained.coefficients.keys() and frozen.coefficients
    for name, start in frozen.start.coefficients.items():
        np.testing.assert_array_equal(frozen.coefficients[name], np.asarray(start))
        assert name not in frozen.run.params  # frozen: not a param of the optimiser
        assert name in trained.run.params
    moved = max(float(np.max(np.abs(trained.coefficients[k] - np.asarray(v))))
                for k, v in trained.start.coefficients.items())
    assert moved > 1e-3, moved


def test_the_plateau_rule_on_loss_traces():
    """``plateau_reached``: flat windows and a settled guide stop; too few steps, a loss still
    falling by more than the tolerance between windows, or a drifting guide do not."""
    from reparam.infer.svi import Plateau, plateau_reached

    rule = Plateau(window=100, loss_tolerance=1.0, max_drift=0.1, min_steps=300)
    noise = np.random.default_rng(0).normal(0, 3.0, 400)  # window means vary by ~0.3
    flat = 50.0 + noise
    assert plateau_reached(flat, drift=0.05, rule=rule)
    assert not plateau_reached(flat[:299], drift=0.05, rule=rule)  # below min_steps
    assert not plateau_reached(flat, drift=0.2, rule=rule)  # the guide still moves
    falling = flat - 0.015 * np.arange(400)  # window means 1.5 nats apart
    assert not plateau_reached(falling, drift=0.05, rule=rule)
    assert plateau_reached(flat - 0.005 * np.arange(400), drift=0.05, rule=rule)  # 0.5 apart
