"""The matrix-free start of plain fits: equal to the dense start where both run, and linear in
the data (no array over all location effects squared)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reparam
from reparam import start as start_module
from reparam.local.analysis import as_float64, check_dense_fits
from reparam.local.curvature import (
    colour_probes,
    hessian_diagonal,
    newton_matrix_free,
    newton_program,
)
from tensorfact.model.tensor import TensorModel
from tensorfact.simulate import simulate_additive
from tensorfact.spec import default_spec
from tests.cost import largest_intermediate


def _plain(sizes, seed=0, missing=0.1):
    data, _ = simulate_additive(sizes, seed=seed, missing=missing)
    y = np.nan_to_num(data.values).astype(np.float32)
    mask = np.isfinite(data.values)
    model = TensorModel(default_spec(data.dims), dict(zip(data.dims, data.shape, strict=True)))
    point = model.initial_point(y, mask)
    local = reparam.LocalGaussian(model.decorrelated(False), point, jnp.asarray(y),
                                  jnp.asarray(mask))
    return local, point


@pytest.fixture(scope="module")
def small():
    return _plain({"i": 6, "j": 4, "t": 10})


def _dense_model_precision(local, point):
    """The dense Hessian in model coordinates (the plan rotates every site)."""
    precision = local.precision(point)
    with jax.enable_x64(True):
        back = jax.vmap(lambda v: local.plan.rotate(v, inverse=True))
        return np.asarray(back(back(jnp.asarray(precision)).T).T)


def test_matrix_free_start_matches_the_dense_newton_step(small):
    """Coloured probes give the exact Hessian diagonal; CG lands on the dense Newton point
    (Gaussian likelihood: the exact conditional mode) within 1e-3 local sds."""
    local, point = small
    dense_point, _ = local.newton(point)
    precision = _dense_model_precision(local, dense_point)
    moved, sd = newton_matrix_free(local, point)
    exact_sd = local.plan.split(np.diag(precision) ** -0.5)
    for site in local.plan.sites:
        np.testing.assert_allclose(sd[site.name], exact_sd[site.name], rtol=1e-8)
    # error of the CG point in units of the exact local posterior sd
    posterior_sd = local.plan.split(np.sqrt(np.diag(np.linalg.inv(precision))))
    for site in local.plan.sites:
        error = (np.asarray(moved[site.name]) - dense_point[site.name]) / posterior_sd[site.name]
        assert np.max(np.abs(error)) < 1e-3, site.name


def test_one_colour_along_time_gets_a_random_walk_diagonal_wrong(small):
    """The probes' colouring matters: with one colour the random walks' neighbouring steps
    leak into their diagonal; with two it is exact."""
    local, point = small
    precision = _dense_model_precision(local, point)
    exact = local.plan.split(np.diag(precision))
    one, two = hessian_diagonal(local, point, period=1), hessian_diagonal(local, point, period=2)
    np.testing.assert_allclose(two["z"], exact["z"], rtol=1e-8)
    np.testing.assert_allclose(one["a"], exact["a"], rtol=1e-8)  # no time axis: one colour
    assert np.max(np.abs(one["z"] / exact["z"] - 1)) > 0.1
    assert colour_probes(local.plan, 2).shape[0] < 12  # a handful of products, any size


def test_plain_start_cost_is_linear_in_cells():
    """The traced start program's largest array grows like the data (8x cells: <= 8x), while
    the location dims grow 3.7x (145 -> 537) -- a matrix over them would grow 13.7x."""

    def largest(sizes):
        local, point = _plain(sizes)
        probes = jnp.asarray(colour_probes(local.plan))
        with jax.enable_x64(True):
            program = newton_program(local)
            return largest_intermediate(program, as_float64(point), probes), local.plan.dim

    (small_big, small_dim), (large_big, large_dim) = (largest({"i": 6, "j": 4, "t": 10}),
                                                       largest({"i": 12, "j": 8, "t": 20}))
    assert large_dim > 3.5 * small_dim
    assert large_big <= 8 * small_big
    assert large_big < large_dim**2 / 10


def test_initialize_switches_to_the_matrix_free_start_above_the_limit(small, monkeypatch):
    local, point = small
    dense = reparam.initialize(local, point, laplace=False, guide_names={})
    monkeypatch.setattr(start_module, "DENSE_LIMIT", 0)
    free = reparam.initialize(local, point, laplace=True, guide_names={})
    assert free.laplace is None and free.coefficients == {}
    for name, scale in dense.guide.scales.items():
        np.testing.assert_allclose(free.guide.scales[name], scale, rtol=1e-4)
        np.testing.assert_allclose(free.guide.values[name], dense.guide.values[name],
                                   rtol=0, atol=1e-3)  # values: order 1, sds ~0.1-0.4


def test_a_dense_start_that_cannot_fit_memory_is_refused():
    with pytest.raises(ValueError, match="decorrelate=False"):
        check_dense_fits(10**7)
    check_dense_fits(100)  # small: fine
