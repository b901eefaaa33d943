"""End to end: fit a labelled DataArray, check against the truth and the exact reference."""

import numpy as np
import pytest
import xarray as xr
from numpyro import handlers

import tensorfact
from tensorfact.model.tensor import TensorModel
from tensorfact.testing.reference import importance_reference

EFFECTS = ("mu", "a", "b", "z", "A", "B", "C")


@pytest.fixture(scope="module")
def reference(small_data):
    data = small_data[0]
    model = TensorModel(tensorfact.default_spec(data.dims), data.sizes)
    values = np.nan_to_num(data.values)
    return importance_reference(model, values, np.isfinite(data.values), num_draws=300)


def _ratios(fit, reference):
    sd = np.concatenate([
        np.ravel(fit.posterior[k].std(("chain", "draw")).values / reference.sd[k])
        for k in EFFECTS
    ])
    return sd


def test_decorrelated_svi_recovers_truth_and_exact_sds(fit_on, small_data, reference):
    """Means within 3 posterior sds of the truth for >= 95% of elements; sds within 25% of
    the reference (exact conditional, scales integrated) for >= 90% of elements."""
    data, truth = small_data
    inside = []
    for name in EFFECTS:
        draws = fit_on.posterior[name]
        z = np.abs(draws.mean(("chain", "draw")).values - truth[name])
        inside.append(np.ravel(z <= 3 * draws.std(("chain", "draw")).values))
    assert np.mean(np.concatenate(inside)) >= 0.95
    ratios = _ratios(fit_on, reference)
    assert np.mean((ratios >= 0.75) & (ratios <= 1.25)) >= 0.90
    assert reference.ess > 50


def test_without_decorrelation_is_measurably_worse(fit_on, fit_off, reference):
    """Plain mean-field: the grand mean's sd is orders of magnitude too small and most
    elements fall outside +-25%; its ELBO is worse too."""
    on, off = _ratios(fit_on, reference), _ratios(fit_off, reference)
    within_on = np.mean((on >= 0.75) & (on <= 1.25))
    within_off = np.mean((off >= 0.75) & (off <= 1.25))
    assert within_off < 0.5 < within_on
    assert float(fit_off.posterior["mu"].std() / reference.sd["mu"]) < 0.1
    assert np.mean(fit_off.losses[-200:]) > np.mean(fit_on.losses[-200:]) + 10


def test_posterior_labels_and_shapes(fit_on, small_data):
    data = small_data[0]
    post = fit_on.posterior
    assert post["A"].dims == ("chain", "draw", "region", "year")
    assert post["C"].dims == ("chain", "draw", "region", "product")
    assert list(post["b"]["product"].values) == list(data["product"].values)
    np.testing.assert_array_equal(post["z"]["year"].values, data["year"].values)
    assert post.sizes["draw"] == 1000 and post.sizes["chain"] == 1
    assert {"s_a", "s_A", "sigma"} <= set(post.data_vars)
    assert set(fit_on.coefficients) >= {"a_shift_mu", "A_shift_z", "A_within"}
    idata = fit_on.to_inference_data()
    assert "posterior" in idata.groups() and "observed_data" in idata.groups()


def test_predict_fills_missing_cells(fit_on, small_data):
    data = small_data[0]
    mean = fit_on.predict()
    assert isinstance(mean, xr.DataArray) and mean.dims == data.dims
    assert mean.shape == data.shape and np.all(np.isfinite(mean.values))
    missing = np.isnan(data.values)
    assert missing.any()
    observed_error = np.abs(mean.values - data.values)[~missing]
    assert np.median(observed_error) < 0.2  # sigma = 0.1
    bands = fit_on.predict(quantiles=[0.05, 0.95])
    assert bands.dims == ("quantile", *data.dims)
    inside = (data.values >= bands[0].values) & (data.values <= bands[1].values)
    assert 0.8 < np.mean(inside[~missing]) <= 1.0


def test_summary_table(fit_on):
    table = fit_on.summary(["mu", "a", "sigma"])
    assert list(table.columns[:2]) == ["mean", "sd"]
    assert "a[r3]" in table.index and "mu" in table.index
    assert table.loc["sigma", "sd"] > 0
    with pytest.raises(ValueError, match="Unknown variables"):
        fit_on.summary(["nope"])


def _sample_sites(decorrelate):
    model = TensorModel(tensorfact.default_spec(("i", "j", "t")), {"i": 3, "j": 2, "t": 4})
    y, mask = np.zeros((3, 2, 4), np.float32), np.ones((3, 2, 4), bool)
    trace = handlers.trace(handlers.seed(model.decorrelated(decorrelate), 0)).get_trace(y, mask)
    return {k for k, v in trace.items() if v["type"] in ("sample", "param")}


def test_toggling_one_effect_changes_exactly_its_sites():
    on, off_a = _sample_sites(True), _sample_sites({"A": False})
    assert on - off_a == {"A_decorrelated", "A_within", "A_within_mean", "A_shift_mu",
                          "A_shift_a", "A_shift_b", "A_shift_C", "A_shift_z", "A_centering",
                          "A_scale_ref", "A_decenter_at"}
    assert off_a - on == {"A"}
    assert "B_shift_A" in off_a  # later effects still use A as a parent
    assert _sample_sites(False) == {"mu", "a", "b", "z", "A", "B", "C", "y", "sigma",
                                    "s_a", "s_b", "s_C", "s_z", "s_A", "s_B"}


def test_toggle_errors():
    model = TensorModel(tensorfact.default_spec(("i", "j", "t")), {"i": 3, "j": 2, "t": 4})
    with pytest.raises(ValueError, match=r"unknown effects \['Q'\]"):
        model.decorrelation_config({"Q": False})
    with pytest.raises(TypeError, match="must be True or False"):
        model.decorrelation_config({"A": "no"})
