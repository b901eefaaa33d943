"""Student-t observation noise and the choice of SVI start (issue 6).

Oracles: the likelihood and the ``df`` prior against ``scipy.stats`` directly; the Gaussian
surrogate's scale against the Student-t Fisher information computed by numerical integration;
the start's effect read from the fit (Laplace result present or not).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from numpyro import handlers
from scipy import integrate, stats

import reparam
import tensorfact
import tensorfact.results.predictive
from tensorfact import GrandMean, ModelSpec, Noise, Shrinkage, Temporal
from tensorfact.methods.settings import LAPLACE_MAX_DIM, resolve_svi_start
from tensorfact.model.tensor import TensorModel, fisher_scale
from tensorfact.results.io import spec_from_dict, spec_to_dict

DIMS = ("i", "j", "t")
SIZES = {"i": 4, "j": 3, "t": 6}


def small_spec(noise: Noise) -> ModelSpec:
    return ModelSpec(dims=DIMS, time="t", noise=noise,
                     effects=(GrandMean(), Shrinkage("a", ("i",)), Temporal("z")))


def heavy_tailed_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``y = 1 + a[i] + z[t] + t_2 noise`` on 4 x 3 x 6 with two cells missing."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, 4)
    z = np.cumsum(rng.normal(0, 0.3, 6))
    y = 1 + a[:, None, None] + z[None, None, :] + 0.2 * rng.standard_t(2, (4, 3, 6))
    mask = np.ones(y.shape, bool)
    mask[0, 0, 0] = mask[3, 2, 5] = False
    return y, mask


# -- specification ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"family": "cauchy"}, ValueError, "unknown family"),
        ({"family": 3}, ValueError, "unknown family"),
        ({"df": 4.0}, ValueError, "only used with family='student_t'"),
        ({"family": "student_t", "df": 0.0}, ValueError, "df must be > 0"),
        ({"family": "student_t", "df": -2}, ValueError, "df must be > 0"),
        ({"family": "student_t", "df": float("inf")}, ValueError, "df must be finite"),
        ({"family": "student_t", "df": "4"}, TypeError, "df must be a real number"),
        ({"family": "student_t", "df": True}, TypeError, "df must be a real number"),
        ({"time_by": 3}, TypeError, "time_by must be a dim name"),
    ],
)
def test_noise_family_and_df_are_validated(kwargs, error, words):
    with pytest.raises(error, match=words):
        Noise(**kwargs)


def test_noise_defaults_and_learned_df_flag():
    assert Noise().family == "normal" and not Noise().learns_df
    assert Noise(family="student_t").learns_df
    fixed = Noise(family="student_t", df=np.float32(4))
    assert not fixed.learns_df and type(fixed.df) is float and fixed.df == 4.0


@pytest.mark.parametrize("by", ["t", "k"])
def test_time_by_must_be_a_non_time_dim(by):
    with pytest.raises(ValueError, match="time_by=.* must be one of the non-time dims"):
        small_spec(Noise(time_by=by))


def test_df_is_a_reserved_site_name():
    with pytest.raises(ValueError, match="reserved for the noise"):
        ModelSpec(dims=DIMS, time="t", effects=(GrandMean(), Shrinkage("df", ("i",))))


def test_student_t_spec_survives_save_format():
    for noise in (Noise(family="student_t"), Noise(per_series=True, family="student_t", df=3),
                  Noise(time_by="j")):
        spec = small_spec(noise)
        assert spec_from_dict(spec_to_dict(spec)) == spec


# -- log density -------------------------------------------------------------------------------
def _trace(model: TensorModel, y: np.ndarray, mask: np.ndarray, values: dict) -> dict:
    seeded = handlers.substitute(handlers.seed(model, 0), data=values)
    return handlers.trace(seeded).get_trace(y, mask)


@pytest.mark.parametrize("per_series", [False, True])
@pytest.mark.parametrize("df", [None, 3.0])
def test_student_t_likelihood_matches_scipy(per_series, df):
    y, mask = heavy_tailed_data()
    model = TensorModel(small_spec(Noise(per_series=per_series, family="student_t", df=df)),
                        SIZES)
    rng = np.random.default_rng(1)
    values = {"mu": 0.7, "a": rng.normal(size=4), "z": rng.normal(size=6), "sigma": 0.3,
              "s_a": 1.0, "s_z": 0.5}
    sigma = np.full((4, 3), 0.3)
    if per_series:
        values.update(s_sigma=0.4, log_sigma_series=rng.normal(np.log(0.3), 0.4, (4, 3)))
        sigma = np.exp(values["log_sigma_series"])
    if df is None:
        values["df"] = 2.5
    with jax.enable_x64():
        trace = _trace(model, y, mask, values)
        got = float(trace["y"]["fn"].log_prob(y))
        loc = values["mu"] + values["a"][:, None, None] + values["z"][None, None, :]
        expected = stats.t.logpdf(y, df or 2.5, loc, sigma[:, :, None])[mask].sum()
        assert got == pytest.approx(expected, rel=1e-10)
        if df is None:  # the learned df's Gamma(2, rate 0.1) prior
            prior = float(trace["df"]["fn"].log_prob(2.5))
            assert prior == pytest.approx(stats.gamma(a=2, scale=10).logpdf(2.5), rel=1e-10)
        else:
            assert "df" not in trace


@pytest.mark.parametrize("by", ["i", "j"])
def test_time_varying_noise_likelihood_matches_scipy(by):
    y, mask = heavy_tailed_data()
    model = TensorModel(small_spec(Noise(per_series=True, time_by=by)), SIZES)
    rng = np.random.default_rng(2)
    steps = rng.normal(size=(SIZES[by], 6))
    values = {"mu": 0.7, "a": rng.normal(size=4), "z": rng.normal(size=6), "sigma": 0.3,
              "s_a": 1.0, "s_z": 0.5, "s_sigma": 0.4, "s_sigma_time": 0.2,
              "log_sigma_series": rng.normal(np.log(0.3), 0.4, (4, 3)),
              "sigma_time_steps": steps}
    with jax.enable_x64():
        trace = _trace(model, y, mask, values)
        got = float(trace["y"]["fn"].log_prob(y))
        walk = 0.2 * np.cumsum(steps, axis=1)
        walk -= walk.mean(axis=1, keepdims=True)
        np.testing.assert_allclose(trace["log_sigma_time"]["value"], walk, rtol=1e-12)
        factor = np.exp(walk)[:, None, :] if by == "i" else np.exp(walk)[None, :, :]
        sigma = np.exp(values["log_sigma_series"])[:, :, None] * factor
        loc = values["mu"] + values["a"][:, None, None] + values["z"][None, None, :]
        assert got == pytest.approx(stats.norm.logpdf(y, loc, sigma)[mask].sum(), rel=1e-10)
        steps_prior = float(trace["sigma_time_steps"]["fn"].log_prob(steps))
        assert steps_prior == pytest.approx(stats.norm.logpdf(steps).sum(), rel=1e-10)
    assert model.noise_site_dims == {"sigma_series": ("i", "j"), "log_sigma_series": ("i", "j"),
                                     "log_sigma_time": (by, "t"), "sigma_time_steps": (by, "t")}


def test_normal_family_is_unchanged():
    y, mask = heavy_tailed_data()
    model = TensorModel(small_spec(Noise()), SIZES)
    values = {"mu": 0.7, "a": np.zeros(4), "z": np.zeros(6), "sigma": 0.3, "s_a": 1.0,
              "s_z": 0.5}
    with jax.enable_x64():
        got = float(_trace(model, y, mask, values)["y"]["fn"].log_prob(y))
    assert got == pytest.approx(stats.norm.logpdf(y, 0.7, 0.3)[mask].sum(), rel=1e-10)
    assert model.gaussian_surrogate() is model


@pytest.mark.parametrize("df", [1.0, 2.5, 7.0, 40.0])
def test_fisher_scale_matches_the_student_t_information(df):
    scale = 0.7
    # E[-d^2/dloc^2 log t(y | loc, scale, df)] at loc = 0, by numerical integration
    def curvature(r):
        return (df + 1) * (df * scale**2 - r**2) / (df * scale**2 + r**2) ** 2

    information, _ = integrate.quad(
        lambda r: curvature(r) * stats.t.pdf(r, df, 0, scale), -np.inf, np.inf
    )
    assert float(fisher_scale(scale, df)) == pytest.approx(information**-0.5, rel=1e-6)


def test_surrogate_has_the_same_sites_and_a_positive_definite_start():
    """The Student-t Hessian at the data-scaled start is indefinite (outliers have negative
    curvature); the Gaussian surrogate's is positive definite, so the Newton start works."""
    rng = np.random.default_rng(0)
    y = np.broadcast_to(rng.normal(0, 0.05, (4, 3, 1)), (4, 3, 6)).copy()
    y[:, 0, :] += 30.0  # one far level per series
    y[0, 1, 2] = -40.0
    mask = np.ones(y.shape, bool)
    model = TensorModel(small_spec(Noise(family="student_t", df=1.0)), SIZES)
    surrogate = model.gaussian_surrogate()
    point = model.initial_point(y, mask)
    point["sigma"] = np.asarray(0.05, np.float32)
    args = (y.astype(np.float32), mask)
    with jax.enable_x64():
        names = [n for n, s in _trace(model, y, mask, point).items() if s["type"] == "sample"]
        surrogate_names = [n for n, s in _trace(surrogate, y, mask, point).items()
                           if s["type"] == "sample"]
    assert names == surrogate_names
    true_precision = reparam.LocalGaussian(model.decorrelated(), point, *args).precision(point)
    assert np.linalg.eigvalsh(true_precision).min() < 0
    local = reparam.LocalGaussian(surrogate.decorrelated(), point, *args)
    assert np.linalg.eigvalsh(local.precision(point)).min() > 0
    start = reparam.initialize(local, point, laplace=False)
    assert all(np.all(np.isfinite(v)) for v in start.coefficients.values())


# -- fits --------------------------------------------------------------------------------------
SETTINGS = {"seed": 0, "num_steps": 300, "stop_at_plateau": False, "num_draws": 200}


@pytest.mark.slow
def test_fit_student_t_time_varying_decorrelated_from_the_newton_start():
    y, mask = heavy_tailed_data()
    data = np.where(mask, y, np.nan)
    spec = small_spec(Noise(per_series=True, family="student_t", time_by="i"))
    fit = tensorfact.fit(data, spec, dims=DIMS, svi_start="newton", **SETTINGS)
    assert fit.info["svi_start"] == "newton" and fit._svi.start.laplace is None
    assert set(fit.coefficients) and all(np.all(np.isfinite(v))
                                         for v in fit.coefficients.values())
    losses = fit.losses
    assert np.all(np.isfinite(losses)) and losses[-50:].mean() < losses[:50].mean()
    df = fit.posterior["df"].values
    assert df.shape == (1, 200) and np.all(df > 0)
    # the fitted location tracks the data's level, not pulled by the t_2 outliers
    assert abs(float(fit.posterior["mu"].mean()) - 1.0) < 1.0
    draws = fit._svi.draws(jax.random.PRNGKey(0), 20, ["log_sigma_time"])["log_sigma_time"]
    assert draws.shape == (20, 4, 6)
    np.testing.assert_allclose(draws.mean(-1), 0.0, atol=1e-5)  # centred over time


def test_fit_student_t_small_model_laplace_and_newton_starts():
    """Student-t (df fixed) and time-varying noise on ``mu + a[i]``; one compiled SVI step
    serves both starts (their cache key is the same). A learned df is fitted in the slow test
    above (its Laplace start with time-varying noise stops early at a NaN trial step)."""
    y, mask = heavy_tailed_data()
    spec = ModelSpec(dims=DIMS, time="t", effects=(GrandMean(), Shrinkage("a", ("i",))),
                     noise=Noise(family="student_t", df=4.0, time_by="i"))
    data = np.where(mask, y, np.nan)
    auto = tensorfact.fit(data, spec, dims=DIMS, **SETTINGS)
    newton = tensorfact.fit(data, spec, dims=DIMS, svi_start="newton", **SETTINGS)
    assert auto.info["svi_start"] == "laplace" and auto._svi.start.laplace is not None
    assert np.isfinite(auto._svi.start.laplace.log_marginal)
    assert newton.info["svi_start"] == "newton" and newton._svi.start.laplace is None
    for fit in (auto, newton):
        assert np.all(np.isfinite(fit.losses))
        assert fit.losses[-50:].mean() < fit.losses[:50].mean()
        assert "df" not in fit.posterior
        assert abs(float(fit.posterior["mu"].mean()) - 1.0) < 1.0
        draws = fit._svi.draws(jax.random.PRNGKey(0), 20, ["log_sigma_time"])
        np.testing.assert_allclose(draws["log_sigma_time"].mean(-1), 0.0, atol=1e-5)


def _location_dims(sizes: dict[str, int]) -> int:
    """Location dims of the default spec over ``(i, j, t)``, counted by hand:
    ``mu + a[i] + b[j] + z[t] + A[i,t] + B[j,t] + C[i,j]``."""
    i, j, t = sizes.values()
    return 1 + i + j + t + i * t + j * t + i * j


def test_svi_start_auto_follows_the_number_of_location_dims(monkeypatch):
    """``svi_start="auto"`` takes the Laplace start up to ``LAPLACE_MAX_DIM`` location dims
    and the Newton start above, and ``fit`` hands that choice to the trainer (``laplace=``,
    captured here instead of training); an explicit choice wins whatever the size; an unknown
    one is refused naming the choices. The limit is the one ``tensorfact.fit`` documents."""
    with pytest.raises(ValueError, match=r"Unknown svi_start 'dense'; use one of 'auto', "
                                         r"'laplace', 'newton'"):
        tensorfact.fit(np.zeros((4, 3, 6)), dims=DIMS, svi_start="dense")
    spec = tensorfact.default_spec(DIMS)
    small = TensorModel(spec, SIZES)
    dims = _location_dims(SIZES)  # 68
    assert sum(int(np.prod(small.shape_of(site.dims))) for site in small.location_sites) == dims
    passed: list[bool] = []

    class Trained(Exception):
        pass

    def trainer(*args, laplace, **kwargs):
        passed.append(laplace)
        raise Trained

    monkeypatch.setattr("tensorfact.methods.svi.fit_svi", trainer)
    data = np.random.default_rng(0).normal(size=tuple(SIZES.values()))
    for limit, expected in ((dims, "laplace"), (dims - 1, "newton")):
        monkeypatch.setattr("tensorfact.methods.settings.LAPLACE_MAX_DIM", limit)
        assert resolve_svi_start("auto", small) == expected
        for choice in ("auto", "laplace", "newton"):
            with pytest.raises(Trained):
                tensorfact.fit(data, dims=DIMS, svi_start=choice)
            assert passed.pop() == ((expected if choice == "auto" else choice) == "laplace")
    monkeypatch.undo()
    b4 = {"disease": 7, "state": 51, "year": 84}
    b2 = {"i": 20, "j": 10, "t": 30}
    assert (_location_dims(b4), _location_dims(b2)) == (5372, 1161)
    b4_model = TensorModel(tensorfact.default_spec(tuple(b4)), b4)
    assert resolve_svi_start("auto", b4_model) == "newton"
    assert resolve_svi_start("laplace", b4_model) == "laplace"
    assert resolve_svi_start("auto", TensorModel(spec, b2)) == "laplace"
    assert f"up to :data:`LAPLACE_MAX_DIM` ({LAPLACE_MAX_DIM:,})" in " ".join(
        tensorfact.fit.__doc__.split())


def test_dataclass_replace_keeps_validation():
    with pytest.raises(ValueError, match="only used with family='student_t'"):
        dataclasses.replace(Noise(family="student_t", df=3.0), family="normal")


# -- posterior predictive ----------------------------------------------------------------------
def synthetic_fit(noise: Noise, draws: int = 400, seed: int = 0) -> tensorfact.Fit:
    """A Fit over hand-made posterior draws (no training): the predictive's oracle is the
    generative equation of the noise applied to these exact values."""
    from tensorfact.data import as_tensor_data
    from tensorfact.results import Fit, posterior_dataset

    rng = np.random.default_rng(seed)
    spec = small_spec(noise)
    values = {"mu": rng.normal(size=(1, draws)), "a": rng.normal(size=(1, draws, 4)),
              "z": rng.normal(size=(1, draws, 6)), "sigma": rng.uniform(0.2, 1, (1, draws))}
    if noise.per_series:
        values["sigma_series"] = rng.uniform(0.2, 1, (1, draws, 4, 3))
    if noise.time_by is not None:
        values["log_sigma_time"] = rng.normal(0, 0.5, (1, draws, SIZES[noise.time_by], 6))
    if noise.learns_df:
        values["df"] = rng.uniform(2, 8, (1, draws))
    data = as_tensor_data(np.zeros((4, 3, 6)), dims=DIMS)
    return Fit(method="svi", spec=spec, data=data, decorrelate={},
               posterior=posterior_dataset(values, spec, data))


@pytest.mark.parametrize("by", ["i", "j"])
def test_noise_scale_is_series_scale_times_the_time_factor(by):
    fit = synthetic_fit(Noise(per_series=True, time_by=by))
    post = fit.posterior
    assert post["log_sigma_time"].dims == ("chain", "draw", by, "t")
    scale = tensorfact.results.predictive.noise_scale(fit)
    assert scale.dims == ("chain", "draw", "i", "j", "t")
    series = post["sigma_series"].values[:, :, :, :, None]
    time = np.exp(post["log_sigma_time"].values)
    time = time[:, :, :, None, :] if by == "i" else time[:, :, None, :, :]
    np.testing.assert_allclose(scale.values, series * time, rtol=1e-12)


@pytest.mark.parametrize("noise", [Noise(), Noise(family="student_t", df=3.0),
                                   Noise(per_series=True, family="student_t", time_by="i")])
def test_predictive_residuals_follow_the_noise_family(noise):
    """Standardized predictive residuals ``(y_rep - loc) / scale`` pooled over 28,800 draws:
    their 10/25/75/90% quantiles match the family's (Normal, t_3, t with each draw's df)
    within 0.05, and differ from the Normal's where the family is heavier-tailed."""
    fit = synthetic_fit(noise)
    draws = fit.predictive_draws(np.random.default_rng(1))
    loc = fit.linear_predictor()
    assert draws.dims == loc.dims
    residual = ((draws - loc) / tensorfact.results.predictive.noise_scale(fit)).values
    if noise.family == "normal":
        ppf = stats.norm.ppf
    elif noise.df is not None:
        ppf = lambda q: stats.t.ppf(q, noise.df)  # noqa: E731
    else:  # a mixture over the draws' df: compare the pooled CDF at fixed points instead
        df = fit.posterior["df"].values[0]
        points = np.array([-2.0, -0.7, 0.7, 2.0])
        expected = np.mean([stats.t.cdf(points, d) for d in df], axis=0)
        got = np.mean(residual[..., None] <= points, axis=(0, 1, 2, 3, 4))
        np.testing.assert_allclose(got, expected, atol=0.01)
        assert np.mean(residual <= -2.0) > stats.norm.cdf(-2.0) + 0.01
        return
    levels = np.array([0.1, 0.25, 0.75, 0.9])
    np.testing.assert_allclose(np.quantile(residual, levels), ppf(levels), atol=0.05)
    if noise.family == "student_t":
        assert np.quantile(residual, 0.9) > stats.norm.ppf(0.9) + 0.2


def test_predict_quantiles_use_the_fit_noise():
    """``fit.predict(quantiles=...)`` is the quantile of ``predictive_draws`` with the fit's
    seed, for time-varying Student-t noise too."""
    fit = synthetic_fit(Noise(per_series=True, family="student_t", df=4.0, time_by="j"))
    bands = fit.predict(quantiles=[0.05, 0.95], seed=7)
    draws = fit.predictive_draws(np.random.default_rng(7)).values.reshape(-1, 4, 3, 6)
    np.testing.assert_allclose(bands.values, np.quantile(draws, [0.05, 0.95], axis=0))


def test_exact_method_refuses_non_gaussian_or_time_varying_noise():
    y, mask = heavy_tailed_data()
    data = np.where(mask, y, np.nan)
    for noise, words in ((Noise(family="student_t"), "Student-t noise"),
                         (Noise(time_by="i"), "changes over time")):
        with pytest.raises(ValueError, match=words):
            tensorfact.fit(data, small_spec(noise), dims=DIMS, method="exact")
