"""Command line: ``tensorfact demo`` and ``tensorfact fit``.

Errors (bad options, unreadable files, invalid data, failed fits) are reported as one line on
stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

DEMO_SIZES = {"region": 12, "product": 6, "year": 20}


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2), not usage + message."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


FIT_DESCRIPTION = """\
Fits the default additive model

    y[i,j,t] ~ Normal(mu + a[i] + b[j] + z[t] + A[i,t] + B[j,t] + C[i,j], sigma^2)

to a 3-dim variable of a netCDF file (NaN = missing cell; i, j, t are the variable's dims in
order, t the time dim); --noise, --family and --noise-time-by change the noise model (a
sigma per (i, j) series, Student-t observations, a scale that changes over time). Writes to
--out:

  fit.nc        the saved fit (reload with tensorfact.load)
  posterior.nc  posterior draws (chain, draw, <your dims>) in model coordinates
  summary.csv   mean, sd and 90% interval of every effect element and scale
  elbo.png      the SVI loss trace (-ELBO); for NUTS, that of the SVI run that starts it
                (none for --method exact, which runs no SVI)
  effect_z.png, effect_A.png, effect_B.png   temporal effects with 90% bands

Errors are reported as one line on stderr with exit code 2."""


def _parser() -> argparse.ArgumentParser:
    from tensorfact.methods.settings import DEFAULTS, METHODS  # the defaults of tensorfact.fit

    parser = _OneLineParser(
        prog="tensorfact",
        description="Bayesian additive models of 3-way arrays with decorrelating "
        "reparameterizations. Run 'tensorfact demo --help' or 'tensorfact fit --help' for "
        "the options of each command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,fit}")
    demo = commands.add_parser(
        "demo",
        help="simulate a small tensor, fit it with and without decorrelation, write an ELBO "
        "plot and a summary",
        description="Simulates a region x product x year tensor (10% of cells missing), fits "
        "it with SVI with and without decorrelation, and writes elbo.png, effect_A.png, "
        "summary.csv and comparison.txt to --out.",
    )
    demo.add_argument("--out", type=Path, default=Path("tensorfact-demo"), metavar="DIR",
                      help="output folder (default: ./tensorfact-demo)")
    demo.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                      help="random seed (default 0)")
    fit = commands.add_parser(
        "fit",
        help="fit a 3-dim variable of a netCDF file; write the fit, a summary and plots",
        description=FIT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("data", type=Path, metavar="DATA.nc",
                     help="netCDF file holding the 3-dim variable to fit")
    fit.add_argument("--var", metavar="NAME",
                     help="variable to fit (default: the file's only 3-dim variable)")
    fit.add_argument("--time", metavar="DIM", help="name of the time dim (default: the last dim)")
    fit.add_argument("--method", choices=METHODS, default=DEFAULTS.method,
                     help="svi: variational, fast (default); nuts: MCMC on the decorrelated "
                     "model, started from a short SVI run; exact: the effects integrated out "
                     "(Gaussian noise only), NUTS over the scales, exact draws of the effects")
    fit.add_argument("--noise", choices=("shared", "per-series"), default="shared",
                     help="one noise scale (default) or one per series of the two non-time "
                     "dims, with a hierarchical prior")
    fit.add_argument("--family", choices=("normal", "student-t"), default="normal",
                     help="observation noise: normal (default) or Student-t (heavy tails)")
    fit.add_argument("--df", type=float, default=None, metavar="DF",
                     help="Student-t degrees of freedom, fixed (default: learned; needs "
                     "--family student-t)")
    fit.add_argument("--noise-time-by", default=None, metavar="DIM",
                     help="the noise scale also changes over time, one random walk per entry "
                     "of this non-time dim (default: constant over time)")
    fit.add_argument("--no-decorrelate", nargs="*", metavar="EFFECT", default=None,
                     help="switch decorrelation off for these effects (mu a b z A B C); with "
                     "no names, for all of them. Put it after DATA.nc")
    fit.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                     help="SVI step limit; SVI stops earlier once the loss and the parameters "
                     f"have settled (default {DEFAULTS.num_steps}; with --method nuts, the steps "
                     f"of the SVI run that sets the decorrelation and starts NUTS, default "
                     f"{DEFAULTS.svi_steps_for_nuts})")
    fit.add_argument("--samples", type=_positive_int, default=DEFAULTS.num_samples,
                     metavar="N", help="NUTS: draws per chain after warmup (default "
                     f"{DEFAULTS.num_samples})")
    fit.add_argument("--warmup", type=_non_negative_int, default=DEFAULTS.num_warmup,
                     metavar="N", help="NUTS: warmup iterations per chain (default "
                     f"{DEFAULTS.num_warmup})")
    fit.add_argument("--chains", type=_positive_int, default=DEFAULTS.num_chains,
                     metavar="N", help="NUTS: number of chains, run one after another "
                     f"(default {DEFAULTS.num_chains})")
    fit.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                     help="random seed; the same seed gives the same result (default 0)")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    fit.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="output folder (created if missing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tensorfact`` command.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 2 on any error (reported as one line on stderr).
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already printed)
        return int(stop.code or 0)
    try:
        if args.command == "demo":
            run_demo(args.out, args.seed)
        else:
            run_fit(args)
    except KeyboardInterrupt:
        print("tensorfact: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI reports every failure as one line
        print(f"tensorfact: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if not text:
        return type(error).__name__
    if isinstance(error, (ValueError, TypeError, OSError, KeyError)):
        return text
    return f"{type(error).__name__}: {text}"


def run_demo(out: Path, seed: int) -> None:
    """The README's demo: decorrelation on vs off on a simulated tensor."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    import tensorfact

    coords = {
        "region": [f"region-{k:02d}" for k in range(DEMO_SIZES["region"])],
        "product": [f"product-{c}" for c in "ABCDEF"],
        "year": np.arange(2000, 2000 + DEMO_SIZES["year"]),
    }
    data, _ = tensorfact.simulate_additive(DEMO_SIZES, seed=seed, missing=0.1, coords=coords,
                                           name="sales")
    out.mkdir(parents=True, exist_ok=True)
    print(f"Simulated {data.name}: {dict(data.sizes)}, {int(data.isnull().sum())} cells missing")
    on = tensorfact.fit(data, seed=seed, progress_bar=True)
    off = tensorfact.fit(data, seed=seed, decorrelate=False, progress_bar=True)
    ax = tensorfact.plot_elbo([on, off], labels=["decorrelated", "plain mean-field"])
    ax.set_title("SVI loss: decorrelation on vs off")
    ax.figure.savefig(out / "elbo.png", dpi=130, bbox_inches="tight")
    ax = on.plot_effect("A")
    ax.figure.savefig(out / "effect_A.png", dpi=130, bbox_inches="tight")
    on.summary().to_csv(out / "summary.csv")
    lines = ["posterior sd: decorrelated vs plain mean-field (ratio = how much wider)"]
    for name in ("mu", "a", "b", "z", "A", "B", "C", "sigma"):
        sd_on = float(on.posterior[name].std(("chain", "draw")).mean())
        sd_off = float(off.posterior[name].std(("chain", "draw")).mean())
        lines.append(f"  {name:6s} {sd_on:9.4f} {sd_off:9.4f}   x{sd_on / sd_off:7.1f}")
    lines.append(
        f"SVI steps: {on.info['svi_steps']} (decorrelated), {off.info['svi_steps']} (plain); "
        f"wall seconds {on.info['seconds']:.0f} / {off.info['seconds']:.0f}"
    )
    text = "\n".join(lines)
    (out / "comparison.txt").write_text(text + "\n")
    print(text)
    print(f"Wrote {out / 'elbo.png'}, {out / 'effect_A.png'}, {out / 'summary.csv'} and "
          f"{out / 'comparison.txt'}")


def load_variable(path: Path, var: str | None) -> Any:
    """Reads the variable to fit from a netCDF file, with one-line errors.

    Args:
        path: the netCDF file.
        var: the variable's name, or ``None`` for the file's only 3-dim variable.

    Returns:
        The variable as an in-memory ``xarray.DataArray``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as netCDF, the variable is missing or ambiguous,
            or it is not 3-dim.
    """
    import xarray as xr

    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a netCDF file")
    try:
        dataset = xr.open_dataset(path)
    except Exception as error:  # noqa: BLE001 - any reader failure means a bad file
        raise ValueError(
            f"cannot read {path} as netCDF ({type(error).__name__}); is it a netCDF file?"
        ) from None
    with dataset:
        if var is None:
            candidates = [str(k) for k, v in dataset.data_vars.items() if v.ndim == 3]
            if len(candidates) != 1:
                found = ", ".join(f"{k} {tuple(v.dims)}" for k, v in dataset.data_vars.items())
                raise ValueError(
                    f"{path} has {len(candidates)} 3-dim variables (variables: "
                    f"{found or 'none'}); choose one with --var"
                )
            var = candidates[0]
        if var not in dataset.data_vars:
            raise ValueError(
                f"{path} has no variable {var!r}; it has {[str(k) for k in dataset.data_vars]}"
            )
        data = dataset[var]
        if data.ndim != 3:
            raise ValueError(
                f"variable {var!r} has {data.ndim} dims {tuple(data.dims)}; tensorfact fit "
                "needs a 3-dim variable"
            )
        try:
            return data.load()
        except Exception as error:  # noqa: BLE001 - a truncated or corrupt file
            raise ValueError(
                f"cannot read variable {var!r} from {path} ({type(error).__name__})"
            ) from None


def run_fit(args: argparse.Namespace) -> None:
    """``tensorfact fit``: netCDF in; saved fit, posterior, summary and plots out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import tensorfact

    data = load_variable(args.data, args.var)
    if args.no_decorrelate is None:
        decorrelate: bool | dict[str, bool] = True
    elif not args.no_decorrelate:
        decorrelate = False
    else:
        decorrelate = dict.fromkeys(args.no_decorrelate, False)
    steps = {}  # fit's defaults unless --steps
    if args.steps is not None:
        steps = {"svi_steps_for_nuts" if args.method == "nuts" else "num_steps": args.steps}
    noise = tensorfact.Noise(per_series=args.noise == "per-series",
                             family=args.family.replace("-", "_"), df=args.df,
                             time_by=args.noise_time_by)
    spec = None
    if noise != tensorfact.Noise():
        spec = dataclasses.replace(tensorfact.default_spec(data.dims, args.time), noise=noise)
    fit = tensorfact.fit(
        data, spec=spec, method=args.method, decorrelate=decorrelate, seed=args.seed,
        time=args.time, num_samples=args.samples, num_warmup=args.warmup, num_chains=args.chains,
        progress_bar=not args.quiet, **steps,
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    fit.save(out / "fit.nc")
    written = ["fit.nc"]
    fit.posterior.to_netcdf(out / "posterior.nc", engine="h5netcdf")
    fit.summary().to_csv(out / "summary.csv")
    written += ["posterior.nc", "summary.csv"]
    if fit.losses is not None and len(fit.losses):
        ax = fit.plot_elbo()
        ax.figure.savefig(out / "elbo.png", dpi=130, bbox_inches="tight")
        plt.close(ax.figure)
        written.append("elbo.png")
    for effect in fit.spec.effects:
        if isinstance(effect, tensorfact.Temporal) and effect.name in fit.posterior:
            ax = fit.plot_effect(effect.name)
            ax.figure.savefig(out / f"effect_{effect.name}.png", dpi=130, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(f"effect_{effect.name}.png")
    print(f"{fit.method.upper()} fit of {data.name or 'the data'} {dict(data.sizes)} in "
          f"{fit.info['seconds']:.0f} s; wrote {', '.join(written)} to {out}")


if __name__ == "__main__":
    sys.exit(main())
