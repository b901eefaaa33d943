"""Every Python snippet of the README runs, every documented ``tensorfact fit`` line parses
and writes its outputs, and the quick start stays two commands.

The Python blocks run in order in one namespace (a later block may use an earlier block's
names) inside a temporary folder. In the fast tests ``tensorfact.fit`` is the CLI tests'
stand-in (real signature and input checks, no training: every real fit compiles its model
anew); ``test_python_snippets_run_for_real`` (slow) runs them unchanged.
"""

import re
import shlex
from pathlib import Path

import matplotlib
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


def test_readme_has_the_documented_sections():
    text = README.read_text()
    for title in ("## Quick start", "## The model", "## Workflow", "## The decorrelation",
                  "## Command line", "## How to read the ELBO plot"):
        assert title in text, title
    quick = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["pip install . && tensorfact demo --out tensorfact-demo",
                        'pip install ".[dev]" && python -m pytest -q']
    demo = cli._parser().parse_args(commands[0].split("&& ")[1].split()[1:])
    assert (demo.command, str(demo.out)) == ("demo", "tensorfact-demo")
    workflow = text.split("## Workflow", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(workflow.strip().splitlines()) <= 10
    assert len(_cli_lines()) >= 3


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
def test_cli_lines_run(argv, small_data, tmp_path, monkeypatch):
    """Each documented command parses and writes its outputs (with the stand-in fit)."""
    monkeypatch.chdir(tmp_path)
    small_data[0].rename("y").to_netcdf("sales.nc", engine="h5netcdf")
    monkeypatch.setattr(tensorfact, "fit", stand_in_fit)
    assert cli.main([*argv, "--quiet"]) == 0
    out = tmp_path / argv[argv.index("--out") + 1]
    for name in ("fit.nc", "summary.csv", "posterior.nc", "elbo.png"):
        assert (out / name).exists(), name


def test_cli_section_names_every_option():
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    parser = cli._parser()._subparsers._group_actions[0].choices["fit"]
    for action in parser._actions:
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert f"`{option}`" in section, option
