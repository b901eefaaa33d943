"""The decorrelated start by Helmert blocks (``tensorfact.model.block_gaussian``): equal to the
dense start on complete data, an exact Newton step and near-exact coefficients with missing
cells, and no array over all location effects squared."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reparam
from reparam.local.analysis import as_float64
from reparam.local.blocks import HelmertBlocks
from tensorfact.model.block_gaussian import BlockGaussian, block_support
from tensorfact.model.tensor import TensorModel
from tensorfact.simulate import simulate_additive
from tensorfact.spec import Shrinkage, default_spec
from tests.cost import largest_intermediate


def _problem(sizes, missing, seed=1):
    data, _ = simulate_additive(sizes, seed=seed, missing=missing)
    y = np.nan_to_num(data.values).astype(np.float32)
    mask = np.isfinite(data.values)
    model = TensorModel(default_spec(data.dims), dict(zip(data.dims, data.shape, strict=True)))
    point = model.initial_point(y, mask)
    decorrelated = model.decorrelated(True)
    args = (jnp.asarray(y), jnp.asarray(mask))
    return model, decorrelated, point, args


@pytest.fixture(scope="module", params=[0.0, 0.2], ids=["complete", "20% missing"])
def starts(request):
    model, decorrelated, point, args = _problem({"i": 5, "j": 4, "t": 7}, request.param)
    dense = reparam.LocalGaussian(decorrelated, point, *args)
    block = BlockGaussian(decorrelated, model, point, *args)
    return (request.param, dense, block, point,
            reparam.initialize(dense, point, laplace=False),
            reparam.initialize(block, point, laplace=False))


def test_blocks_partition_the_rotated_coordinates(starts):
    _, dense, *_ = starts
    blocks = HelmertBlocks(dense.plan)
    flat = np.sort(np.concatenate([index.ravel() for index in blocks.index.values()]))
    np.testing.assert_array_equal(flat, np.arange(dense.plan.dim))
    assert blocks.counts == {(): 1, ("i",): 4, ("j",): 3, ("i", "j"): 12}
    assert blocks.sizes == {(): 4 + 3 * 7, ("i",): 2 + 7, ("j",): 2 + 7, ("i", "j"): 1}


def test_newton_step_is_the_exact_conditional_mode(starts):
    """CG on the exact Hessian-vector product, block-preconditioned, lands on the dense Newton
    point (the conditional mode: Gaussian likelihood) with or without missing cells."""
    _, _, _, _, dense, block = starts
    for name, value in dense.point.items():
        np.testing.assert_allclose(block.point[name], value, rtol=0, atol=2e-5)


def test_complete_data_start_equals_the_dense_start(starts):
    missing, _, _, _, dense, block = starts
    if missing:
        pytest.skip("exact on complete data only")
    for name, value in dense.coefficients.items():
        scale = max(np.max(np.abs(value)), 1e-3)
        np.testing.assert_allclose(block.coefficients[name], value, rtol=0, atol=1e-5 * scale)
    for name, value in dense.guide.scales.items():
        np.testing.assert_allclose(block.guide.scales[name], value, rtol=1e-5)
    for name, value in dense.guide.values.items():
        np.testing.assert_allclose(block.guide.values[name], value, rtol=0, atol=1e-5)


def test_missing_cells_cost_the_guide_almost_nothing(starts):
    """With 20% missing the block coefficients (observed weight per step, cross-block terms
    dropped) are approximate, but the best mean-field KL at them is within 0.05 nats of the
    exact factor's projection (measured 0.005 / 0.016 nats on B2 at 10% / 30% missing,
    ``experiments/ceiling_b2.py``), and the guide's start scales within 25%."""
    missing, dense_local, _, point, dense, block = starts
    if not missing:
        pytest.skip("approximation with missing cells")
    plan = dense_local.plan
    precision = dense_local.precision(point)
    with jax.enable_x64(True):
        back = jax.vmap(lambda v: plan.rotate(v, inverse=True))
        model_precision = np.asarray(back(back(jnp.asarray(precision)).T).T)
    linear = {f"{n}_{k}" for n, f in plan.families.items() for k in f.param_shapes()}
    exact = reparam.ceiling(plan, model_precision, steps=0)
    ours = reparam.ceiling(plan, model_precision, steps=0,
                           init={k: v for k, v in block.coefficients.items() if k in linear})
    assert 0 <= ours.kl - exact.kl < 0.05
    assert max(abs(np.asarray(block.coefficients[k]) - exact.coefficients[k]).max()
               for k in linear) > 1e-4  # an approximation, not the dense path in disguise
    for name, value in dense.guide.scales.items():
        assert np.max(np.abs(np.log(block.guide.scales[name] / value))) < np.log(1.25)


def test_block_start_is_refused_where_its_algebra_does_not_apply():
    model, decorrelated, point, args = _problem({"i": 3, "j": 2, "t": 4}, 0.0)
    assert block_support(model, decorrelated) is None
    assert "not decorrelated" in block_support(model, model.decorrelated({"A": False}))
    spec = default_spec(("i", "j", "t"))
    effects = tuple(Shrinkage(e.name, e.dims, prior="horseshoe")
                    if isinstance(e, Shrinkage) else e for e in spec.effects)
    horseshoe = TensorModel(spec.__class__(**{**spec.__dict__, "effects": effects}), model.sizes)
    assert "horseshoe" in block_support(horseshoe, horseshoe.decorrelated(True))
    with pytest.raises(ValueError, match="horseshoe"):
        BlockGaussian(horseshoe.decorrelated(True), horseshoe, point, *args)


def _largest_arrays(sizes):
    """Largest intermediate of each compiled program of the block start, and the dims."""
    model, decorrelated, point, args = _problem(sizes, 0.1)
    block = BlockGaussian(decorrelated, model, point, *args)
    start = reparam.initialize(block, point, laplace=False)
    precision = block.block_precision(point)
    arrays = block._arguments.arrays
    with jax.enable_x64(True):
        coefficients = as_float64({k: v for k, v in start.coefficients.items() if not k.endswith(
            ("_centering", "_scale_ref", "_decenter_at"))})
        inverses = {k: jnp.asarray(np.linalg.inv(p)) for k, p in precision.items()}
        targets = {k: jnp.asarray(block._target(k, p)) for k, p in precision.items()}
        sizes_of = {
            "block_newton": largest_intermediate(block._jitted["block_newton"], arrays,
                                                 as_float64(point), inverses),
            "block_project": largest_intermediate(block._jitted["block_project"], arrays,
                                                  targets),
            "block_maps": largest_intermediate(block._jitted["block_maps"], arrays,
                                               coefficients),
            "block_locate": largest_intermediate(block._jitted["block_locate"], arrays,
                                                 as_float64(point), coefficients),
        }
    return sizes_of, block.plan.dim


def test_block_start_cost_is_linear_in_cells():
    """Rows x4 and columns x4 (cells x16, location dims x5.8: 145 -> 835): every program's
    largest array grows <= 16x, like the data -- a matrix over the location effects would
    grow 33x; the only quadratic arrays are one block per type, ``(3 T + 4)^2`` at most,
    independent of the rows and columns."""
    small, small_dim = _largest_arrays({"i": 6, "j": 4, "t": 10})
    large, large_dim = _largest_arrays({"i": 24, "j": 16, "t": 10})
    assert large_dim > 5.5 * small_dim
    for name in small:
        assert large[name] <= 16 * small[name], name
        assert large[name] < large_dim**2 / 40, name
