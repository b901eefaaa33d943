"""Misuse of ``reparam.decorrelate`` gets a clear error naming the problem and the fix."""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

import reparam
from tests.test_reparam.models import panel_data, panel_model, ridge_model


def _run(model, *args):
    return handlers.trace(handlers.seed(model, 0)).get_trace(*args)


def test_parent_sampled_after_child():
    model = reparam.decorrelate(panel_model, {"a": ["A"]})
    with pytest.raises(ValueError, match=r"Parent\(s\) \['A'\] of 'a' have not been sampled"):
        _run(model, panel_data())


def test_parent_never_sampled():
    model = reparam.decorrelate(panel_model, {"a": ["nope"]})
    with pytest.raises(ValueError, match="nope"):
        _run(model, panel_data())


def test_unknown_child_in_config():
    model = reparam.decorrelate(panel_model, {"typo": ["mu"]})
    with pytest.raises(ValueError, match=r"names sites \['typo'\] that the model does not sample"):
        _run(model, panel_data())


def test_observed_child():
    model = reparam.decorrelate(panel_model, {"y": ["mu"]})
    with pytest.raises(ValueError, match="'y' is observed"):
        _run(model, panel_data())


def test_axes_that_cannot_be_mapped():
    def model():
        a = numpyro.sample("a", dist.Normal(0, 1).expand([3]).to_event(1))
        numpyro.sample("b", dist.Normal(0, 1).expand([4]).to_event(1))
        return a

    with pytest.raises(ValueError, match="axis '@-1' has length 3 in the parent and 4"):
        _run(reparam.decorrelate(model, {"b": ["a"]}))
    # naming the axes differently makes the parent enter through its mean: no error
    named = reparam.decorrelate(model, {"b": ["a"]}, dims={"a": ("i",), "b": ("j",)},
                                coefficients="params")
    assert _run(named)["b_shift_a"]["value"].shape == (4,)


def test_dims_of_wrong_length():
    model = reparam.decorrelate(panel_model, {"a": ["mu"]}, dims={"a": ("i", "t")})
    with pytest.raises(ValueError, match="dims for site 'a' name 2 axes"):
        _run(model, panel_data())


@pytest.mark.parametrize("entry", ["mu", 3, None])
def test_bad_config_entry(entry):
    if entry is None:
        with pytest.raises(TypeError, match="config must be"):
            reparam.decorrelate(panel_model, None)
        return
    with pytest.raises(TypeError, match="must be a list of parent site names"):
        _run(reparam.decorrelate(panel_model, {"a": entry}), panel_data())


def test_unknown_rotation_and_bad_band():
    with pytest.raises(ValueError, match="Unknown rotation 'fourier'"):
        reparam.decorrelate(panel_model, {"a": ["mu"]}, rotate={"i": "fourier"})
    with pytest.raises(ValueError, match="band must be a non-negative int"):
        reparam.decorrelate(panel_model, {"a": ["mu"]}, band=-1)


def test_indefinite_precision():
    with pytest.raises(ValueError, match="not positive definite"):
        reparam.optimal_factor(jnp.array([[1.0, 2.0], [2.0, 1.0]]))


def test_a_given_laplace_mode_of_an_involved_site_is_refused():
    """``initialize(mode=...)`` takes the mode of the sites not decorrelated only."""
    y = jnp.ones(5)
    local = reparam.LocalGaussian(reparam.decorrelate(ridge_model, {"a": ["mu"]}),
                                  {"mu": 0.0, "a": 0.0}, y)
    mode = reparam.LaplaceMode(point={"mu": np.float64(0.0), "a": np.float64(0.0)},
                               unconstrained_sd={"mu": np.float64(1.0)}, log_marginal=0.0,
                               iterations=0)
    with pytest.raises(ValueError, match=r"holds \['mu'\], which are involved"):
        reparam.initialize(local, {"mu": 0.0, "a": 0.0}, mode=mode)
