"""Held-out calibration (``tensorfact.calibrate``) and the per-series posterior
predictive check (``Fit.ppc``).

Oracles: nominal coverage within binomial error for a correctly specified model, and
undercoverage flagged for the same data under a noise prior that forces sigma too small; the
sample CRPS against the Normal closed form and against the O(S^2) double sum; the ppc ratios
against the known per-series noise sds. Three fits of one small spec (one compile, plus one
for the tight noise prior) keep the file to about 80 s on 2 shared cores.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import xarray as xr

import tensorfact
import tensorfact.calibration as calibration
from tensorfact import GrandMean, ModelSpec, Noise, Shrinkage, Temporal
from tensorfact.calibration import additive_baseline, crps_from_draws, crps_normal, holdout_masks

SIZES = {"i": 6, "j": 5, "t": 12}
SETTINGS = {"num_steps": 300, "stop_at_plateau": False, "num_draws": 400}
# data from mu + a[i] + b[j] + z[t] + C[i,j] + N(0, 0.5): the effects of spec() exactly
TRUTH = {"sigma": 0.5, "s_A": 0.0, "s_B": 0.0}


def spec(noise: Noise | None = None) -> ModelSpec:
    """``mu + a[i] + b[j] + z[t] + C[i,j]`` (small: one quick compile)."""
    return ModelSpec(
        dims=tuple(SIZES), time="t", noise=noise or Noise(),
        effects=(GrandMean(), Shrinkage("a", ("i",)), Shrinkage("b", ("j",)), Temporal("z"),
                 Shrinkage("C", ("i", "j"))),
    )


@pytest.fixture(scope="module")
def data() -> xr.DataArray:
    return tensorfact.simulate_additive(SIZES, seed=1, truth=TRUTH)[0]


@pytest.fixture(scope="module")
def calibrated(data):
    """``(calibration, input, copy of the input taken before the call)``."""
    snapshot = data.copy(deep=True)
    result = tensorfact.calibrate(data, spec(), holdout=0.2, seed=0, **SETTINGS)
    return result, data, snapshot


# -- a correctly specified model --------------------------------------------------------------
def test_correct_model_covers_at_the_nominal_rate(calibrated):
    """Measured (seed 0, 72 random cells): coverage 0.486 / 0.778 / 0.944 at 50 / 80 / 90%."""
    result, _, _ = calibrated
    row = result.table.loc["random"]
    assert row["cells"] == round(0.2 * math.prod(SIZES.values()))
    for level in (0.5, 0.8, 0.9):
        pct = f"{100 * level:g}"
        se = math.sqrt(level * (1 - level) / row["cells"])
        assert row[f"se_{pct}"] == pytest.approx(se)
        assert abs(row[f"coverage_{pct}"] - level) < 4 * se, (level, row[f"coverage_{pct}"])
    assert [f for f in result.flagged if f[0] == "random"] == []
    # the model knows the time effects, the baseline only their training means: it wins
    assert result.table.loc["random", "crps_ratio"] < 1
    assert result.table.loc["forecast", "rmse_ratio"] < 1


def test_pit_masks_and_input_unchanged(calibrated):
    result, given, snapshot = calibrated
    assert given.identical(snapshot)
    random, ahead = result.masks["random"], result.masks["forecast"]
    assert not (random & ahead).any()
    assert ahead.sum() == 3 * round(0.25 * 30)  # 8 series, their last 3 steps
    assert (ahead.sum(-1) % 3 == 0).all() and ahead[..., -3:].sum() == ahead.sum()
    train = result.fit.data.values
    assert np.isnan(train[random | ahead]).all()
    np.testing.assert_array_equal(train[~(random | ahead)], given.values[~(random | ahead)])
    for kind, mask in result.masks.items():
        pit = result.pit[kind]
        assert pit.shape == (mask.sum(),) and ((pit >= 0) & (pit <= 1)).all()
        # 90% central interval <=> PIT in [0.05, 0.95] (up to ties at the quantiles)
        covered = np.mean((pit >= 0.05) & (pit <= 0.95))
        assert covered == pytest.approx(result.table.loc[kind, "coverage_90"], abs=2 / pit.size)


def test_table_text_and_pit_plot(calibrated):
    import matplotlib

    matplotlib.use("Agg")
    result, _, _ = calibrated
    assert list(result.table.index) == ["random", "forecast"]
    for column in ("cells", "coverage_50", "se_90", "crps", "crps_baseline", "rmse",
                   "rmse_baseline", "crps_ratio", "rmse_ratio"):
        assert column in result.table.columns
    text = str(result)
    assert "coverage_80" in text and "forecast" in text and "3 SE from nominal: none" in text
    axes = result.plot_pit(bins=5)
    assert len(axes) == 2
    heights = [p.get_height() for p in axes[0].patches]
    assert len(heights) == 5 and sum(heights) * 0.2 == pytest.approx(1.0)  # a density
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in axes[1].lines)


# -- a too-narrow noise model -----------------------------------------------------------------
def test_too_narrow_noise_is_flagged(data):
    """``sigma ~ HalfNormal(0.02)`` holds the noise far below the true 0.5 (measured: sigma
    0.33, coverage of the 90% interval 0.75 on the same 72 random cells)."""
    result = tensorfact.calibrate(data, spec(Noise(prior_scale=0.02)), holdout=0.2,
                                  kinds=("random",), seed=0, **SETTINGS)
    row = result.table.loc["random"]
    assert float(result.fit.posterior["sigma"].mean()) < 0.4
    assert row["coverage_90"] < 0.9 - 3 * row["se_90"]
    assert ("random", 0.9) in result.flagged
    assert list(result.table.index) == ["random"] and list(result.masks) == ["random"]


# -- CRPS and the baseline --------------------------------------------------------------------
def test_sample_crps_matches_the_normal_closed_form():
    """200,000 draws: the estimator's Monte-Carlo sd is below 0.003 s here; tolerance 0.01 s."""
    m, s = 1.5, 2.0
    y = m + s * np.array([-2.5, -1.0, 0.0, 0.3, 3.0])
    draws = np.random.default_rng(0).normal(m, s, (200_000, 1)) * np.ones(y.size)
    np.testing.assert_allclose(crps_from_draws(draws, y), crps_normal(m, s, y), atol=0.01 * s)
    assert crps_normal(0.0, 1.0, 0.0) == pytest.approx(2 / math.sqrt(2 * math.pi)
                                                       - 1 / math.sqrt(math.pi))


def test_sorted_crps_equals_the_double_sum():
    x = np.random.default_rng(1).standard_t(3, (57, 4))
    y = np.array([-1.0, 0.0, 0.2, 5.0])
    brute = np.abs(x - y).mean(0) - 0.5 * np.abs(x[:, None, :] - x[None, :, :]).mean((0, 1))
    np.testing.assert_allclose(crps_from_draws(x, y), brute, rtol=1e-12)


def test_additive_baseline_is_the_two_way_fit():
    rng = np.random.default_rng(2)
    series, steps = rng.normal(size=(3, 2)), rng.normal(size=4)
    train = series[:, :, None] + steps[None, None, :]
    base, scale = additive_baseline(train)
    np.testing.assert_allclose(base, train, atol=1e-12)  # exact for additive complete data
    assert scale == pytest.approx(0.0, abs=1e-12)
    moved, _ = additive_baseline(np.moveaxis(train, -1, 0), time_axis=0)
    np.testing.assert_allclose(moved, np.moveaxis(base, -1, 0))


def test_holdout_masks_follow_the_time_axis():
    values = np.random.default_rng(3).normal(size=(6, 5, 12))
    random, ahead = holdout_masks(values, 4, 0.1, 0.25, 3)
    moved = holdout_masks(np.moveaxis(values, -1, 0), 4, 0.1, 0.25, 3, time_axis=0)
    np.testing.assert_array_equal(moved[0], np.moveaxis(random, -1, 0))
    np.testing.assert_array_equal(moved[1], np.moveaxis(ahead, -1, 0))
    assert random.sum() == 36 and ahead.sum() == 24


# -- bad arguments ----------------------------------------------------------------------------
def diagonal() -> xr.DataArray:
    """4 x 4 x 4 with only the diagonal observed: every observed cell is needed."""
    values = np.full((4, 4, 4), np.nan)
    values[range(4), range(4), range(4)] = 1.0
    return xr.DataArray(values, dims=("i", "j", "t"))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"holdout": 0.0}, "holdout must lie in (0, 1)"),
        ({"holdout": 1.0}, "holdout must lie in (0, 1)"),
        ({"forecast": -0.1}, "forecast must lie in (0, 1)"),
        ({"forecast": 1.5}, "forecast must lie in (0, 1)"),
        ({"horizon": 0}, "horizon must be >= 1"),
        ({"horizon": 12}, "horizon=12 must be smaller than the 12 steps"),
        ({"horizon": 7}, "Too few observed cells to hide any for kind 'forecast'"),
        ({"kinds": ("random", "later")}, "kinds: unknown or repeated"),
        ({"kinds": "random"}, "kinds must be a non-empty sequence"),
        ({"kinds": ()}, "kinds must be a non-empty sequence"),
        ({"levels": (0.5, 1.0)}, "each of levels must lie in (0, 1)"),
        ({"seed": -1}, "seed must be in [0, 2**32)"),
        ({"diagonal": True, "kinds": ("random",)},
         "Too few observed cells to hide any for kind 'random'"),
    ],
)
def test_bad_arguments_raise_before_fitting(data, kwargs, words, monkeypatch):
    def no_fit(*args, **kw):
        raise AssertionError("fitted despite a bad argument")

    monkeypatch.setattr(calibration, "fit_model", no_fit)
    given = diagonal() if kwargs.pop("diagonal", False) else data
    snapshot = copy.deepcopy(given)
    with pytest.raises(ValueError) as error:
        tensorfact.calibrate(given, **kwargs)
    assert words in str(error.value)
    assert given.identical(snapshot)


# -- Fit.ppc ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_noise_fit():
    """Additive means, noise sd 1.0 in 5 of the 30 series and 0.1 in the others, fitted with
    one shared sigma."""
    means = tensorfact.simulate_additive(SIZES, seed=2, truth={**TRUTH, "sigma": 0.0})[0]
    i, j = np.meshgrid(np.arange(6), np.arange(5), indexing="ij")
    noisy = (i + j) % 6 == 0
    sd = np.where(noisy, 1.0, 0.1)
    data = means + sd[:, :, None] * np.random.default_rng(0).standard_normal(means.shape)
    return tensorfact.fit(data, spec(), seed=0, **SETTINGS), noisy


def test_ppc_separates_noisy_from_quiet_series(mixed_noise_fit):
    """Measured: shared sigma 0.43; ratios 1.49, 1.72, 2.30, 2.53, 2.84 for the noisy series,
    0.12-0.38 for the quiet ones (over 5 noise seeds: noisy medians 1.9-2.2, quiet max 0.44,
    noisy min 1.15)."""
    fit, noisy = mixed_noise_fit
    check = fit.ppc()
    assert check.ratio.dims == ("i", "j") and (check.cells.values == 12).all()
    ratio = check.ratio.values
    assert np.median(ratio[noisy]) > 1.5
    assert (ratio[~noisy] < 0.67).all()
    assert ratio[noisy].min() > ratio[~noisy].max()
    # the pieces, recomputed directly
    np.testing.assert_allclose(check.noise_scale.values, float(fit.posterior["sigma"].mean()),
                               rtol=1e-5)
    resid = fit.data.values - fit.predict().values
    np.testing.assert_allclose(check.residual_scale.values, np.sqrt((resid**2).mean(-1)),
                               rtol=1e-5)
    r = resid[0, 0] - resid[0, 0].mean()
    lag1 = (r[1:] * r[:-1]).sum() / (r**2).sum()
    assert float(check.lag1_autocorrelation[0, 0]) == pytest.approx(lag1, rel=1e-5)
