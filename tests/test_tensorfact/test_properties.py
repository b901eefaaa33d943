"""Property-based tests: random small DataArrays (random NaN patterns, dtypes, labels) with
random specifications either fail with a documented exception or validate/fit correctly.

Most examples exercise validation only (no JAX work); a few fit for real, reusing the 8 x 5 x 12
shape and a handful of steps.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import xarray as xr
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tensorfact
from tensorfact import GrandMean, ModelSpec, Noise, Shrinkage, Temporal
from tensorfact.spec import MIN_TIME_STEPS, SCALE_PRIORS, TEMPORAL_KINDS
from tests.test_tensorfact import shared_fits
from tests.test_tensorfact.test_validation import _unchanged

DIMS = ("region", "product", "year")
GOOD_SCALES = (1.0, 0.5, 3, np.float32(2.0))
BAD_SCALES = (0.0, -1.0, math.nan, math.inf)
# documented messages (see tensorfact.data / spec / api), keyed by the problem
MESSAGES = {
    "boolean": r"Boolean data are not measurements",
    "empty dim": r"have length 0",
    "inf": r"infinite value",
    "all NaN": r"every cell is NaN",
    "empty slice": r"No finite value along",
    "duplicated labels": r"has duplicated labels",
    "unsorted time": r"must be strictly increasing",
    "bad scale": r"must be > 0|must be finite",
    "no effects": r"needs at least one effect",
    "short time": r"needs at least [23]",
    "unknown toggle": r"decorrelate names unknown effects",
}


def rarely(draw, percent: int = 15) -> bool:
    """True in about ``percent``% of draws (keeps most generated cases valid; shrinks to
    False)."""
    return draw(st.sampled_from([False] * (100 - percent) + [True] * percent))


@st.composite
def effect_specs(draw):
    """``(kind, name, options)`` tuples describing up to four distinct effects."""
    names = draw(st.lists(st.sampled_from(["mu", "a", "b", "C", "z", "A", "B"]), unique=True,
                          min_size=0 if rarely(draw, 5) else 1, max_size=4))
    out = []
    for name in names:
        scale = draw(st.sampled_from(BAD_SCALES if rarely(draw, 5) else GOOD_SCALES))
        if name == "mu":
            out.append(("mean", name, {"scale": scale}))
        elif name in ("a", "b", "C"):
            dims = {"a": ("region",), "b": ("product",), "C": ("region", "product")}[name]
            out.append(("shrinkage", name, {"dims": dims, "prior_scale": scale,
                                            "prior": draw(st.sampled_from(SCALE_PRIORS))}))
        else:
            by = {"z": None, "A": "region", "B": "product"}[name]
            out.append(("temporal", name, {"by": by, "prior_scale": scale,
                                           "kind": draw(st.sampled_from(TEMPORAL_KINDS))}))
    return out


def build_spec(effects, per_series: bool) -> ModelSpec:
    made = []
    for kind, name, options in effects:
        if kind == "mean":
            made.append(GrandMean(name, **options))
        elif kind == "shrinkage":
            made.append(Shrinkage(name, **options))
        else:
            made.append(Temporal(name, **options))
    return ModelSpec(dims=DIMS, time="year", effects=tuple(made),
                     noise=Noise(per_series=per_series))


@st.composite
def inputs(draw):
    low = 0 if rarely(draw, 5) else 1
    shape = draw(st.tuples(st.integers(low, 3), st.integers(1, 3), st.integers(1, 4)))
    dtype = "float64"
    if rarely(draw, 30):
        dtype = draw(st.sampled_from(["float32", "int64", "int8", "bool"]))
    values = np.arange(int(np.prod(shape)), dtype=float).reshape(shape) - 3.0
    if dtype.startswith("float"):
        if not rarely(draw, 20):  # random NaN pattern, from sparse to dense
            density = 1.0 if rarely(draw, 5) else draw(st.sampled_from([0.1, 0.2, 0.4]))
            pattern = np.random.default_rng(draw(st.integers(0, 2**16))).random(shape)
            values[pattern < density] = np.nan
        if rarely(draw, 10) and values.size:
            values.flat[draw(st.integers(0, values.size - 1))] = -np.inf
    labels = "sorted"
    if rarely(draw, 20):
        labels = draw(st.sampled_from(["reversed", "duplicated", "strings"]))
    year = np.arange(2000, 2000 + shape[2])
    if labels == "reversed":
        year = year[::-1]
    elif labels == "duplicated" and shape[2] > 1:
        year = np.r_[year[:-1], year[-2]]
    elif labels == "strings":
        year = np.array([f"t{k}" for k in range(shape[2])])
    coords = {"region": [f"r{k}" for k in range(shape[0])], "year": year}
    data = xr.DataArray(values.astype(dtype) if dtype != "bool" else values > 0, dims=DIMS,
                        coords=coords, name="y")
    effects = draw(effect_specs())
    names = [name for _, name, _ in effects]
    toggle = draw(st.booleans())
    if rarely(draw, 30):
        pool = [*names, "Q"] if rarely(draw, 30) else names or ["Q"]
        toggle = draw(st.dictionaries(st.sampled_from(pool), st.booleans(), max_size=2))
    return data, effects, draw(st.booleans()), toggle


def expected_problems(data: xr.DataArray, effects, toggle) -> set[str]:
    """What is wrong with a generated case, worked out independently of tensorfact."""
    problems = set()
    values = data.values
    if values.dtype == bool:
        problems.add("boolean")
    if 0 in values.shape:
        problems.add("empty dim")
    elif values.dtype != bool:
        finite = np.isfinite(values.astype(float))
        if np.isinf(values.astype(float)).any():
            problems.add("inf")
        elif not finite.any():
            problems.add("all NaN")
        elif any(not finite.any(axis=tuple(a for a in range(3) if a != k)).all()
                 for k in range(3)):
            problems.add("empty slice")
    year = data["year"].values
    if len(set(year.tolist())) < len(year):
        problems.add("duplicated labels")
    elif year.dtype.kind in "iu" and np.any(np.diff(year) <= 0):
        problems.add("unsorted time")
    for kind, _, options in effects:
        scale = float(options.get("scale", options.get("prior_scale")))
        if not (math.isfinite(scale) and scale > 0):
            problems.add("bad scale")
        if kind == "temporal" and data.sizes["year"] < MIN_TIME_STEPS[options["kind"]]:
            problems.add("short time")
    if not effects:
        problems.add("no effects")
    if isinstance(toggle, dict) and "Q" in toggle:
        problems.add("unknown toggle")
    return problems


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(inputs())
def test_validation_either_raises_a_documented_error_or_returns_faithful_copies(case):
    data, effects, per_series, toggle = case
    snapshot = copy.deepcopy(data)
    problems = expected_problems(data, effects, toggle)
    try:
        spec = build_spec(effects, per_series)
        tensor, checked, switched = tensorfact.check_inputs(data, spec, decorrelate=toggle)
    except (TypeError, ValueError) as err:
        assert problems, f"unexpected {type(err).__name__}: {err}"
        patterns = [MESSAGES[p] for p in problems]
        assert any(re.search(p, str(err)) for p in patterns), (str(err), problems)
        _unchanged(data, snapshot)
        event(f"refused: {type(err).__name__}")
        return
    assert not problems, f"expected an error for {problems}"
    event("valid")
    _unchanged(data, snapshot)
    assert tensor.dims == DIMS and tensor.values.dtype == np.float64
    np.testing.assert_array_equal(tensor.values, data.values.astype(float))
    for dim in DIMS:
        np.testing.assert_array_equal(tensor.coords[dim], data[dim].values)
    assert checked is spec
    on = toggle if isinstance(toggle, bool) else None
    assert switched == {n: on if on is not None else toggle.get(n, True)
                        for n in spec.effect_names}


@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(
    missing=st.sampled_from([0.15, 0.35, 0.6]),
    pattern=st.integers(0, 2**16),
    drop_region=st.sampled_from([False, False, False, True]),
)
def test_random_missing_patterns_fit_with_finite_labelled_output_or_documented_error(
    missing, pattern, drop_region
):
    """Real fits (50 SVI steps) of the shared 8 x 5 x 12 shape and specification under random
    NaN patterns and seeds; the specification is fixed here because each new one compiles a
    new model (random specifications are covered by the validation property above)."""
    source = shared_fits.data()
    values = source.values.copy()
    values[np.random.default_rng(pattern).random(values.shape) < missing] = np.nan
    if drop_region:
        values[2] = np.nan
    data = source.copy(data=values)
    snapshot = copy.deepcopy(data)
    spec = shared_fits.spec()
    try:
        fit = tensorfact.fit(data, spec, seed=pattern, num_steps=50, stop_at_plateau=False,
                             num_draws=10)
    except ValueError as err:
        _unchanged(data, snapshot)
        assert drop_region and re.search(r"No finite value along region=\['r2'\]", str(err))
        event("refused: a region without data")
        return
    _unchanged(data, snapshot)
    assert not drop_region
    event(f"fitted, {missing:.0%} missing")
    assert np.all(np.isfinite(fit.losses)) and len(fit.losses) == 50
    for effect in spec.effects:
        draws = fit.posterior[effect.name]
        assert draws.dims == ("chain", "draw", *spec.effect_dims(effect))
        for dim in spec.effect_dims(effect):
            np.testing.assert_array_equal(draws[dim].values, data[dim].values)
    assert all(np.all(np.isfinite(v.values)) for v in fit.posterior.data_vars.values())
    mean = fit.predict()
    assert mean.dims == DIMS and np.all(np.isfinite(mean.values))
    for dim in DIMS:
        np.testing.assert_array_equal(mean[dim].values, data[dim].values)
