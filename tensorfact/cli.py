"""Command line: ``tensorfact demo`` and ``tensorfact fit``.

Errors are reported as one line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

DEMO_SIZES = {"region": 12, "product": 6, "year": 20}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorfact",
        description="Bayesian additive models of 3-way arrays with decorrelating "
        "reparameterizations.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="simulate a small tensor, fit it with and without decorrelation, write an ELBO "
        "plot and a summary",
        description="Simulates a region x product x year tensor (10%% of cells missing), fits "
        "it with SVI with and without decorrelation, and writes elbo.png, effect_A.png, "
        "summary.csv and comparison.txt to --out.",
    )
    demo.add_argument("--out", type=Path, default=Path("tensorfact-demo"),
                      help="output folder (default: ./tensorfact-demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit = commands.add_parser(
        "fit",
        help="fit a netCDF file",
        description="Fits the default additive model to a 3-dim variable of a netCDF file and "
        "writes the posterior (posterior.nc), summary.csv and plots to --out.",
    )
    fit.add_argument("data", type=Path, help="netCDF file holding a 3-dim variable")
    fit.add_argument("--var", help="variable name (default: the only 3-dim variable)")
    fit.add_argument("--time", help="name of the time dim (default: the last dim)")
    fit.add_argument("--method", choices=("svi", "nuts"), default="svi",
                     help="inference method (default svi)")
    fit.add_argument("--no-decorrelate", nargs="*", metavar="EFFECT", default=None,
                     help="switch decorrelation off for these effects (no names: for all)")
    fit.add_argument("--steps", type=int, default=5000, help="SVI step limit (default 5000)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--out", type=Path, required=True, help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tensorfact`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            run_demo(args.out, args.seed)
        else:
            run_fit(args)
    except (ValueError, TypeError, OSError, KeyError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"tensorfact: error: {message}", file=sys.stderr)
        return 2
    return 0


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


def run_fit(args: argparse.Namespace) -> None:
    """``tensorfact fit``: netCDF in, posterior, summary and plots out."""
    import matplotlib

    matplotlib.use("Agg")
    import xarray as xr

    import tensorfact

    if not args.data.exists():
        raise FileNotFoundError(f"no such file: {args.data}")
    try:
        dataset = xr.open_dataset(args.data)
    except Exception as error:  # noqa: BLE001 - any reader failure is a bad file
        raise ValueError(f"cannot read {args.data} as netCDF ({type(error).__name__})") from None
    with dataset:
        if args.var is None:
            candidates = [k for k, v in dataset.data_vars.items() if v.ndim == 3]
            if len(candidates) != 1:
                raise ValueError(
                    f"{args.data} has {len(candidates)} 3-dim variables {candidates}; "
                    "choose one with --var"
                )
            args.var = candidates[0]
        if args.var not in dataset:
            raise ValueError(f"{args.data} has no variable {args.var!r}")
        data = dataset[args.var].load()
    if args.no_decorrelate is None:
        decorrelate: bool | dict[str, bool] = True
    elif not args.no_decorrelate:
        decorrelate = False
    else:
        decorrelate = dict.fromkeys(args.no_decorrelate, False)
    fit = tensorfact.fit(data, method=args.method, decorrelate=decorrelate, seed=args.seed,
                         num_steps=args.steps, time=args.time, progress_bar=True)
    args.out.mkdir(parents=True, exist_ok=True)
    fit.posterior.to_netcdf(args.out / "posterior.nc", engine="h5netcdf")
    fit.summary().to_csv(args.out / "summary.csv")
    if fit.losses is not None:
        ax = fit.plot_elbo()
        ax.figure.savefig(args.out / "elbo.png", dpi=130, bbox_inches="tight")
    print(f"Wrote results to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
