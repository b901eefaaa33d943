"""Effects of the options of ``method="exact"`` (collapsed NUTS), beyond shapes."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import tensorfact
from tensorfact.collapsed import sampler
from tensorfact.collapsed.kalman import CollapsedGaussian
from tensorfact.collapsed.kronecker import KroneckerGaussian
from tensorfact.collapsed.sampler import collapsed_gaussian
from tensorfact.model.tensor import TensorModel


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # a deliberately short run
def test_progress_bar_does_not_change_the_draws(capfd):
    """The progress bar is a display only: ``progress_bar=True`` prints a tqdm bar of the
    NUTS iterations (2 chains x 40, run one after the other on this Kronecker path) and
    gives bitwise the draws of ``progress_bar=False`` (which prints nothing), so the CLI's
    posteriors do not depend on ``--quiet``. (The bar once ran NumPyro's ``MCMC`` instead of
    the compiled-once chains, a different sampler and different draws.)"""
    data, _ = tensorfact.simulate_additive({"i": 4, "j": 3, "t": 6}, seed=1)
    settings = dict(method="exact", num_warmup=20, num_samples=20, num_chains=2, seed=0)
    capfd.readouterr()
    shown = tensorfact.fit(data, progress_bar=True, **settings)
    bar = capfd.readouterr().err
    hidden = tensorfact.fit(data, progress_bar=False, **settings)
    quiet = capfd.readouterr().err
    assert set(shown.posterior.data_vars) == set(hidden.posterior.data_vars)
    for name in shown.posterior.data_vars:
        assert np.array_equal(shown.posterior[name].values, hidden.posterior[name].values), name
    assert "sample" in bar and "100%" in bar and "80/80" in bar
    assert quiet == ""
    assert shown.info["algebra"] == hidden.info["algebra"] == "kronecker"  # complete data


HYPER = {"s_a": 0.7, "s_b": 1.3, "s_C": 0.9, "s_z": 0.3, "s_A": 0.25, "s_B": 0.15, "sigma": 0.2}


def _default_model(sizes, missing=0.0, seed=2):
    data, _ = tensorfact.simulate_additive(sizes, seed=seed, missing=missing)
    model = TensorModel(tensorfact.default_spec(data.dims), dict(data.sizes))
    return model, np.nan_to_num(data.values), np.isfinite(data.values)


def test_auto_algebra_choice_and_agreement(x64, monkeypatch):
    """``algebra="auto"`` takes the Kronecker path for complete data with one shared noise
    scale and the Kalman-shaped path with a missing cell, with a noise scale per series, or
    beyond ``KRONECKER_MAX_STEPS`` time steps; on complete data both paths give the same log
    marginal (1e-8 relative) at two hyperparameter points, so the choice only changes cost."""
    model, y, mask = _default_model({"i": 4, "j": 3, "t": 6})
    kron = collapsed_gaussian(model, y, mask, algebra="auto")
    assert type(kron) is KroneckerGaussian
    kalman = collapsed_gaussian(model, y, mask, algebra="kalman")
    assert type(kalman) is CollapsedGaussian
    for scale in (1.0, 0.3):
        hyper = {k: jnp.asarray(v * scale, jnp.float64) for k, v in HYPER.items()}
        np.testing.assert_allclose(float(kron.log_marginal(hyper)),
                                   float(kalman.log_marginal(hyper)), rtol=1e-8)
    holes = mask.copy()
    holes[1, 2, 3] = False
    assert type(collapsed_gaussian(model, y, holes, algebra="auto")) is CollapsedGaussian
    per_series = dataclasses.replace(model.spec, noise=tensorfact.Noise(per_series=True))
    assert type(collapsed_gaussian(TensorModel(per_series, model.sizes), y, mask)) \
        is CollapsedGaussian
    monkeypatch.setattr(sampler, "KRONECKER_MAX_STEPS", 5)  # 6 steps: now too long
    assert type(collapsed_gaussian(model, y, mask, algebra="auto")) is CollapsedGaussian


@pytest.mark.slow  # two exact fits (~50 s on 2 busy cores)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # deliberately short runs
def test_exact_fit_records_the_algebra_that_ran(monkeypatch):
    """``fit(method="exact").info["algebra"]`` names the path whose log marginal NUTS
    evaluated (counted by wrapping both paths): Kronecker for complete data, Kalman with
    missing cells."""
    calls = {"kronecker": 0, "kalman": 0}
    for name, cls in (("kronecker", KroneckerGaussian), ("kalman", CollapsedGaussian)):
        original = cls.log_marginal

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "log_marginal", counted)
    settings = dict(method="exact", num_warmup=10, num_samples=10, num_chains=1, seed=0)
    for missing, ran in ((0.0, "kronecker"), (0.2, "kalman")):
        data, _ = tensorfact.simulate_additive({"i": 3, "j": 2, "t": 5}, seed=4,
                                               missing=missing)
        calls.update(kronecker=0, kalman=0)
        fit = tensorfact.fit(data, **settings)
        assert fit.info["algebra"] == ran
        other = "kalman" if ran == "kronecker" else "kronecker"
        assert calls[ran] > 0 and calls[other] == 0, calls


def test_both_structured_gaussians_implement_the_sampler_interface():
    from tensorfact.collapsed import StructuredGaussian

    model, y, mask = _default_model({"i": 3, "j": 2, "t": 4})
    for gaussian in (KroneckerGaussian(model, y, mask), CollapsedGaussian(model, y, mask)):
        assert isinstance(gaussian, StructuredGaussian), type(gaussian).__name__
    assert not isinstance(object(), StructuredGaussian)
