"""A fit seeded with a JAX key records it (its predictive noise differs from other keys'), and
every name reparam creates is reserved (read from ``reparam.names``, the single source)."""

import jax
import numpy as np
import pytest

import reparam.names
import tensorfact
from tests.test_tensorfact import shared_fits


def _keyed_fit(key):
    return tensorfact.fit(shared_fits.data(), shared_fits.spec(), num_steps=50,
                          stop_at_plateau=False, num_draws=20, seed=key)


def test_fits_seeded_with_different_keys_have_different_predictive_noise():
    first, second = _keyed_fit(jax.random.PRNGKey(11)), _keyed_fit(jax.random.PRNGKey(12))
    assert first.seed is None and second.seed is None  # no made-up integer seed
    noise = [f.predictive_draws().values - f.linear_predictor().values for f in (first, second)]
    assert not np.allclose(noise[0], noise[1])
    again = _keyed_fit(jax.random.PRNGKey(11))  # same key, same everything
    np.testing.assert_array_equal(again.predict(quantiles=[0.1]).values,
                                  first.predict(quantiles=[0.1]).values)


def test_a_keyed_fit_round_trips_its_seed(tmp_path):
    fit = _keyed_fit(jax.random.PRNGKey(11))
    fit.save(tmp_path / "keyed.nc")
    loaded = tensorfact.load(tmp_path / "keyed.nc")
    assert loaded.seed is None and loaded._record.key == fit._record.key
    np.testing.assert_array_equal(loaded.predict(quantiles=[0.1]).values,
                                  fit.predict(quantiles=[0.1]).values)


@pytest.mark.parametrize("suffix", reparam.names.RESERVED_SUFFIXES)
def test_every_reparam_suffix_is_refused_as_an_effect_name(suffix):
    effect = tensorfact.Shrinkage(f"a{suffix}", ("region",))
    with pytest.raises(ValueError, match=suffix):
        tensorfact.ModelSpec(dims=("region", "product", "year"), time="year", effects=(effect,))


def test_scan_suffixes_are_reserved():
    # these two were missing from the hand-copied list before the single source existed
    assert {"_whitened", "_conditioned"} <= set(reparam.names.RESERVED_SUFFIXES)
    with pytest.raises(ValueError, match="_shift_"):
        tensorfact.ModelSpec(dims=("region", "product", "year"), time="year",
                             effects=(tensorfact.Shrinkage("a_shift_b", ("region",)),))
