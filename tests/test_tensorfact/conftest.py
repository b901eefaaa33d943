"""Shared small fits (one compile per shape: every API test uses the README's 8 x 5 x 12)."""

import numpy as np
import pytest

import tensorfact

SIZES = {"region": 8, "product": 5, "year": 12}
COORDS = {
    "region": [f"r{k}" for k in range(8)],
    "product": ["apples", "beans", "corn", "dates", "eggs"],
    "year": np.arange(2000, 2012),
}


@pytest.fixture(scope="session")
def small_data():
    data, truth = tensorfact.simulate_additive(SIZES, seed=3, missing=0.1, coords=COORDS,
                                               name="sales")
    return data, truth


@pytest.fixture(scope="session")
def fit_on(small_data):
    return tensorfact.fit(small_data[0], seed=0)


@pytest.fixture(scope="session")
def fit_off(small_data):
    return tensorfact.fit(small_data[0], seed=0, decorrelate=False)
