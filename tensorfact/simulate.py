"""Simulated data from the default additive model (benchmarks, demo, tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

B2_SIZES = {"i": 20, "j": 10, "t": 30}
B2_TRUTH = {
    "mu": 2.0, "s_a": 1.0, "s_b": 1.0, "s_C": 1.0,
    "s_z": 0.2, "s_A": 0.2, "s_B": 0.2, "sigma": 0.1,
}


def simulate_additive(
    sizes: Mapping[str, int],
    *,
    seed: int,
    truth: Mapping[str, float] | None = None,
    missing: float = 0.0,
    coords: Mapping[str, Sequence] | None = None,
    name: str = "y",
) -> tuple[xr.DataArray, dict[str, np.ndarray]]:
    """Draws ``y = mu + a[i] + b[j] + z[t] + A[i,t] + B[j,t] + C[i,j] + N(0, sigma)``.

    ``a, b, C`` are iid ``Normal(0, s_*)``; ``z`` and each row of ``A`` and ``B`` are random
    walks with ``x_0 ~ N(0, s)`` and increments ``N(0, s)``.

    Args:
        sizes: three dim names -> lengths, in order ``(i, j, t)``; the last is time.
        seed: random seed.
        truth: ``mu``, the scales and ``sigma`` (default: benchmark B2's values).
        missing: fraction of cells set to NaN, chosen at random.
        coords: optional coordinates per dim (default: integer ranges).
        name: the DataArray's name.

    Returns:
        The data and the true effects (keyed ``mu, a, b, z, A, B, C``).
    """
    truth = {**B2_TRUTH, **(truth or {})}
    (di, ni), (dj, nj), (dt, nt) = sizes.items()
    rng = np.random.default_rng(seed)
    effects = {
        "mu": np.asarray(truth["mu"]),
        "a": rng.normal(0, truth["s_a"], ni),
        "b": rng.normal(0, truth["s_b"], nj),
        "C": rng.normal(0, truth["s_C"], (ni, nj)),
        "z": np.cumsum(rng.normal(0, truth["s_z"], nt)),
        "A": np.cumsum(rng.normal(0, truth["s_A"], (ni, nt)), axis=1),
        "B": np.cumsum(rng.normal(0, truth["s_B"], (nj, nt)), axis=1),
    }
    loc = (
        effects["mu"]
        + effects["a"][:, None, None]
        + effects["b"][None, :, None]
        + effects["z"][None, None, :]
        + effects["A"][:, None, :]
        + effects["B"][None, :, :]
        + effects["C"][:, :, None]
    )
    values = loc + rng.normal(0, truth["sigma"], loc.shape)
    if missing > 0:
        values[rng.random(values.shape) < missing] = np.nan
    coords = dict(coords or {})
    for dim, n in sizes.items():
        coords.setdefault(dim, np.arange(n))
    data = xr.DataArray(values, dims=(di, dj, dt), coords=coords, name=name)
    return data, effects
