"""Effects of the SVI start (``svi_start``), beyond the name recorded."""

from __future__ import annotations

import numpy as np
import pytest

import tensorfact
from tensorfact.model.tensor import TensorModel
from tensorfact.simulate import B2_TRUTH

SIZES = {"i": 4, "j": 3, "t": 6}
SETTINGS = {"seed": 0, "num_steps": 10, "stop_at_plateau": False, "num_draws": 5,
            "decorrelate": {"A": False}}
SCALES = ("s_a", "s_b", "s_z", "s_A", "s_B", "s_C", "sigma")


@pytest.mark.slow  # two fits of the default model (~2 x 60 s on 2 busy cores)
def test_laplace_start_moves_the_scales_to_their_mode_newton_keeps_the_data_scaled_ones():
    """``svi_start="newton"`` starts the scale hyperparameters at the model's data-scaled
    initial point and computes no Laplace mode; ``"laplace"`` records the mode and starts the
    scales there: ``sigma`` within 20% of the simulated truth (0.1), far closer than the
    Newton start (half the data sd, about 0.7). Both fits label their ELBO curve with the
    effects actually decorrelated (not ``mu``, not the switched-off ``A``)."""
    data, _ = tensorfact.simulate_additive(SIZES, seed=1)
    fits = {start: tensorfact.fit(data, svi_start=start, **SETTINGS)
            for start in ("laplace", "newton")}
    laplace, newton = fits["laplace"], fits["newton"]
    assert laplace.info["svi_start"] == "laplace" and newton.info["svi_start"] == "newton"
    assert laplace._svi.start.laplace is not None and newton._svi.start.laplace is None
    assert np.isfinite(laplace._svi.start.laplace.log_marginal)
    model = TensorModel(laplace.spec, laplace.data.sizes)
    initial = model.initial_point(laplace.data.filled, laplace.data.mask)
    for name in SCALES:  # Newton: the initial scales, untouched; Laplace: moved
        np.testing.assert_allclose(newton._svi.start.point[name], initial[name], rtol=1e-6)
        assert not np.allclose(laplace._svi.start.point[name], initial[name], rtol=1e-3), name
    truth = B2_TRUTH["sigma"]
    sigma = {start: float(fit._svi.start.point["sigma"]) for start, fit in fits.items()}
    assert abs(sigma["laplace"] - truth) < 0.2 * truth
    assert abs(sigma["laplace"] - truth) < 0.1 * abs(sigma["newton"] - truth), sigma
    for fit in fits.values():
        assert tensorfact.plot._default_label(fit) == "decorrelated: a, b, z, B, C"
