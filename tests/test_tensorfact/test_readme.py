"""Every Python snippet of the README runs, every documented ``tensorfact fit`` line parses
and writes its outputs, and the quick start stays two commands.

The Python blocks run in order in one namespace (a later block may use an earlier block's
names) inside a temporary folder. In the fast tests ``tensorfact.fit`` is the CLI tests'
stand-in (real signature and input checks, no training: every real fit compiles its model
anew); ``test_python_snippets_run_for_real`` (slow) runs them unchanged.
"""

import inspect
import re
import shlex
from pathlib import Path

import matplotlib
import numpy as np
import pytest

import tensorfact
from tensorfact import cli
from tests.test_tensorfact.test_cli import stand_in_fit

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _cli_lines() -> list[list[str]]:
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["tensorfact", "fit"]:
                lines.append(words[1:])
    return lines


def _section(title: str) -> str:
    """The text of the README section ``## {title}...`` up to the next section."""
    parts = README.read_text().split(f"\n## {title}", 1)
    assert len(parts) == 2, f"README has no section '## {title}'"
    return parts[1].split("\n## ", 1)[0]


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_quick_start_commands_and_the_demo_outputs_it_names(tmp_path, monkeypatch):
    """The quick start is two commands; the first runs the demo, which simulates the
    region x product x year tensor with the stated share of missing cells, fits it with and
    without decorrelation and writes every file the paragraph names into the named folder
    (with the stand-in fit)."""
    section = _section("Quick start")
    quick = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["pip install . && tensorfact demo --out tensorfact-demo",
                        'pip install ".[dev]" && python -m pytest -q']
    demo = cli._parser().parse_args(commands[0].split("&& ")[1].split()[1:])
    assert (demo.command, str(demo.out)) == ("demo", "tensorfact-demo")
    prose = _flat(section.split("```", 2)[2])
    named = re.findall(r"`([\w-]+\.(?:png|csv|txt|nc))`", prose)
    assert {"elbo.png", "summary.csv"} <= set(named) and f"`{demo.out}/`" in prose
    share = int(re.search(r"with (\d+)% of cells missing", prose).group(1))
    assert "with and without decorrelation" in prose and "region × product × year" in prose
    calls = []

    def fit(data, **kwargs):
        calls.append((data, kwargs.get("decorrelate", True)))
        return stand_in_fit(data, **kwargs)

    monkeypatch.setattr(tensorfact, "fit", fit)
    monkeypatch.chdir(tmp_path)
    assert cli.main([demo.command, "--out", str(demo.out)]) == 0
    assert [switch for _, switch in calls] == [True, False]
    data = calls[0][0]
    assert data.dims == ("region", "product", "year")
    assert abs(float(np.isnan(data.values).mean()) - share / 100) < 0.02
    for name in named:
        assert (tmp_path / demo.out / name).exists(), name


def test_model_section_is_the_default_model():
    """The equation's terms are the default spec's effects over the stated dims; each stated
    prior is the model's (log densities against SciPy at the traced values); missing cells do
    not enter the likelihood; the lists of priors, temporal kinds and noise families are the
    code's."""
    from numpyro import handlers
    from scipy import stats

    from tensorfact.spec import NOISE_FAMILIES, SCALE_PRIORS, TEMPORAL_KINDS

    section = _section("The model")
    prose = _flat(section)
    equation = re.search(r"y\[i,j,t\] ~ Normal\((.*), sigma\^2\)", section).group(1)
    terms = dict(re.findall(r"(\w+)(?:\[([\w,]*)\])?", equation.replace(" ", "")))
    spec = tensorfact.default_spec(("i", "j", "t"))
    assert list(terms) == list(spec.effect_names)
    for effect in spec.effects:
        assert tuple(filter(None, terms[effect.name].split(","))) == spec.effect_dims(effect)

    for claim in ("`mu` is the grand mean (`Normal(0, 100)`)",
                  "`a, b, C` are shrinkage effects (`Normal(0, s)`, `s ~ HalfCauchy(1)`)",
                  "`z` and each row of `A` and `B` are random walks (`x_0 ~ N(0, s)`, "
                  "increments `N(0, s)`, `s ~ HalfNormal(1)`); `sigma ~ HalfNormal(1)`",
                  "Missing cells (NaN) are left out of the likelihood"):
        assert claim in prose, claim
    sizes = {"i": 3, "j": 2, "t": 4}
    model = tensorfact.TensorModel(spec, sizes)
    y = np.random.default_rng(0).normal(size=(3, 2, 4))
    mask = np.ones(y.shape, bool)
    mask[0, 1, 2] = False
    traces = []
    for filler in (0.0, 1e3):  # any value in the missing cell: the same likelihood
        y[0, 1, 2] = filler
        traces.append(handlers.trace(handlers.seed(model, 0)).get_trace(y, mask))
    trace = traces[0]

    def log_density(name):
        return float(trace[name]["fn"].log_prob(trace[name]["value"]).sum())

    def value(name):
        return np.asarray(trace[name]["value"], np.float64)

    np.testing.assert_allclose(log_density("mu"), stats.norm(0, 100).logpdf(value("mu")),
                               rtol=1e-5)
    for name in ("a", "b", "C"):
        scale = value(f"s_{name}")
        np.testing.assert_allclose(log_density(f"s_{name}"),
                                   stats.halfcauchy(scale=1).logpdf(scale), rtol=1e-5)
        np.testing.assert_allclose(log_density(name),
                                   stats.norm(0, scale).logpdf(value(name)).sum(), rtol=1e-5)
    for name in ("z", "A", "B", "sigma"):
        site = "sigma" if name == "sigma" else f"s_{name}"
        np.testing.assert_allclose(log_density(site),
                                   stats.halfnorm(scale=1).logpdf(value(site)), rtol=1e-5)
    for name in ("z", "A", "B"):  # x_0 ~ N(0, s), then increments N(0, s) along time
        path = value(name)
        steps = np.diff(path, axis=-1, prepend=0.0)
        expected = stats.norm(0, value(f"s_{name}")).logpdf(steps).sum()
        np.testing.assert_allclose(log_density(name), expected, rtol=1e-5)
    assert float(traces[0]["y"]["fn"].log_prob(traces[0]["y"]["value"])) == float(
        traces[1]["y"]["fn"].log_prob(traces[1]["y"]["value"]))

    words = {"Shrinkage": ({"half-normal": "half_normal", "half-Cauchy": "half_cauchy",
                            "horseshoe": "horseshoe"}, SCALE_PRIORS),
             "Temporal": ({"random walk": "random_walk", "local linear trend":
                           "local_linear_trend", "AR(1)": "ar1"}, TEMPORAL_KINDS),
             "Noise": ({"Normal": "normal", "Student-t": "student_t"}, NOISE_FAMILIES)}
    for effect, (named, options) in words.items():
        assert f"`{effect}`" in prose
        assert all(word in prose for word in named), effect
        assert set(named.values()) == set(options), effect
    assert "`Noise(time_by=...)`" in prose and "time_by" in vars(tensorfact.Noise())


def _resolve(dotted: str) -> object:
    """The object a dotted ``tensorfact.``/``reparam.`` name refers to (imports submodules)."""
    import importlib

    parts = dotted.split(".")
    target = importlib.import_module(parts[0])
    for k, part in enumerate(parts[1:], 2):
        if not hasattr(target, part):
            importlib.import_module(".".join(parts[:k]))
        target = getattr(target, part)
    return target


def test_names_the_readme_uses_exist():
    """Every ``tensorfact.``/``reparam.`` name resolves, every ``fit.`` attribute is one of a
    Fit's, every keyword of a ``tensorfact.fit(...)`` call is a parameter of the real
    ``tensorfact.fit`` (``method=`` one of its methods), every ``experiments/`` script exists,
    and the scan strategies and built-in scan priors named exist."""
    from typing import get_args

    from reparam.scan.strategies import SHORTCUTS
    from tensorfact.methods.settings import Method

    text = README.read_text()
    for dotted in set(re.findall(r"\b((?:tensorfact|reparam)(?:\.\w+)+)", text)):
        assert _resolve(dotted) is not None, dotted  # AttributeError if it does not exist
    fields = set(tensorfact.Fit.__dataclass_fields__)
    attributes = set(re.findall(r"(?<![\w.])fit\.(\w+)", text)) - {"nc"}  # fit.nc: a file
    assert {"summary", "predict", "posterior"} <= attributes
    for name in attributes:
        assert name in fields or hasattr(tensorfact.Fit, name), name
    parameters = inspect.signature(tensorfact.fit).parameters
    calls = re.findall(r"tensorfact\.fit\(((?:[^()]|\([^()]*\))*)\)", text)
    assert len(calls) >= 4
    for call in calls:
        for keyword in re.findall(r"(\w+)=", call):
            assert keyword in parameters, keyword
        for method in re.findall(r"method=\"(\w+)\"", call):
            assert method in get_args(Method), method
    for path in set(re.findall(r"experiments/\w+\.py", text)):
        assert (README.parent / path).exists(), path
    custom = _flat(_section("Custom temporal effects"))
    for strategy in re.findall(r'`"(\w+)"`', custom):
        assert strategy in SHORTCUTS, strategy
    for prior in re.findall(r"`(?:tensorfact\.model\.temporal\.)?(\w+)\(\)`", custom):
        assert callable(getattr(tensorfact.model.temporal, prior)), prior
    real = _section("Real data")
    script = (README.parent / "experiments" / "us_diseases.py").read_text()
    for option in set(re.findall(r"(--[\w-]+)", real)):
        assert f'"{option}"' in script, option


def test_workflow_and_decorrelation_sections_match_the_code():
    """The workflow snippet stays within 10 lines; the posterior dims stated for ``A`` are
    the default spec's; the decorrelation example config is the model's own; the rotation and
    the option named exist; the ELBO plot is what the README describes (a log step axis,
    ``-ELBO`` in nats, a faint raw trace under a bold trailing mean)."""
    workflow = _section("Workflow")
    snippet = workflow.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) <= 10
    dims, effect = re.search(r"\(`chain, draw, ([\w, ]+)` for `(\w+)`\)", workflow).groups()
    spec = tensorfact.default_spec(("region", "product", "year"))
    assert spec.effect_dims(spec.effect(effect)) == tuple(dims.split(", "))

    import reparam

    decorrelation = _flat(_section("The decorrelation"))
    example = re.search(r'reparam\.decorrelate\(model, \{"(\w+)": \["(\w+)"\]', decorrelation)
    child, parent = example.groups()
    config = tensorfact.TensorModel(spec, {"region": 3, "product": 2, "year": 4})
    assert config.decorrelation_config()[child] == [parent]
    assert "(Helmert)" in decorrelation and hasattr(reparam, "Helmert")
    assert "`coefficient_refreshes`" in decorrelation
    assert "coefficient_refreshes" in inspect.signature(tensorfact.fit).parameters

    elbo = _flat(_section("How to read the ELBO plot"))
    for claim in ("`-ELBO` in nats", "on a log axis", "faint lines are the raw per-step losses",
                  "bold lines their trailing means"):
        assert claim in elbo, claim
    matplotlib.use("Agg")
    data, _ = tensorfact.simulate_additive({"region": 3, "product": 2, "year": 4}, seed=0)
    ax = tensorfact.plot_elbo([stand_in_fit(data)])
    raw, mean = ax.get_lines()
    assert ax.get_xscale() == "log" and "-ELBO" in ax.get_ylabel() and "nats" in ax.get_ylabel()
    assert len(raw.get_xdata()) == 300 and raw.get_alpha() < 1 and mean.get_alpha() is None
    assert mean.get_linewidth() > raw.get_linewidth()
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def _run_python_blocks(folder) -> dict:
    matplotlib.use("Agg")
    blocks = _blocks("python")
    assert blocks
    namespace: dict = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["fit"], tensorfact.Fit)
    assert (folder / "sales.nc").exists()  # written by the command-line section
    return namespace


def test_python_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def fit(*args, **kwargs):
        calls.append(kwargs)
        return stand_in_fit(*args, **kwargs)

    monkeypatch.setattr(tensorfact, "fit", fit)
    namespace = _run_python_blocks(tmp_path)
    assert [c.get("decorrelate", True) for c in calls] == [True, False, True]
    assert namespace["custom"].spec.effect("A").transition is namespace["damped_walk"]
    assert namespace["fit"].predict().dims == namespace["data"].dims


@pytest.mark.slow
def test_python_snippets_run_for_real(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = _run_python_blocks(tmp_path)
    assert namespace["fit"].info["svi_steps"] > 0


@pytest.mark.parametrize("argv", _cli_lines(), ids=" ".join)
def test_cli_lines_run(argv, small_data, tmp_path, monkeypatch, capsys):
    """Each documented command parses and writes the outputs the section names (and one plot
    per temporal effect), with the stand-in fit; ``elbo.png`` exactly when the method trains
    SVI (``svi``, and ``nuts`` for its coefficients), not for ``--method exact``."""
    assert len(_cli_lines()) >= 3
    monkeypatch.chdir(tmp_path)
    small_data[0].rename("y").to_netcdf("sales.nc", engine="h5netcdf")
    monkeypatch.setattr(tensorfact, "fit", stand_in_fit)
    assert cli.main([*argv, "--quiet"]) == 0
    written = capsys.readouterr().out
    args = cli._parser().parse_args(argv)
    out = tmp_path / args.out
    intro = _flat(_section("Command line").split("```", 1)[0])
    named = re.findall(r"`([\w-]+\.(?:nc|csv|png))`", intro)
    assert named == ["fit.nc", "posterior.nc", "summary.csv", "elbo.png"]
    assert "one plot per temporal effect" in intro
    trains_svi = args.method in ("svi", "nuts")
    for name in named:
        expected = trains_svi if name == "elbo.png" else True
        assert (out / name).exists() == expected, name
        assert (name in written) == expected, name
    for effect in tensorfact.default_spec(small_data[0].dims).effects:
        if isinstance(effect, tensorfact.Temporal):
            assert (out / f"effect_{effect.name}.png").exists(), effect.name


def test_cli_section_names_every_option():
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    parser = cli._parser()._subparsers._group_actions[0].choices["fit"]
    for action in parser._actions:
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert f"`{option}`" in section, option
