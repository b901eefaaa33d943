"""The default legend label of ``plot_elbo`` names the effects a fit actually decorrelated."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
import xarray as xr
from numpyro import handlers

import tensorfact
from tensorfact.model.tensor import TensorModel

DIMS = ("region", "product", "year")
SIZES = {"region": 4, "product": 3, "year": 6}
EFFECTS = ("mu", "a", "b", "z", "A", "B", "C")


@functools.cache
def _coefficient_names(switches: tuple[tuple[str, bool], ...]) -> tuple[str, ...]:
    """The ``numpyro.param`` names of the default model decorrelated with these switches:
    the names of the coefficients a fit of it records (traced once, no training)."""
    model = TensorModel(tensorfact.default_spec(DIMS), SIZES)
    shape = tuple(SIZES.values())
    trace = handlers.trace(handlers.seed(model.decorrelated(dict(switches)), 0)).get_trace(
        jnp.zeros(shape), jnp.ones(shape, bool))
    return tuple(name for name, site in trace.items() if site["type"] == "param")


def _fit(decorrelate: dict[str, bool]) -> tensorfact.Fit:
    """A fit of the default model with the coefficients its decorrelation creates."""
    switched = {name: decorrelate.get(name, True) for name in EFFECTS}
    data = tensorfact.as_tensor_data(np.zeros(tuple(SIZES.values())), dims=DIMS)
    coefficients = {name: np.zeros(()) for name in _coefficient_names(tuple(switched.items()))}
    return tensorfact.Fit(method="svi", spec=tensorfact.default_spec(DIMS), data=data,
                          posterior=xr.Dataset(), decorrelate=switched,
                          losses=np.linspace(10.0, 1.0, 50), coefficients=coefficients)


@pytest.mark.parametrize(
    ("decorrelate", "label"),
    [
        ({"A": False}, "decorrelated: a, b, z, B, C"),  # mu: never a decorrelated child
        ({}, "decorrelated"),
        (dict.fromkeys(EFFECTS, False), "plain (no decorrelation)"),
        # only mu switched on: nothing is decorrelated
        ({name: name == "mu" for name in EFFECTS}, "plain (no decorrelation)"),
        ({"mu": False, "a": False, "A": False}, "decorrelated: b, z, B, C"),
    ],
    ids=["A-off", "all-on", "all-off", "mu-only", "mu-a-A-off"],
)
def test_default_elbo_label_names_the_decorrelated_children(decorrelate, label):
    """The label lists the effects whose switch is on and that the model decorrelates (they
    have coefficients of their own), shown as the legend of ``plot_elbo``; the grand mean
    ``mu`` has no parents and is never listed, whatever its switch."""
    fit = _fit(decorrelate)
    assert tensorfact.plot.decorrelated_effects(fit) == [
        name for name in EFFECTS
        if name in TensorModel(fit.spec, SIZES).decorrelation_config(fit.decorrelate)]
    matplotlib.use("Agg")
    ax = tensorfact.plot_elbo([fit])
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [label]
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
