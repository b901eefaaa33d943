"""The Laplace start from the exact collapsed marginal (:func:`collapsed_mode`) is the dense
Laplace start's optimum (:func:`reparam.laplace_mode`, the oracle: same objective up to a
constant, docs/design.md section 2.1): same hyperparameters, same spreads. tensorfact's
Gaussian SVI fits use it (their start says so), others keep the dense one."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

import reparam
import tensorfact
from tensorfact import GrandMean, ModelSpec, Noise, Shrinkage, Temporal
from tensorfact.collapsed.mode import collapsed_mode
from tensorfact.data import as_tensor_data
from tensorfact.methods.svi import model_arguments
from tensorfact.model.tensor import TensorModel

SIZES = {"region": 5, "product": 3, "year": 7}
DIMS = tuple(SIZES)

SPECS = {
    "default": tensorfact.default_spec(DIMS),
    "per-series noise, AR(1), horseshoe": ModelSpec(
        dims=DIMS, time="year",
        effects=(GrandMean(), Shrinkage("a", ("region",), prior="horseshoe"),
                 Temporal("z", kind="ar1"), Temporal("A", by="region")),
        noise=Noise(per_series=True),
    ),
}


def _modes(spec: ModelSpec, missing: float):
    raw, _ = tensorfact.simulate_additive(SIZES, seed=4, missing=missing)
    data = as_tensor_data(raw)
    model = TensorModel(spec, data.sizes)
    point = model.initial_point(data.filled, data.mask)
    exact = collapsed_mode(model, data.filled, data.mask, point)
    decorrelated = model.decorrelated(True)
    local = reparam.LocalGaussian(decorrelated, point, *model_arguments(data))
    return exact, reparam.laplace_mode(local, point), local


@pytest.mark.parametrize("missing", [0.0, 0.15])
@pytest.mark.parametrize("name", list(SPECS))
def test_the_collapsed_mode_is_the_dense_laplace_mode(name, missing):
    """Hyperparameters and their (unconstrained) Laplace sds within 1e-4 relative of the
    dense optimum's (measured: 7e-6 and 4e-7 at worst), and the objectives differ by exactly
    ``d/2 log(2 pi)``, ``d`` the involved dims (measured to 1e-9)."""
    exact, dense, local = _modes(SPECS[name], missing)
    involved = {site.name for site in local.plan.sites}
    hyper = set(dense.unconstrained_sd)
    assert hyper == set(exact.unconstrained_sd) and not hyper & involved
    for site in hyper:
        np.testing.assert_allclose(exact.point[site], dense.point[site], rtol=1e-4, atol=1e-7,
                                   err_msg=site)
        np.testing.assert_allclose(exact.unconstrained_sd[site], dense.unconstrained_sd[site],
                                   rtol=1e-4, err_msg=site)
    constant = local.plan.dim / 2 * np.log(2 * np.pi)
    np.testing.assert_allclose(exact.log_marginal - dense.log_marginal, constant, rtol=1e-6)


def test_gaussian_fits_start_from_the_collapsed_mode_and_student_t_ones_do_not():
    raw, _ = tensorfact.simulate_additive(SIZES, seed=4, missing=0.1)
    student = ModelSpec(dims=DIMS, time="year", effects=(GrandMean(), Temporal("z")),
                        noise=Noise(family="student_t", df=4.0))
    gaussian = ModelSpec(dims=DIMS, time="year", effects=(GrandMean(), Temporal("z")))
    calls = []
    original = tensorfact.methods.svi.collapsed_mode

    def spy(*args, **kwargs):
        calls.append(args[0].spec.noise.family)
        return original(*args, **kwargs)

    with mock.patch("tensorfact.methods.svi.collapsed_mode", spy):
        for spec in (gaussian, student):
            tensorfact.fit(raw, spec, num_steps=20, num_draws=5, seed=0, svi_start="laplace")
    assert calls == ["normal"]
