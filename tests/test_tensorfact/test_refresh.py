"""Refitting the decorrelation coefficients during SVI (``fit(coefficient_refreshes=...)``).

Oracles: the refitted coefficients equal the start's coefficients (:func:`reparam.initialize`
with the fit's analysis) at the median of the same guide trained to the refresh step
(bitwise-identical training up to there); and on data whose per-series noise differs 20-fold,
which the Newton start's single noise level ignores, the coefficients a refreshed fit ends with
are closer to the exact ones at its final median than the start's coefficients are.
"""

from __future__ import annotations

import numpy as np
import pytest

import reparam
import tensorfact
from tensorfact import GrandMean, ModelSpec, Noise, Shrinkage, Temporal
from tensorfact.methods.settings import refresh_steps
from tensorfact.methods.svi import block_analysis
from tensorfact.model.block_gaussian import BlockGaussian
from tensorfact.model.tensor import TensorModel

DIMS = ("i", "j", "t")
SPEC = ModelSpec(dims=DIMS, time="t", noise=Noise(per_series=True),
                 effects=(GrandMean(), Shrinkage("a", ("i",)), Temporal("z"),
                          Temporal("A", "i")))
SETTINGS = {"seed": 0, "stop_at_plateau": False, "num_draws": 50, "svi_start": "newton"}


@pytest.fixture(scope="module")
def unequal_noise() -> np.ndarray:
    """``1 + a[i] + z[t] + A[i,t] + noise`` on 5 x 4 x 10, noise sd 0.05 or 1 by series."""
    rng = np.random.default_rng(1)
    shape = (5, 4, 10)
    loc = (1 + rng.normal(0, 1, (5, 1, 1)) + np.cumsum(rng.normal(0, 0.3, 10))
           + np.cumsum(rng.normal(0, 0.2, (5, 1, 10)), axis=-1))
    sd = np.where(rng.random((5, 4, 1)) < 0.5, 0.05, 1.0)
    y = loc + sd * rng.normal(size=shape)
    y[0, 0, :3] = np.nan
    return y


def exact_coefficients(fit: tensorfact.Fit) -> dict[str, np.ndarray]:
    """:func:`reparam.initialize`'s coefficients at the fit's guide median (no Laplace step)."""
    svi = fit._svi
    model = TensorModel(fit.spec, fit.data.sizes).decorrelated(fit.decorrelate)
    point = svi.median_point()
    local = reparam.LocalGaussian(model, point, *svi.args)
    return reparam.initialize(local, point, laplace=False).coefficients


def refit_coefficients(fit: tensorfact.Fit) -> dict[str, np.ndarray]:
    """The coefficients a refresh computes at the fit's guide median: the same analysis as the
    fit's start (by Helmert blocks where it applies, :func:`tensorfact.methods.svi.block_analysis`;
    with this spec's unequal per-series noise an approximation of :func:`exact_coefficients`)."""
    svi = fit._svi
    tensor = TensorModel(fit.spec, fit.data.sizes)
    model = tensor.decorrelated(fit.decorrelate)
    point = svi.median_point()
    local = block_analysis(model, tensor, point, svi.args)
    assert isinstance(local, BlockGaussian)  # the spec is one the block start covers
    return reparam.initialize(local, point, laplace=False).coefficients


def test_refresh_steps_are_evenly_spaced_and_auto_follows_the_start():
    assert refresh_steps("auto", "newton", 5000) == tuple(range(500, 5000, 500))
    assert refresh_steps("auto", "newton", 2000) == (500, 1000, 1500)
    assert refresh_steps("auto", "newton", 999) == ()
    assert refresh_steps(4, "newton", 5000) == (1000, 2000, 3000, 4000)
    assert refresh_steps("auto", "laplace", 5000) == ()
    assert refresh_steps(2, "laplace", 3000) == (1000, 2000)
    assert refresh_steps(0, "newton", 3000) == ()
    assert refresh_steps(9, "newton", 4) == (1, 2, 3)  # repeats and step 0 dropped


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1, ValueError), ("always", ValueError), (1.5, TypeError), (True, TypeError)],
)
def test_bad_refresh_counts_are_refused_before_fitting(value, error):
    with pytest.raises(error, match="coefficient_refreshes"):
        tensorfact.fit(np.zeros((4, 3, 6)), dims=DIMS, coefficient_refreshes=value)


@pytest.fixture(scope="module")
def fits(unequal_noise) -> dict[str, tensorfact.Fit]:
    """150 steps; 300 refreshed once (at 150); 600 without refresh; 600 refreshed at steps
    120, 240, 360, 480. They share one compiled SVI step."""
    run = {"short": (150, 0), "once": (300, 1), "stale": (600, 0), "fresh": (600, 4)}
    return {name: tensorfact.fit(unequal_noise, SPEC, dims=DIMS, num_steps=steps,
                                 coefficient_refreshes=count, **SETTINGS)
            for name, (steps, count) in run.items()}


def test_refresh_refits_the_exact_coefficients_at_the_guide_median(fits):
    short, refreshed = fits["short"], fits["once"]
    assert short.info["svi_refreshes"] == [] and refreshed.info["svi_refreshes"] == [150]
    np.testing.assert_array_equal(refreshed.losses[:150], short.losses)  # same training so far
    expected = refit_coefficients(short)
    assert set(refreshed.coefficients) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(refreshed.coefficients[name], value, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    assert np.all(np.isfinite(refreshed.losses))


def test_refreshed_coefficients_track_the_learned_noise(fits):
    """The start's coefficients assume one noise level; once SVI has moved towards the
    unequal per-series noise they are further from the exact ones than refreshed ones, and
    the refreshed guide reaches a better ELBO (measured at 600 steps: relative error 32x
    smaller, loss 255 vs 264 nats)."""
    stale, fresh = fits["stale"], fits["fresh"]
    assert fresh.info["svi_refreshes"] == [120, 240, 360, 480]

    def error(fit: tensorfact.Fit) -> float:
        exact = exact_coefficients(fit)
        names = [n for n in exact if "_shift_" in n]
        return sum(float(np.sum((fit.coefficients[n] - exact[n]) ** 2)) for n in names) / sum(
            float(np.sum(exact[n] ** 2)) for n in names)

    def spread(fit: tensorfact.Fit) -> float:
        sigma = np.exp(fit.posterior["log_sigma_series"].mean(("chain", "draw")).values)
        return float(sigma.max() / sigma.min())

    assert error(fresh) < 0.25 * error(stale)
    assert spread(fresh) > spread(stale) > 1.2  # both learn unequal noise, fresh further
    assert fresh.losses[-50:].mean() < stale.losses[-50:].mean()


def test_a_plain_fit_has_no_coefficients_to_refresh(unequal_noise):
    plain = tensorfact.fit(unequal_noise, SPEC, dims=DIMS, num_steps=100, decorrelate=False,
                           coefficient_refreshes=3, **SETTINGS)
    assert plain.info["svi_refreshes"] == [] and plain.coefficients == {}
