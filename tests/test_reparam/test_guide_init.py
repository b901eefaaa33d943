"""``SVI.init`` compiled (:func:`reparam.infer.guide_init.initial_state`) gives what NumPyro's
eager ``SVI.init`` gives: the same state, params, median, quantiles, draws and next step; the
guide holds no tracer; programs are shared between fits of a keyed model; a model that cannot
be traced, or an invalid start, falls back to the eager path (and its errors)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value

from reparam.infer.guide_init import CompiledConstrain, initial_state
from reparam.programs import PROGRAMS

Y = jnp.asarray(np.random.default_rng(0).normal(1.0, 0.5, size=(6, 3)), jnp.float32)
START = {"s": jnp.asarray(0.7), "x": jnp.asarray([0.1, -0.2, 0.3])}


def toy(y, shift=1.0):
    """A positive scale, a plate, an event site, a deterministic using an argument."""
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("k", 3):
        x = numpyro.sample("x", dist.Normal(0.0, 2.0))
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    numpyro.deterministic("shifted", x + shift)
    with numpyro.plate("n", y.shape[0], dim=-2), numpyro.plate("k", 3):
        numpyro.sample("y", dist.Normal(x + w.sum(), s), obs=y)


class Keyed:
    """``toy`` with a program key (its programs may be shared)."""

    def program_key(self):
        return ("guide-init-test-toy",)

    def __call__(self, y, shift=1.0):
        toy(y, shift)


def bounded(y, hi):
    """A support set by an argument: ``u ~ Uniform(0, hi)``."""
    u = numpyro.sample("u", dist.Uniform(0.0, hi))
    numpyro.sample("y", dist.Normal(u, 1.0), obs=y)


def untraceable(y):
    """Python control flow on an argument's value: cannot run under ``jax.jit``."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    scale = 1.0 if float(jnp.sum(y)) > 0 else 2.0
    numpyro.sample("y", dist.Normal(mu, scale), obs=y)


def _svi(model, values=START):
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=values), init_scale=0.05)
    return SVI(model, guide, optax.adam(1e-2), Trace_ELBO())


def _close(a, b, tol=1e-6):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for u, v in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def _no_tracers(guide):
    leaves = jax.tree.leaves((dict(guide.prototype_trace), guide._init_locs))
    return not any(isinstance(x, jax.core.Tracer) for x in leaves)


def test_compiled_init_matches_eager_init():
    key = jax.random.PRNGKey(3)
    eager, compiled = _svi(toy), _svi(toy)
    state_e = eager.init(key, Y, shift=2.0)
    state_c = initial_state(compiled, key, (Y,), {"shift": 2.0})
    _close(state_e, state_c)
    params_e, params_c = eager.get_params(state_e), compiled.get_params(state_c)
    _close(params_e, params_c)
    assert _no_tracers(compiled.guide)
    assert isinstance(compiled.guide._postprocess_fn, CompiledConstrain)
    median_e, median_c = eager.guide.median(params_e), compiled.guide.median(params_c)
    assert sorted(median_e) == sorted(median_c) == ["s", "shifted", "w", "x"]
    _close(median_e, median_c)
    _close(eager.guide.quantiles(params_e, [0.1, 0.9]),
           compiled.guide.quantiles(params_c, [0.1, 0.9]))
    draw = jax.random.PRNGKey(5)
    _close(eager.guide.sample_posterior(draw, params_e, sample_shape=(4,)),
           compiled.guide.sample_posterior(draw, params_c, sample_shape=(4,)))
    _close(Predictive(toy, guide=eager.guide, params=params_e, num_samples=3)(draw, Y),
           Predictive(toy, guide=compiled.guide, params=params_c, num_samples=3)(draw, Y))
    _close(eager.update(state_e, Y, shift=2.0), compiled.update(state_c, Y, shift=2.0), 1e-5)


def test_a_keyed_model_shares_the_program_and_not_its_data():
    model = Keyed()
    initial_state(_svi(model), jax.random.PRNGKey(0), (Y,), {}, optimizer_key="adam")
    programs = len(PROGRAMS)
    other_y, other_start = Y + 3.0, {"s": jnp.asarray(1.5), "x": jnp.asarray([1.0, 2.0, 3.0])}
    compiled = _svi(model, other_start)
    state = initial_state(compiled, jax.random.PRNGKey(1), (other_y,), {},
                          optimizer_key="adam")
    assert len(PROGRAMS) == programs  # the same programs, run on new values
    assert isinstance(compiled.guide._postprocess_fn, CompiledConstrain)  # (not the fallback)
    eager = _svi(model, other_start)
    expected = eager.init(jax.random.PRNGKey(1), other_y)
    _close(expected, state)
    _close(eager.guide.median(eager.get_params(expected)),
           compiled.guide.median(compiled.get_params(state)))


def test_a_set_up_guide_initialises_with_new_arguments_and_its_median_follows_them():
    """NumPyro's guide keeps the arguments of its set-up for its deterministic sites; the
    compiled one takes the latest (so a median after new arguments is not stale)."""
    svi = _svi(toy)
    initial_state(svi, jax.random.PRNGKey(0), (Y,), {"shift": 1.0})
    params = {**svi.get_params(svi.init(jax.random.PRNGKey(0), Y, shift=1.0))}
    state = initial_state(svi, jax.random.PRNGKey(0), (Y,), {"shift": 5.0},
                          init_params=params)
    eager = _svi(toy)
    _close(eager.init(jax.random.PRNGKey(0), Y, shift=5.0, init_params=params), state)
    median = svi.guide.median(svi.get_params(state))
    np.testing.assert_allclose(median["shifted"], median["x"] + 5.0, rtol=1e-6)


def test_a_support_set_by_an_argument_is_rebuilt_concrete():
    hi = jnp.asarray(4.0)
    values = {"u": jnp.asarray(1.0)}
    eager, compiled = _svi(bounded, values), _svi(bounded, values)
    key = jax.random.PRNGKey(0)
    state_e = eager.init(key, jnp.asarray(2.0), hi)
    state_c = initial_state(compiled, key, (jnp.asarray(2.0), hi), {})
    _close(state_e, state_c)
    assert _no_tracers(compiled.guide)
    assert isinstance(compiled.guide._postprocess_fn, CompiledConstrain)
    support = compiled.guide.prototype_trace["u"]["fn"].support
    np.testing.assert_allclose(support.upper_bound, 4.0)
    _close(eager.guide.median(eager.get_params(state_e)),
           compiled.guide.median(compiled.get_params(state_c)))


def test_an_untraceable_model_falls_back_to_the_eager_init():
    values = {"mu": jnp.asarray(0.3)}
    eager, compiled = _svi(untraceable, values), _svi(untraceable, values)
    key = jax.random.PRNGKey(0)
    state = initial_state(compiled, key, (Y,), {})
    _close(eager.init(key, Y), state)
    assert compiled.guide.prototype_trace is not None
    assert not isinstance(compiled.guide._postprocess_fn, CompiledConstrain)  # NumPyro's own


def test_an_invalid_start_raises_numpyros_error():
    bad = {"s": jnp.asarray(-1.0), "x": START["x"]}  # outside the support of s
    with pytest.raises(ValueError) as eager:
        _svi(toy, bad).init(jax.random.PRNGKey(0), Y)
    with pytest.raises(ValueError) as compiled:
        initial_state(_svi(toy, bad), jax.random.PRNGKey(0), (Y,), {})
    assert str(compiled.value) == str(eager.value) and "invalid scale" in str(eager.value)
