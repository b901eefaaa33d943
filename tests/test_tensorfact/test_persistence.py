"""Reproducibility, save/load round trips and exact resume (in-session and from a file)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import tensorfact
from tensorfact import GrandMean, ModelSpec, Noise, Shrinkage, Temporal
from tensorfact.results.io import spec_from_dict, spec_to_dict
from tests.test_tensorfact import shared_fits
from tests.test_tensorfact.test_validation import _unchanged


def assert_same_draws(a: tensorfact.Fit, b: tensorfact.Fit) -> None:
    """Bitwise-equal losses, coefficients and posterior draws (values; labels may differ)."""
    np.testing.assert_array_equal(a.losses, b.losses, strict=True)
    assert set(a.posterior.data_vars) == set(b.posterior.data_vars)
    for name in a.posterior.data_vars:
        np.testing.assert_array_equal(a.posterior[name].values, b.posterior[name].values,
                                      strict=True, err_msg=name)
    assert a.coefficients.keys() == b.coefficients.keys()
    for name in a.coefficients:
        np.testing.assert_array_equal(a.coefficients[name], b.coefficients[name], strict=True)


def test_same_data_spec_and_seed_give_bitwise_identical_fits():
    """Two identical calls in one process; the second compiles everything anew (no program
    shared with the first), so sharing compiled programs does not change results either."""
    first, given, snapshot = shared_fits.svi_fit(300)
    second = shared_fits.svi_fit(300, replica=1)[0]
    assert first is not second and first._svi.run.runner.run_chunk is not (
        second._svi.run.runner.run_chunk)
    assert_same_draws(first, second)
    assert len(first.losses) == 300 and np.all(np.isfinite(first.losses))
    _unchanged(given, snapshot)  # the user's DataArray is untouched by a successful fit


def test_resuming_in_pieces_matches_one_uninterrupted_run():
    whole = shared_fits.svi_fit(300)[0]
    part, given, snapshot = shared_fits.svi_fit(100, numpy=True)
    _unchanged(given, snapshot)  # NumPy input untouched too
    resumed = part.resume(120).resume(80)
    assert len(part.losses) == 100  # resume returns a new fit
    np.testing.assert_array_equal(resumed.losses[:100], part.losses)
    assert_same_draws(resumed, whole)
    assert resumed.info["svi_steps"] == 300 and resumed.info["resumed"] == [120, 80]
    for name in whole.guide_params:
        np.testing.assert_array_equal(resumed.guide_params[name], whole.guide_params[name])


def test_saved_fit_loads_with_identical_summary_and_predictions(tmp_path):
    fit = shared_fits.svi_fit(300)[0]
    path = tmp_path / "fit.nc"
    fit.save(path)
    loaded = tensorfact.load(path)
    pd.testing.assert_frame_equal(loaded.summary(), fit.summary())
    pd.testing.assert_frame_equal(loaded.summary(["a"], prob=0.8), fit.summary(["a"], prob=0.8))
    xr.testing.assert_identical(loaded.predict(), fit.predict())
    xr.testing.assert_identical(loaded.predict(quantiles=[0.1, 0.9]),
                                fit.predict(quantiles=[0.1, 0.9]))
    xr.testing.assert_identical(loaded.posterior, fit.posterior)
    assert_same_draws(loaded, fit)
    assert loaded.spec == fit.spec and loaded.decorrelate == fit.decorrelate
    assert loaded.method == "svi" and loaded.seed == fit.seed and loaded.info == fit.info
    np.testing.assert_array_equal(loaded.data.values, fit.data.values)
    assert loaded.data.attrs == fit.data.attrs and loaded.data.name == "sales"
    for dim in fit.data.dims:
        np.testing.assert_array_equal(loaded.data.coords[dim], fit.data.coords[dim])
    for name, value in fit.guide_params.items():
        np.testing.assert_array_equal(loaded.guide_params[name], value, strict=True)
    groups = ("posterior", "observed_data", "losses", "coefficients", "guide_params",
              "svi_state")
    for group in groups:  # plain netCDF groups, readable without tensorfact
        with xr.open_dataset(path, group=group, engine="h5netcdf") as dataset:
            assert dataset.data_vars
    with xr.open_dataset(path, engine="h5netcdf") as root:
        assert spec_from_dict(json.loads(root.attrs["spec"])) == fit.spec


def test_loaded_fit_resumes_exactly(tmp_path):
    whole = shared_fits.svi_fit(300)[0]
    part = shared_fits.svi_fit(100, numpy=True)[0]
    part.save(tmp_path / "part.nc")
    loaded = tensorfact.load(tmp_path / "part.nc")
    resumed = loaded.resume(200)
    assert_same_draws(resumed, whole)
    resaved = tmp_path / "resumed.nc"
    resumed.save(resaved)
    np.testing.assert_array_equal(tensorfact.load(resaved).losses, whole.losses)


def test_loaded_fit_of_a_custom_optimizer_asks_for_it(tmp_path):
    part = shared_fits.svi_fit(100, numpy=True)[0]
    part.save(tmp_path / "part.nc")
    loaded = tensorfact.load(tmp_path / "part.nc")
    record = loaded._record  # as written for fit(optimizer=...):
    loaded = replace(loaded, _record=replace(record, svi=replace(record.svi,
                                                                   custom_optimizer=True)))
    with pytest.raises(ValueError, match=r"custom optimizer.*resume\(num_steps, optimizer="):
        loaded.resume(10)
    with pytest.raises(ValueError, match="only for fits loaded from a file"):
        part.resume(10, optimizer=part._svi.optimizer)


def test_nuts_fit_round_trip_and_no_resume(tmp_path):
    fit, _ = shared_fits.nuts_fit()
    fit.save(tmp_path / "nuts.nc")
    loaded = tensorfact.load(tmp_path / "nuts.nc")
    pd.testing.assert_frame_equal(loaded.summary(), fit.summary())
    xr.testing.assert_identical(loaded.predict(), fit.predict())
    assert loaded.diagnostics == fit.diagnostics
    assert loaded.posterior.sizes["chain"] == 2
    with pytest.raises(ValueError, match="Only SVI fits can be resumed"):
        loaded.resume(10)


def test_spec_json_round_trip_covers_every_option():
    spec = ModelSpec(
        dims=("i", "j", "t"), time="t",
        effects=(
            GrandMean(loc=1.5, scale=10.0),
            Shrinkage("a", ("i",), prior="horseshoe", prior_scale=0.5),
            Shrinkage("C", ("i", "j"), prior="half_normal"),
            Temporal("z", kind="local_linear_trend"),
            Temporal("A", by="i", kind="ar1", prior_scale=np.float32(0.25)),
            Shrinkage("b", ("j",), prior_scale=np.int64(2)),  # NumPy scalars are accepted
        ),
        noise=Noise(per_series=True, prior_scale=2.0),
    )
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec


def test_loading_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "other.nc"
    xr.Dataset({"x": ("n", np.arange(3.0))}).to_netcdf(path, engine="h5netcdf")
    with pytest.raises(ValueError, match="not a tensorfact fit file"):
        tensorfact.load(path)


def _transition(name, rows):  # a stand-in user transition (never run here)
    raise NotImplementedError


def test_spec_with_a_transition_needs_it_back_on_load():
    spec = ModelSpec(dims=("i", "j", "t"), time="t",
                     effects=(GrandMean(), Temporal("A", by="i", transition=_transition)))
    saved = json.loads(json.dumps(spec_to_dict(spec)))
    assert saved["effects"][1]["transition"] == {"name": "_transition"}
    assert spec_from_dict(saved, {"A": _transition}) == spec
    placeholder = spec_from_dict(saved).effects[1].transition
    with pytest.raises(ValueError, match=r"transitions=\{'A': \.\.\.\}"):
        placeholder("A", (3,))


def test_round_trip_without_svi_keeps_labels_attrs_and_datetimes(tmp_path):
    """A fit without SVI state (e.g. an exact one), string and datetime labels, odd attrs."""
    dims = ("region", "product", "year")
    values = np.arange(24.0).reshape(3, 2, 4)
    values[0, 0, 0] = np.nan
    data = xr.DataArray(values, dims=dims, coords={
        "region": ["north", "south", "east"], "product": ["x", "y"],
        "year": pd.date_range("2000", periods=4, freq="YS"),
    }, attrs={"units": "kg", "tags": ["a", "b"], "handle": object()})
    spec = ModelSpec(dims=dims, time="year",
                     effects=(GrandMean(), Shrinkage("a", ("region",))))
    tensor = tensorfact.as_tensor_data(data)
    rng = np.random.default_rng(0)
    posterior = xr.Dataset({
        "mu": (("chain", "draw"), rng.normal(size=(2, 50)).astype(np.float32)),
        "a": (("chain", "draw", "region"), rng.normal(size=(2, 50, 3)).astype(np.float32)),
        "sigma": (("chain", "draw"), rng.gamma(2.0, size=(2, 50)).astype(np.float32)),
    }, coords={"chain": [0, 1], "draw": np.arange(50), "region": tensor.coords["region"]})
    fit = tensorfact.Fit(method="exact", spec=spec, data=tensor, posterior=posterior,
                         decorrelate={}, seed=7, info={"note": "no svi"})
    with pytest.warns(UserWarning, match=r"\['handle'\] cannot be saved"):
        fit.save(tmp_path / "exact.nc")
    loaded = tensorfact.load(tmp_path / "exact.nc")
    assert loaded.losses is None and not loaded._has_svi() and loaded.guide_params == {}
    assert loaded.data.attrs == {"units": "kg", "tags": ["a", "b"]}
    assert loaded.data.coords["year"].dtype.kind == "M"
    pd.testing.assert_frame_equal(loaded.summary(), fit.summary())
    expected = fit.predict(quantiles=[0.5])
    del expected.attrs["handle"]  # the one attribute that could not be saved
    xr.testing.assert_identical(loaded.predict(quantiles=[0.5]), expected)
    with pytest.raises(ValueError, match="Only SVI fits can be resumed"):
        loaded.resume(5)


def test_fits_sharing_a_compiled_program_use_their_own_data():
    """Fits of one model shape share the compiled SVI step and draw programs (data are
    arguments, not constants): a second fit of shifted data reuses the first one's programs and
    its grand mean moves with the data."""
    reference = shared_fits.svi_fit(300)[0]
    # The reference fit may have been made long before (its programs since evicted from the
    # least-recently-used cache by other tests), so sharing is checked between two new fits.
    shifted, again = (tensorfact.fit(shared_fits.data() + shift, shared_fits.spec(),
                                     num_steps=300, **shared_fits.SETTINGS)
                      for shift in (10.0, 20.0))
    assert again._svi.run.runner.run_chunk is shifted._svi.run.runner.run_chunk
    again_moved = float(again.posterior["mu"].mean() - shifted.posterior["mu"].mean())
    assert abs(again_moved - 10.0) < 0.3, again_moved
    moved = float(shifted.posterior["mu"].mean() - reference.posterior["mu"].mean())
    assert abs(moved - 10.0) < 0.3, moved
    assert not np.array_equal(shifted.losses, reference.losses)
