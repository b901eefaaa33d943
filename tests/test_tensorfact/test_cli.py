"""The ``tensorfact`` command line: a real ``fit`` on a small netCDF file, option handling,
the demo, help, and one-line errors.

Only :func:`test_fit_command_end_to_end` trains (every ``tensorfact.fit`` call compiles its
model anew, tens of seconds); the other tests replace ``tensorfact.fit`` by
:func:`stand_in_fit`, a NumPy-only :class:`tensorfact.Fit` of the same data, after the same
input checks.
"""

from __future__ import annotations

import inspect
import subprocess
from typing import Any

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import tensorfact
from reparam.names import shift_param
from tensorfact import cli
from tensorfact.results.labels import posterior_dataset

PNG = b"\x89PNG"
REAL_FIT = tensorfact.fit
TEMPORAL_PLOTS = ("effect_z.png", "effect_A.png", "effect_B.png")


def stand_in_fit(data: Any, spec: Any = None, *args: Any, **kwargs: Any) -> tensorfact.Fit:
    """Replaces :func:`tensorfact.fit` without training: binds the call to the real signature
    (so a misspelt keyword fails), runs the real input checks, and returns a fit of ``data``
    whose draws scatter around the model's data-scaled starting point (no JAX).

    What the fit records follows the method as a real fit does: ``"svi"`` and ``"nuts"`` train
    SVI (a loss trace, ``info["svi_steps"]``, coefficients named like the real ones for the
    children actually decorrelated); ``"exact"`` runs no SVI (no loss trace, every switch off,
    no coefficients, the structured algebra in ``info``)."""
    call = inspect.signature(REAL_FIT).bind(data, spec, *args, **kwargs)
    call.apply_defaults()
    options = call.arguments
    tensor, spec, switched = tensorfact.check_inputs(
        data, spec, dims=options["dims"], time=options["time"],
        decorrelate=options["decorrelate"])
    model = tensorfact.TensorModel(spec, tensor.sizes)
    point = model.initial_point(tensor.filled, tensor.mask)
    locations = {site.name for site in model.location_sites}
    rng = np.random.default_rng(0)
    draws = {}
    for name, value in point.items():
        value = np.asarray(value, np.float64)
        noise = rng.standard_normal((1, 50, *value.shape))
        draws[name] = value + 0.1 * noise if name in locations else value * np.exp(0.1 * noise)
    posterior = posterior_dataset(draws, spec, tensor)
    if options["method"] == "exact":  # collapsed NUTS: no SVI, nothing decorrelated
        algebra = "kronecker" if bool(np.all(tensor.mask)) else "kalman"
        return tensorfact.Fit(
            method="exact", spec=spec, data=tensor, posterior=posterior,
            decorrelate=dict.fromkeys(spec.effect_names, False), losses=None,
            coefficients={}, seed=0, info={"seconds": 0.0, "algebra": algebra},
        )
    steps = 300
    losses = 1e3 / np.arange(1, steps + 1) + rng.normal(0, 1, steps)
    config = model.decorrelation_config(switched)
    coefficients = {shift_param(child, parent): np.zeros(())
                    for child, parents in config.items() for parent in parents}
    return tensorfact.Fit(
        method=options["method"], spec=spec, data=tensor, posterior=posterior,
        decorrelate=switched, losses=losses + (0.0 if config else 20.0),
        coefficients=coefficients, seed=0,
        info={"svi_steps": steps, "svi_stopped": "max_steps", "seconds": 0.0},
    )


@pytest.fixture(scope="module")
def data_file(small_data, tmp_path_factory):
    """The conftest's 8 x 5 x 12 tensor (10% missing) in a netCDF file, beside a 1-dim
    variable that ``fit`` must skip when choosing the variable."""
    data = small_data[0]
    path = tmp_path_factory.mktemp("cli") / "sales.nc"
    xr.Dataset({"sales": data, "weight": data["year"] * 1.0}).to_netcdf(path, engine="h5netcdf")
    return path


def _one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_fit_command_end_to_end(data_file, small_data, tmp_path, capsys):
    """A real SVI fit from the file: every output exists, parses and agrees with the data."""
    out = tmp_path / "out"
    code = cli.main(["fit", str(data_file), "--steps", "200", "--seed", "1", "--quiet",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "wrote fit.nc, posterior.nc, summary.csv, elbo.png" in capsys.readouterr().out
    data = small_data[0]
    with xr.open_dataset(out / "posterior.nc", engine="h5netcdf") as posterior:
        posterior = posterior.load()
    assert posterior["A"].dims == ("chain", "draw", "region", "year")
    assert posterior["C"].dims == ("chain", "draw", "region", "product")
    assert list(posterior["product"].values) == list(data["product"].values)
    assert np.all(np.isfinite(posterior["mu"].values))
    loaded = tensorfact.load(out / "fit.nc")
    assert loaded.info["svi_steps"] == 200 and len(loaded.losses) == 200
    assert all(loaded.decorrelate.values())
    xr.testing.assert_allclose(loaded.posterior["A"], posterior["A"])
    # the fit is of the file's data: its predictive mean tracks the observed cells
    predicted = loaded.predict()
    observed = np.isfinite(data.values)
    error = predicted.values[observed] - data.values[observed]
    assert np.sqrt(np.mean(error**2)) < 0.5 * float(data.std())
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert {"mean", "sd"} <= set(summary.columns)
    np.testing.assert_allclose(summary.loc["mu", "mean"], float(posterior["mu"].mean()),
                               atol=1e-3)
    assert "A[r0, 2000]" in summary.index and "sigma" in summary.index
    for name in ("elbo.png", *TEMPORAL_PLOTS):
        assert (out / name).read_bytes()[:4] == PNG, name
        assert matplotlib.image.imread(out / name).ndim == 3, name


def test_fit_command_passes_options(data_file, tmp_path, monkeypatch, capsys):
    """Options reach ``tensorfact.fit`` unchanged; ``--steps`` sets the SVI run that starts
    NUTS for ``--method nuts``."""
    seen: dict[str, Any] = {}

    def fake_fit(data, **kwargs):
        seen.clear()
        seen.update(kwargs, data=data)
        return stand_in_fit(data, **kwargs)

    monkeypatch.setattr(tensorfact, "fit", fake_fit)
    code = cli.main(["fit", str(data_file), "--var", "sales", "--method", "nuts",
                     "--no-decorrelate", "A", "C", "--steps", "77", "--seed", "5",
                     "--samples", "11", "--warmup", "7", "--chains", "2", "--time", "year",
                     "--quiet", "--out", str(tmp_path / "nuts")])
    assert code == 0, capsys.readouterr().err
    assert seen["decorrelate"] == {"A": False, "C": False}
    assert (seen["method"], seen["svi_steps_for_nuts"], seen["seed"], seen["time"]) == (
        "nuts", 77, 5, "year")
    assert "num_steps" not in seen
    assert (seen["num_samples"], seen["num_warmup"], seen["num_chains"]) == (11, 7, 2)
    assert seen["progress_bar"] is False and seen["data"].dims == ("region", "product", "year")
    assert seen["data"].name == "sales"
    for name in ("fit.nc", "posterior.nc", "summary.csv", "elbo.png", *TEMPORAL_PLOTS):
        assert (tmp_path / "nuts" / name).exists(), name

    assert cli.main(["fit", str(data_file), "--no-decorrelate", "--out", str(tmp_path)]) == 0
    assert seen["decorrelate"] is False and seen["method"] == "svi"
    assert "num_steps" not in seen and seen["progress_bar"] is True  # fit's own default
    effects = ("mu", "a", "b", "z", "A", "B", "C")
    assert tensorfact.load(tmp_path / "fit.nc").decorrelate == dict.fromkeys(effects, False)


def test_fit_command_noise_and_exact_options(data_file, tmp_path, monkeypatch, capsys):
    """``--noise``, ``--family``, ``--df`` and ``--noise-time-by`` build the default spec with
    that noise; without them ``tensorfact.fit`` gets no spec (its default); ``--method exact``
    reaches it and, without an SVI loss trace, writes everything but ``elbo.png``."""
    seen: dict[str, Any] = {}

    def fake_fit(data, spec=None, **kwargs):
        seen.clear()
        seen.update(kwargs, spec=spec)
        return stand_in_fit(data, spec, **kwargs)

    monkeypatch.setattr(tensorfact, "fit", fake_fit)
    code = cli.main(["fit", str(data_file), "--noise", "per-series", "--family", "student-t",
                     "--df", "5", "--noise-time-by", "product", "--quiet", "--out",
                     str(tmp_path / "t")])
    assert code == 0, capsys.readouterr().err
    expected = tensorfact.Noise(per_series=True, family="student_t", df=5.0, time_by="product")
    assert seen["spec"].noise == expected
    default = tensorfact.default_spec(("region", "product", "year"))
    assert seen["spec"].effects == default.effects
    assert tensorfact.load(tmp_path / "t" / "fit.nc").spec.noise == expected
    capsys.readouterr()
    assert cli.main(["fit", str(data_file), "--method", "exact", "--quiet", "--out",
                     str(tmp_path / "e")]) == 0
    assert seen["spec"] is None and seen["method"] == "exact"
    # an exact fit trains no SVI: no ELBO plot, the rest as for the other methods
    assert "elbo.png" not in capsys.readouterr().out
    assert not (tmp_path / "e" / "elbo.png").exists()
    for name in ("fit.nc", "posterior.nc", "summary.csv", *TEMPORAL_PLOTS):
        assert (tmp_path / "e" / name).exists(), name


def test_cli_defaults_are_the_api_defaults():
    defaults = inspect.signature(REAL_FIT).parameters
    help_text = cli._parser()._subparsers._group_actions[0].choices["fit"].format_help()
    assert f"default {defaults['num_steps'].default};" in " ".join(help_text.split())
    args = cli._parser().parse_args(["fit", "x.nc", "--out", "o"])
    for option, parameter in (("samples", "num_samples"), ("warmup", "num_warmup"),
                              ("chains", "num_chains"), ("seed", "seed")):
        assert getattr(args, option) == defaults[parameter].default, option


def test_demo_writes_its_outputs(tmp_path, monkeypatch, capsys):
    """The README's first command (with the stand-in fit: the real demo trains two models)."""
    calls = []

    def fake_fit(data, **kwargs):
        calls.append(kwargs.get("decorrelate", True))
        return stand_in_fit(data, **kwargs)

    monkeypatch.setattr(tensorfact, "fit", fake_fit)
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0
    assert calls == [True, False]
    for name in ("elbo.png", "effect_A.png"):
        assert (tmp_path / "demo" / name).read_bytes()[:4] == PNG
    summary = pd.read_csv(tmp_path / "demo" / "summary.csv", index_col=0)
    assert "mu" in summary.index
    comparison = (tmp_path / "demo" / "comparison.txt").read_text()
    assert comparison.startswith("posterior sd") and "sigma" in comparison
    assert "comparison.txt" in capsys.readouterr().out


@pytest.fixture(scope="module")
def bad_files(small_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    data = small_data[0]
    garbage = folder / "garbage.nc"
    garbage.write_bytes(b"this is not a netCDF file\n" * 10)
    flat = folder / "flat.nc"
    xr.Dataset({"sales2d": data.isel(year=0)}).to_netcdf(flat, engine="h5netcdf")
    two = folder / "two.nc"
    xr.Dataset({"x": data, "y": data + 1}).to_netcdf(two, engine="h5netcdf")
    good = folder / "good.nc"
    xr.Dataset({"sales": data}).to_netcdf(good, engine="h5netcdf")
    empty_row = folder / "empty_row.nc"
    xr.Dataset({"sales": data.where(data["region"] != "r3")}).to_netcdf(
        empty_row, engine="h5netcdf")
    return {"garbage": garbage, "flat": flat, "two": two, "good": good,
            "empty_row": empty_row, "missing": folder / "nope.nc", "folder": folder}


@pytest.mark.parametrize(
    ("case", "extra", "needle"),
    [
        ("garbage", [], "cannot read"),
        ("missing", [], "no such file"),
        ("folder", [], "folder"),
        ("flat", [], "0 3-dim variables"),
        ("flat", ["--var", "sales2d"], "needs a 3-dim variable"),
        ("two", [], "--var"),
        ("good", ["--var", "nope"], "no variable 'nope'"),
        ("good", ["--time", "week"], "week"),
        ("good", ["--no-decorrelate", "Q"], "unknown effects"),
        ("empty_row", [], "r3"),
        ("good", ["--steps", "0"], "positive integer"),
        ("good", ["--steps", "many"], "positive integer"),
        ("good", ["--method", "mcmc"], "invalid choice"),
        ("good", ["--seed", "-1"], "non-negative"),
        ("good", ["--df", "4"], "only used with family='student_t'"),
        ("good", ["--family", "student-t", "--df", "0"], "df must be > 0"),
        ("good", ["--noise-time-by", "year"], "must be one of the non-time dims"),
        ("good", ["--family", "cauchy"], "invalid choice"),
    ],
)
def test_errors_are_one_line(bad_files, tmp_path, capsys, monkeypatch, case, extra, needle):
    monkeypatch.setattr(tensorfact, "fit", stand_in_fit)  # a check that passed would train
    code = cli.main(["fit", str(bad_files[case]), *extra, "--quiet", "--out", str(tmp_path)])
    assert code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("tensorfact") and needle in line, line
    assert not (tmp_path / "fit.nc").exists()


def test_help_documents_every_option(capsys):
    assert cli.main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "demo" in top and "fit" in top
    assert cli.main(["demo", "--help"]) == 0
    demo_help = capsys.readouterr().out
    assert "--out" in demo_help and "(10% of cells missing)" in demo_help
    parser = cli._parser()
    fit_parser = parser._subparsers._group_actions[0].choices["fit"]
    options = {o for a in fit_parser._actions for o in a.option_strings} - {"-h", "--help"}
    assert options == {"--var", "--time", "--method", "--no-decorrelate", "--steps",
                       "--samples", "--warmup", "--chains", "--seed", "--quiet", "--out",
                       "--noise", "--family", "--df", "--noise-time-by"}
    assert all(a.help for a in fit_parser._actions)
    assert cli.main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (*options, "DATA.nc", "fit.nc", "summary.csv", "elbo.png"):
        assert option in text, option
    assert "90% interval" in text and "%%" not in text


def test_installed_entry_point_bad_file(bad_files, tmp_path):
    """The installed ``tensorfact`` executable: a bad file is one line on stderr and a
    non-zero exit code, no traceback (help and the other errors are checked in-process)."""
    done = subprocess.run(
        ["tensorfact", "fit", str(bad_files["garbage"]), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "cannot read" in _one_line_error(done.stderr)

