"""The API end-to-end check on the small labelled tensor, decorrelation on vs off.

The same 8 x 5 x 12 DataArray (string coords, 10% missing cells, seed 3) as the API tests: fit
with ``tensorfact.fit`` (defaults) with and without decorrelation and compare, per effect, to
the truth and to the exact reference (Gaussian conditional posterior mixed over the scale
hyperparameters by importance sampling, ``tensorfact.testing.reference``). Writes
``DIR/results.json``, ``DIR/table.txt`` and ``DIR/elbo.png``::

    python experiments/api_small.py --out results/api_small
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import tensorfact
from tensorfact.model.tensor import TensorModel
from tensorfact.testing.reference import importance_reference

sys.path.insert(0, str(Path(__file__).parent))
from common import format_table, write_json  # noqa: E402

SIZES = {"region": 8, "product": 5, "year": 12}
COORDS = {
    "region": [f"r{k}" for k in range(8)],
    "product": ["apples", "beans", "corn", "dates", "eggs"],
    "year": np.arange(2000, 2012),
}
EFFECTS = ("mu", "a", "b", "z", "A", "B", "C")


def _row(label: str, fit: tensorfact.Fit, truth: dict, reference, seconds: float) -> dict:
    ratios, covered = [], []
    for name in EFFECTS:
        draws = fit.posterior[name]
        mean, sd = draws.mean(("chain", "draw")).values, draws.std(("chain", "draw")).values
        covered.append(np.ravel(np.abs(mean - truth[name]) <= 3 * sd))
        ratios.append(np.ravel(sd / reference.sd[name]))
    ratio = np.concatenate(ratios)
    return {
        "fit": label,
        "truth_within_3sd": float(np.mean(np.concatenate(covered))),
        "sd_within_25pct": float(np.mean((ratio >= 0.75) & (ratio <= 1.25))),
        "sd_ratio_min": float(ratio.min()),
        "sd_ratio_mu": float(ratios[0][0]),
        "final_loss": float(np.mean(fit.losses[-200:])),
        "steps": len(fit.losses),
        "seconds": seconds,
    }


def run(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    data, truth = tensorfact.simulate_additive(SIZES, seed=3, missing=0.1, coords=COORDS,
                                               name="sales")
    model = TensorModel(tensorfact.default_spec(data.dims), data.sizes)
    reference = importance_reference(model, np.nan_to_num(data.values),
                                     np.isfinite(data.values), num_draws=300)
    rows, fits = [], []
    for label, toggle in (("decorrelated", True), ("plain mean-field", False)):
        start = time.perf_counter()
        fit = tensorfact.fit(data, seed=0, decorrelate=toggle)
        rows.append(_row(label, fit, truth, reference, time.perf_counter() - start))
        fits.append(fit)
    write_json(out / "results.json", {"reference_ess": reference.ess, "rows": rows})
    text = format_table(rows, list(rows[0]))
    (out / "table.txt").write_text(text + "\n")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    tensorfact.plot_elbo(fits, labels=[r["fit"] for r in rows], ax=ax)
    fig.savefig(out / "elbo.png", dpi=120, bbox_inches="tight")
    print(text)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    run(parser.parse_args().out)


if __name__ == "__main__":
    main()
