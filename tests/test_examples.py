"""The exact reference of ``experiments/scan_state_space.py`` is the example's own model.

``experiments/state_space_reference.py`` integrates the state path out with a Kalman filter; the
example's SVI and NUTS sds are measured against NUTS on that marginal. Checked here: the filter
equals the dense Gaussian marginal, and the collapsed model's log density equals the example's
scan model under the Gaussian conditional reparameterization at ``u = 0`` (where, for this
linear-Gaussian body, ``log p(theta, u = 0, y) = log p(theta, y) - T/2 log 2 pi``).
"""

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import scan_state_space as example  # noqa: E402
import state_space_reference as reference  # noqa: E402

import reparam  # noqa: E402

POINTS = [(0.5, 0.9, 0.5, 0.3), (-0.4, 0.1, 1.2, 0.7), (0.95, 0.99, 0.2, 0.05)]


@pytest.fixture(scope="module")
def data():
    return np.asarray(example.simulate(20, seed=0))


def test_kalman_filter_equals_the_dense_gaussian(data):
    assert reference.filter_check(data) < 1e-8


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("point", POINTS)
def test_collapsed_model_is_the_scan_model_with_the_path_integrated_out(data, point):
    y = jnp.asarray(data, dtype=jnp.float64)
    phi, beta, q, r = point
    values = {"phi": phi, "beta_raw": (beta - phi) / (1 - phi), "q": q, "r": r}
    collapsed, _ = log_density(reference.collapsed_state_space, (y,), {}, values)
    conditional = reparam.scan_reparam(example.state_space, example.CONDITIONAL)
    whitened = {**values, "x_whitened": jnp.zeros(y.shape[0])}
    scan_model, _ = log_density(conditional, (y,), {}, whitened)
    constant = -0.5 * y.shape[0] * np.log(2 * np.pi)
    np.testing.assert_allclose(float(scan_model), float(collapsed) + constant, rtol=1e-10)
