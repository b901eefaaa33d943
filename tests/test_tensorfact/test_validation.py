"""Every malformed input fails before any JAX work with a TypeError/ValueError naming the
problem and the fix, and leaves the user's object unchanged.

Print the table of cases with their actual messages::

    python tests/test_tensorfact/test_validation.py
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import tensorfact
import tensorfact.results.io
from tensorfact import GrandMean, ModelSpec, Noise, Shrinkage, Temporal
from tensorfact.results.fit import Fit

DIMS = ("region", "product", "year")


def base(shape=(3, 2, 4), dtype=float) -> xr.DataArray:
    """A small valid DataArray (values 0..n-1, one missing cell)."""
    values = np.arange(np.prod(shape), dtype=float).reshape(shape)
    values[0, 0, 0] = np.nan
    coords = {
        "region": [f"r{k}" for k in range(shape[0])],
        "product": [f"p{k}" for k in range(shape[1])],
        "year": np.arange(2000, 2000 + shape[2]),
    }
    return xr.DataArray(values.astype(dtype) if dtype is not float else values, dims=DIMS,
                        coords=coords, name="sales", attrs={"units": "kg", "notes": ["a"]})


def with_values(change: Callable[[np.ndarray], None], dtype=float) -> Callable[[], Any]:
    def make():
        data = base()
        values = data.values.copy()
        change(values)
        return data.copy(data=values.astype(dtype) if dtype is not float else values)
    return make


def with_coord(dim: str, labels) -> Callable[[], xr.DataArray]:
    return lambda: base().assign_coords({dim: labels})


def numpy_data() -> np.ndarray:
    return np.asarray(base().values)


def spec(*effects, dims=DIMS, time="year", noise=None) -> ModelSpec:
    return ModelSpec(dims=dims, time=time, effects=effects, noise=noise or Noise())


def call_fit(**kwargs) -> Callable[[Any], Any]:
    return lambda data: tensorfact.fit(data, **kwargs)


def call_fit_spec(make_spec: Callable[[], ModelSpec], **kwargs) -> Callable[[Any], Any]:
    return lambda data: tensorfact.fit(data, make_spec(), **kwargs)


@dataclass(frozen=True)
class Case:
    """One malformed call: what is wrong, how to make the input, the call, the expected error."""

    problem: str
    make: Callable[[], Any]
    call: Callable[[Any], Any]
    error: type[Exception]
    match: str


FIT = call_fit()
CASES = [
    # -- the container ---------------------------------------------------------------------
    Case("a nested list instead of a DataArray", lambda: base().values.tolist(), FIT,
         TypeError, r"Expected an xarray.DataArray .* got list; convert it with np.asarray"),
    Case("a pandas DataFrame", lambda: pd.DataFrame(np.zeros((3, 2))), FIT, TypeError,
         r"got DataFrame; convert it with frame.stack\(\).to_xarray\(\)"),
    Case("an xarray Dataset", lambda: base().to_dataset(), FIT, TypeError,
         r"got Dataset; convert it with dataset\[name\]"),
    Case("a NumPy array without dims", numpy_data, FIT, TypeError, r"needs dim names"),
    Case("dims given as one string", numpy_data, call_fit(dims="region"), TypeError,
         r"dims must be a sequence of dim names"),
    Case("dims naming 2 of 3 axes", numpy_data, call_fit(dims=("region", "year")), ValueError,
         r"dims names 2 dims but the array has 3"),
    Case("dims disagreeing with the DataArray's", base, call_fit(dims=("a", "b", "c")),
         ValueError, r"disagrees with the DataArray's dims"),
    Case("a masked array", lambda: np.ma.masked_invalid(numpy_data()), call_fit(dims=DIMS),
         TypeError, r"Masked arrays are not accepted; mark missing cells with NaN"),
    Case("2 dims", lambda: base().isel(year=0), FIT, ValueError,
         r"3-way arrays; got 2 dims .* Select or stack dims"),
    Case("4 dims", lambda: base().expand_dims(extra=2), FIT, ValueError,
         r"3-way arrays; got 4 dims"),
    Case("non-string dim names", numpy_data, call_fit(dims=(0, 1, 2)), TypeError,
         r"Dim names must be strings"),
    Case("duplicated dim names", numpy_data, call_fit(dims=("a", "a", "t")), ValueError,
         r"Dim names must be distinct"),
    Case("a dim named 'draw' (reserved)", lambda: base().rename(product="draw"), FIT,
         ValueError, r"Dim names \['draw'\] are reserved"),
    Case("a zero-length dim", lambda: base().isel(product=slice(0, 0)), FIT, ValueError,
         r"Dims \['product'\] have length 0"),
    # -- the values ------------------------------------------------------------------------
    Case("string values", lambda: base().astype(str), FIT, TypeError,
         r"Data must be real numbers; got dtype <U.*astype\(float\)"),
    Case("object values", lambda: base().astype(object), FIT, TypeError,
         r"Data must be real numbers; got dtype object"),
    Case("complex values", lambda: base().fillna(0).astype(complex), FIT, TypeError,
         r"Complex data .* not supported"),
    Case("boolean values", lambda: base().fillna(0) > 3, FIT, TypeError,
         r"Boolean data are not measurements; convert them explicitly"),
    Case("+inf in a cell", with_values(lambda v: v.__setitem__((1, 1, 1), np.inf)), FIT,
         ValueError, r"1 infinite value\(s\); replace them with NaN"),
    Case("-inf in a cell", with_values(lambda v: v.__setitem__((2, 0, 3), -np.inf)), FIT,
         ValueError, r"infinite value"),
    Case("every cell NaN", with_values(lambda v: v.fill(np.nan)), FIT, ValueError,
         r"no finite value: every cell is NaN"),
    Case("a region with no finite value", with_values(lambda v: v.__setitem__(1, np.nan)),
         FIT, ValueError, r"No finite value along region=\['r1'\].*dropna\('region'"),
    Case("a year with no finite value",
         with_values(lambda v: v.__setitem__((slice(None), slice(None), 2), np.nan)), FIT,
         ValueError, r"No finite value along year=\[2002\]"),
    Case("values beyond float32 range", with_values(lambda v: v.__setitem__((1, 1, 1), 1e35)),
         FIT, ValueError, r"beyond what float32 .* rescale"),
    # -- the labels ------------------------------------------------------------------------
    Case("duplicated region labels", with_coord("region", ["r0", "r1", "r1"]), FIT,
         ValueError, r"Coordinate 'region' has duplicated labels \['r1'\]"),
    Case("a missing (NaN) time label", with_coord("year", [2000.0, np.nan, 2002.0, 2003.0]),
         FIT, ValueError, r"Coordinate 'year' has missing \(NaN/NaT\) labels"),
    Case("unsorted time labels", with_coord("year", [2000, 2002, 2001, 2003]), FIT,
         ValueError, r"must be strictly increasing, but 2002 is followed by 2001.*sortby"),
    Case("decreasing datetime labels",
         with_coord("year", pd.date_range("2000", periods=4, freq="YS")[::-1]), FIT,
         ValueError, r"time coordinate 'year' must be strictly increasing"),
    Case("a time axis of length 1 (random walks need 2)", lambda: base().isel(year=[0]), FIT,
         ValueError, r"'year' has 1 step\(s\); a random_walk effect \('z'\) needs at least 2"),
    Case("2 time steps for a local linear trend", lambda: base().isel(year=[0, 1]),
         call_fit_spec(lambda: spec(GrandMean(), Temporal("z", kind="local_linear_trend"))),
         ValueError, r"a local_linear_trend effect \('z'\) needs at least 3"),
    # -- the specification -----------------------------------------------------------------
    Case("spec effect over a dim the data lack", base,
         call_fit_spec(lambda: spec(GrandMean(), Shrinkage("a", ("country",)))), ValueError,
         r"Effect 'a' names dims \['country'\] that the data lack"),
    Case("spec built for other dims", base,
         call_fit_spec(lambda: tensorfact.default_spec(("state", "disease", "year"))),
         ValueError, r"names dims \['state', 'disease'\] that the data lack"),
    Case("spec with the dims in another order", base,
         call_fit_spec(lambda: tensorfact.default_spec(("product", "region", "year"))),
         ValueError, r"orders the dims differently"),
    Case("two effects with the same name", base,
         call_fit_spec(lambda: spec(Shrinkage("a", ("region",)), Shrinkage("a", ("product",)))),
         ValueError, r"Two effects are named 'a'"),
    Case("an effect over all three dims", base,
         call_fit_spec(lambda: spec(Shrinkage("D", DIMS))), ValueError,
         r"An effect over all three dims is not identifiable against the noise"),
    Case("an effect named like another's scale (s_a)", base,
         call_fit_spec(lambda: spec(Shrinkage("a", ("region",)), GrandMean("s_a"))),
         ValueError, r"creates the site 's_a', which effect 'a' also creates"),
    Case("an effect named like a dim", base,
         call_fit_spec(lambda: spec(Shrinkage("region", ("region",)))), ValueError,
         r"creates the site 'region', a name reserved for a dim"),
    Case("an effect named 'sigma'", base, call_fit_spec(lambda: spec(GrandMean("sigma"))),
         ValueError, r"reserved for the noise or the data"),
    Case("an effect name ending in '_decorrelated'", base,
         call_fit_spec(lambda: spec(GrandMean("mu_decorrelated"))), ValueError,
         r"decorrelation and the guide use"),
    Case("temporal effect by the time dim", base,
         call_fit_spec(lambda: spec(Temporal("A", by="year"))), ValueError,
         r"by='year' must be one of the non-time dims"),
    Case("a spec without effects", base, call_fit_spec(lambda: spec()), ValueError,
         r"needs at least one effect"),
    Case("two grand means", base, call_fit_spec(lambda: spec(GrandMean(), GrandMean("m2"))),
         ValueError, r"at most one GrandMean; remove the others"),
    Case("an effect given as a string", base,
         call_fit_spec(lambda: spec(GrandMean(), "a")), TypeError,
         r"Effects must be GrandMean, Shrinkage or Temporal, got str"),
    Case("negative prior scale", base,
         call_fit_spec(lambda: spec(Shrinkage("a", ("region",), prior_scale=-1.0))),
         ValueError, r"Shrinkage 'a': prior_scale must be > 0, got -1.0"),
    Case("zero grand-mean scale", base, call_fit_spec(lambda: spec(GrandMean(scale=0))),
         ValueError, r"GrandMean 'mu': scale must be > 0"),
    Case("infinite temporal prior scale", base,
         call_fit_spec(lambda: spec(Temporal("z", prior_scale=float("inf")))), ValueError,
         r"Temporal 'z': prior_scale must be finite"),
    Case("NaN grand-mean location", base,
         call_fit_spec(lambda: spec(GrandMean(loc=float("nan")))), ValueError,
         r"GrandMean 'mu': loc must be finite"),
    Case("a string noise scale", base,
         call_fit_spec(lambda: spec(GrandMean(), noise=Noise(prior_scale="1"))), TypeError,
         r"Noise: prior_scale must be a real number"),
    Case("per_series not a bool", base,
         call_fit_spec(lambda: spec(GrandMean(), noise=Noise(per_series="yes"))), TypeError,
         r"per_series must be True or False"),
    Case("unknown shrinkage prior", base,
         call_fit_spec(lambda: spec(Shrinkage("a", ("region",), prior="laplace"))),
         ValueError, r"unknown prior 'laplace'; use one of"),
    Case("unknown temporal kind", base,
         call_fit_spec(lambda: spec(Temporal("z", kind="arima"))), ValueError,
         r"unknown kind 'arima'; use one of"),
    Case("Shrinkage dims given as a string", base,
         call_fit_spec(lambda: spec(Shrinkage("a", "region"))), TypeError,
         r"dims must be a tuple of dim names, e.g. \('region',\)"),
    Case("spec that is not a ModelSpec", base,
         lambda data: tensorfact.fit(data, {"effects": ["mu"]}), TypeError,
         r"spec must be a tensorfact ModelSpec, got dict"),
    Case("time= naming a dim the data lack", base, call_fit(time="month"), ValueError,
         r"time='month' is not one of the dims"),
    Case("time= disagreeing with the spec", base,
         lambda data: tensorfact.fit(data, tensorfact.default_spec(DIMS), time="product"),
         ValueError, r"disagrees with the spec's time dim 'year'"),
    # -- the settings ----------------------------------------------------------------------
    Case("unknown method", base, call_fit(method="mcmc"), ValueError,
         r"Unknown method 'mcmc'; use one of 'svi', 'nuts', 'exact'"),
    Case("unknown guide", base, call_fit(guide="fullrank"), ValueError,
         r"Unknown guide 'fullrank'"),
    Case("decorrelate naming an unknown effect", base, call_fit(decorrelate={"Q": False}),
         ValueError, r"decorrelate names unknown effects \['Q'\]"),
    Case("decorrelate with a non-bool switch", base, call_fit(decorrelate={"A": "off"}),
         TypeError, r"decorrelate\['A'\] must be True or False"),
    Case("decorrelate given as a string", base, call_fit(decorrelate="yes"), TypeError,
         r"decorrelate must be True, False or a mapping"),
    Case("num_steps = 0", base, call_fit(num_steps=0), ValueError,
         r"num_steps must be > 0, got 0"),
    Case("num_steps negative", base, call_fit(num_steps=-10), ValueError,
         r"num_steps must be > 0, got -10"),
    Case("num_steps a float", base, call_fit(num_steps=100.0), TypeError,
         r"num_steps must be an integer, got 100.0"),
    Case("num_samples = 0 (NUTS)", base, call_fit(method="nuts", num_samples=0), ValueError,
         r"num_samples must be > 0, got 0"),
    Case("num_chains = 0", base, call_fit(num_chains=0), ValueError, r"num_chains must be > 0"),
    Case("num_warmup negative", base, call_fit(num_warmup=-1), ValueError,
         r"num_warmup must be >= 0"),
    Case("num_draws = 0", base, call_fit(num_draws=0), ValueError, r"num_draws must be > 0"),
    Case("learning_rate = 0", base, call_fit(learning_rate=0.0), ValueError,
         r"learning_rate must be finite and > 0"),
    Case("learning_rate NaN", base, call_fit(learning_rate=float("nan")), ValueError,
         r"learning_rate must be finite and > 0"),
    Case("optimizer given as a name", base, call_fit(optimizer="adam"), TypeError,
         r"optimizer must be an optax GradientTransformation"),
    Case("stop_at_plateau not a bool", base, call_fit(stop_at_plateau="yes"), TypeError,
         r"stop_at_plateau must be True or False"),
    Case("seed a float", base, call_fit(seed=1.5), TypeError,
         r"seed must be an integer or a JAX PRNG key"),
    Case("seed a string", base, call_fit(seed="42"), TypeError,
         r"seed must be an integer or a JAX PRNG key"),
    Case("seed a bool", base, call_fit(seed=True), TypeError, r"got a bool"),
    Case("seed negative", base, call_fit(seed=-1), ValueError,
         r"seed must be in \[0, 2\*\*32\), got -1; pass a non-negative one"),
    Case("seed >= 2**32 (would collide)", base, call_fit(seed=2**32), ValueError,
         r"larger seeds would silently collide"),
    Case("seed a NumPy int array", base, call_fit(seed=np.array([0, 1])), TypeError,
         r"seed must be an integer or a JAX PRNG key"),
    Case("from_fit not a Fit", base, call_fit(from_fit="fit.nc"), TypeError,
         r"from_fit must be a tensorfact Fit, got str"),
]


def _unchanged(data: Any, snapshot: Any) -> None:
    assert type(data) is type(snapshot)
    if isinstance(data, xr.DataArray):
        xr.testing.assert_identical(data, snapshot)
        assert data.dtype == snapshot.dtype and data.attrs == snapshot.attrs
    elif isinstance(data, np.ma.MaskedArray):
        np.testing.assert_array_equal(data.mask, snapshot.mask)
        np.testing.assert_array_equal(data.data, snapshot.data)
    elif isinstance(data, np.ndarray):
        assert data.dtype == snapshot.dtype
        np.testing.assert_array_equal(data, snapshot)
    elif isinstance(data, (pd.DataFrame, xr.Dataset)):
        assert data.equals(snapshot)
    else:
        assert data == snapshot


def _no_jax(*args, **kwargs):
    raise AssertionError("validation passed and JAX work would start")


def run_case(case: Case) -> Exception:
    """Runs one case with the JAX part of ``fit`` replaced by a tripwire; returns the error."""
    data = case.make()
    snapshot = copy.deepcopy(data)
    writeable = _writeable(data)
    with mock.patch("tensorfact.api._run", _no_jax):
        try:
            case.call(data)
        except (TypeError, ValueError) as err:
            error = err
        else:  # pragma: no cover - the test reports it
            raise AssertionError(f"{case.problem}: no error")
    _unchanged(data, snapshot)
    assert _writeable(data) == writeable
    return error


def _writeable(data: Any) -> bool | None:
    values = getattr(data, "values", data)
    return values.flags.writeable if isinstance(values, np.ndarray) else None


@pytest.mark.parametrize("case", CASES, ids=[c.problem for c in CASES])
def test_malformed_input_fails_early_with_a_clear_message(case):
    error = run_case(case)
    assert type(error) is case.error, f"{type(error).__name__}: {error}"
    assert re.search(case.match, str(error)), str(error)


@contextlib.contextmanager
def _jax_events() -> Iterator[list[str]]:
    """Collects the JAX monitoring events (tracing, lowering, compiling) while active."""
    from jax import monitoring

    events: list[str] = []

    def listen(event: str, *args: Any, **kwargs: Any) -> None:
        events.append(event)

    monitoring.register_event_listener(listen)
    monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        monitoring.unregister_event_listener(listen)
        monitoring.unregister_event_duration_listener(listen)


def test_malformed_input_fails_before_any_jax_work():
    """The real ``tensorfact.fit`` (no tripwire): each of the 25+ distinct malformed calls
    raises its error while JAX traces and compiles nothing, i.e. before any JAX work (the
    parametrized test above only shows the error comes before ``tensorfact.api._run``). The
    listener is shown to see JAX work by a fresh jitted function."""
    import jax

    assert len({c.problem for c in CASES}) == len(CASES) >= 25
    with _jax_events() as events:
        jax.jit(lambda x: x * 3.0 + 1.0)(2.0)
    assert any(e.startswith("/jax/core/compile") for e in events), events
    for case in CASES:
        data = case.make()
        with _jax_events() as events, pytest.raises(case.error, match=case.match):
            case.call(data)
        assert not [e for e in events if e.startswith("/jax/")], (case.problem, events)


def test_valid_input_reaches_the_jax_part_unchanged():
    """The tripwire is reached by valid input (so the cases above fail *before* it)."""
    for data, kwargs in ((base(), {}), (numpy_data(), {"dims": DIMS})):
        snapshot = copy.deepcopy(data)
        with mock.patch("tensorfact.api._run", _no_jax), pytest.raises(AssertionError):
            tensorfact.fit(data, **kwargs)
        _unchanged(data, snapshot)


def test_integer_data_are_converted_to_float_and_input_kept():
    data = base().fillna(7).astype(np.int32)
    snapshot = copy.deepcopy(data)
    tensor, spec_, switched = tensorfact.check_inputs(data)
    assert tensor.values.dtype == np.float64
    np.testing.assert_array_equal(tensor.values, data.values.astype(float))
    tensor.values[0, 0, 0] = -1.0  # the validated copy is independent of the input
    tensor.attrs["notes"].append("b")
    _unchanged(data, snapshot)
    assert spec_.effect_names == ("mu", "a", "b", "z", "A", "B", "C")
    assert all(switched.values())


def test_keys_and_numpy_integers_are_accepted_as_seeds():
    import jax

    for seed in (0, np.int64(5), 2**32 - 1, jax.random.PRNGKey(3), jax.random.key(3)):
        with mock.patch("tensorfact.api._run", _no_jax), pytest.raises(AssertionError):
            tensorfact.fit(base(), seed=seed)
    with pytest.raises(ValueError, match="threefry2x32"):
        tensorfact.fit(base(), seed=jax.random.key(0, impl="rbg"))


def test_resume_and_save_arguments_are_checked():
    fit = Fit(method="nuts", spec=tensorfact.default_spec(DIMS), data=tensorfact.as_tensor_data(
        base()), posterior=xr.Dataset(), decorrelate={})
    with pytest.raises(ValueError, match="num_steps must be > 0"):
        fit.resume(0)
    with pytest.raises(ValueError, match="Only SVI fits can be resumed"):
        fit.resume(10)
    with pytest.raises(TypeError, match="save expects a tensorfact Fit"):
        tensorfact.results.io.save("not a fit", "x.nc")
    with pytest.raises(FileNotFoundError, match="No fit file"):
        tensorfact.load("/nonexistent/fit.nc")


def table_rows() -> list[tuple[str, str, str]]:
    """``(malformed input, exception type, message)`` for every case, as raised now."""
    rows = []
    for case in CASES:
        error = run_case(case)
        rows.append((case.problem, type(error).__name__, str(error)))
    return rows


def markdown_table(rows: list[tuple[str, str, str]] | None = None) -> str:
    """The cases as a Markdown table (``# | malformed input | exception | message``)."""
    lines = ["| # | malformed input | exception | message |", "|---|---|---|---|"]
    for k, (problem, kind, message) in enumerate(rows if rows is not None else table_rows(), 1):
        message = message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {k} | {problem} | {kind} | {message} |")
    return "\n".join(lines)


def test_the_closing_table_script_writes_the_cases_as_raised(tmp_path, capsys):
    """``experiments/validation_table.py`` writes one Markdown row and one JSON record per
    case, in order, each with the case's exception type and a message its pattern matches;
    the Markdown cells (``|`` escaped) give back the JSON messages, and the printed table is
    the file's."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "validation_table.py"
    loader = importlib.util.spec_from_file_location("validation_table", path)
    script = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(script)
    script.main(["--out", str(tmp_path)])
    printed = capsys.readouterr()
    records = json.loads((tmp_path / "validation_table.json").read_text())
    markdown = (tmp_path / "validation_table.md").read_text()
    assert printed.out == markdown and f"{len(CASES)} malformed inputs" in printed.err
    lines = markdown.rstrip("\n").splitlines()
    assert lines[:2] == ["| # | malformed input | exception | message |", "|---|---|---|---|"]
    assert len(records) == len(lines) - 2 == len(CASES)
    for k, (case, record, line) in enumerate(zip(CASES, records, lines[2:], strict=True), 1):
        assert record["input"] == case.problem and record["exception"] == case.error.__name__
        assert re.search(case.match, record["message"]), record
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert cells == [str(k), case.problem, case.error.__name__,
                         record["message"].replace("\n", " ")], line


if __name__ == "__main__":
    print(markdown_table())
