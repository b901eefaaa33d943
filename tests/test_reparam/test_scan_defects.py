"""Regression tests for silent wrong answers and fragile detection around ``scan``.

Written against the public API only (``reparam.decorrelate``, ``reparam.scan_reparam``,
``numpyro``), so that the file also runs against older commits.

* posterior predictive with the Gaussian-conditional strategy and the data absent;
* ``reparam.decorrelate`` configured with a site inside a contrib-``scan`` body;
* sample sites inside a plain ``jax.lax.scan``, and body site names built from a traced index;
* ``scan`` under a ``plate`` recognised without NumPyro's wording;
* ``rotate=`` / ``sequence=`` / ``dims=`` naming axes or sites that do not exist.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.infer import Predictive

import reparam

T = 6
Y = jnp.linspace(-1.0, 4.0, T)


def state_space(y=None):
    """x_t ~ N(0.9 x_{t-1}, q), y_t ~ N(x_t, 0.2): the body observes y."""
    q = numpyro.sample("q", dist.HalfNormal(1.0))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Normal(0.9 * x_prev, q))
        numpyro.sample("y", dist.Normal(x, 0.2), obs=y_t)
        return x, x

    scan(step, jnp.zeros(()), y, length=T)


def transition_only(y=None):
    """The same path, observed after the loop: the body never observes anything."""
    q = numpyro.sample("q", dist.HalfNormal(1.0))

    def step(carry, _):
        x_prev, d_prev = carry
        d = numpyro.sample("d", dist.Normal(d_prev, 0.3))  # latent, not a function of x
        x = numpyro.sample("x", dist.Normal(0.9 * x_prev + d_prev, q))
        return (x, d), x

    _, path = scan(step, (jnp.zeros(()), jnp.zeros(())), None, length=T)
    numpyro.sample("y", dist.Normal(path, 0.2), obs=y)


def _draws(model, sites, seeds=(0, 1)):
    """Fit-free "posterior" draws: the reparameterized model run with the data."""
    traces = [handlers.trace(handlers.seed(model, s)).get_trace(Y) for s in seeds]
    return {k: jnp.stack([t[k]["value"] for t in traces]) for k in sites}


# -- 6: posterior predictive of the Gaussian conditional without the data ------------------------
def test_conditional_predictive_without_data_keeps_the_posterior_path():
    model = reparam.scan_reparam(state_space, {"x": "conditional"})
    draws = _draws(model, ("q", "x_whitened", "x"))
    # x's map conditions on y: without y it cannot be recomputed from x_whitened; refused
    with pytest.raises(ValueError, match="condition_deterministic=True"):
        Predictive(model, posterior_samples=draws)(jax.random.PRNGKey(1), None)
    # with the path given, x is the posterior path and y is drawn around it
    out = Predictive(model, posterior_samples=draws, condition_deterministic=True)(
        jax.random.PRNGKey(1), None
    )
    np.testing.assert_allclose(out["x"], draws["x"], rtol=1e-6, atol=1e-6)
    assert out["y"].shape == (2, T)
    assert float(jnp.max(jnp.abs(out["y"] - draws["x"]))) < 5 * 0.2
    assert not np.allclose(out["y"], Y)


def test_conditional_predictive_with_data_or_prior_is_unchanged():
    model = reparam.scan_reparam(state_space, {"x": "conditional"})
    draws = _draws(model, ("q", "x_whitened", "x"))
    given = {k: draws[k] for k in ("q", "x_whitened")}  # e.g. guide draws after SVI
    out = Predictive(model, posterior_samples=given)(jax.random.PRNGKey(1), Y)
    np.testing.assert_allclose(out["x"], draws["x"], rtol=1e-5, atol=1e-5)
    prior = Predictive(model, num_samples=3)(jax.random.PRNGKey(2), None)
    assert prior["x"].shape == prior["y"].shape == (3, T)


def test_conditional_without_body_observations_recomputes_the_path():
    """A body that never observes (likelihood after the loop) whitens by the prior only: its
    map needs no data, so x is recomputed from x_whitened with or without y."""
    model = reparam.scan_reparam(transition_only, {"x": "conditional"})
    draws = _draws(model, ("q", "x_whitened", "d", "x"))
    given = {k: draws[k] for k in ("q", "x_whitened", "d")}
    out = Predictive(model, posterior_samples=given)(jax.random.PRNGKey(1), None)
    np.testing.assert_allclose(out["x"], draws["x"], rtol=1e-5, atol=1e-5)


# -- 7: decorrelate on a site inside a contrib scan body -----------------------------------------
def test_decorrelate_refuses_a_site_inside_a_scan_body():
    model = reparam.decorrelate(transition_only, {"x": ["q"]})
    with pytest.raises(ValueError, match=r"'x'.*inside a numpyro.contrib.control_flow.scan body"):
        handlers.trace(handlers.seed(model, 0)).get_trace(Y)
    with pytest.raises(ValueError, match="scan_reparam"):
        handlers.trace(handlers.seed(model, 0)).get_trace(Y)
    # a child outside the scan with a parent inside still works
    ok = reparam.decorrelate(transition_only, {"q": []})
    handlers.trace(handlers.seed(ok, 0)).get_trace(Y)


# -- 8: sample sites inside jax.lax.scan; traced site names ---------------------------------------
def lax_model():
    """The forum model: sample statements inside a plain jax.lax.scan."""
    q = numpyro.sample("q", dist.HalfNormal(1.0))

    def step(carry, _):
        x = numpyro.sample("x", dist.Normal(carry, q))
        return x, x

    _, path = jax.lax.scan(step, 0.0, None, length=3)
    numpyro.sample("z", dist.Normal(path.sum(), 1.0))


LAX = "use numpyro.contrib.control_flow.scan"


def test_decorrelate_refuses_a_site_inside_lax_scan():
    with pytest.raises(ValueError, match=LAX):
        with handlers.seed(rng_seed=0):
            reparam.decorrelate(lax_model, {"x": ["q"]})()
    with pytest.raises(ValueError, match=LAX):  # a parent inside the loop
        with handlers.seed(rng_seed=0):
            reparam.decorrelate(lax_model, {"z": ["x"]})()


def test_scan_reparam_refuses_a_site_inside_lax_scan():
    model = reparam.scan_reparam(lax_model, {"x": "noncentered"})
    with pytest.raises(ValueError, match=LAX):
        handlers.trace(handlers.seed(model, 0)).get_trace()
    with pytest.raises(ValueError, match=LAX):  # instead of JAX's UnexpectedTracerError
        Predictive(model, num_samples=2)(jax.random.PRNGKey(0))


def test_scan_reparam_names_a_configured_site_outside_any_scan():
    model = reparam.scan_reparam(transition_only, {"q": "noncentered"})
    with pytest.raises(ValueError, match=r"\['q'\] were sampled outside any"):
        handlers.trace(handlers.seed(model, 0)).get_trace(Y)


def test_site_name_from_a_traced_index_is_explained():
    def model():
        def step(carry, i):
            x = numpyro.sample(f"x_{i}", dist.Normal(carry, 1.0))
            return x, x

        scan(step, 0.0, jnp.arange(3))

    for config in ({"x": "noncentered"}, {"x_0": "noncentered"}):
        with pytest.raises(ValueError, match="one fixed name"):
            handlers.trace(handlers.seed(reparam.scan_reparam(model, config), 0)).get_trace()


# -- 5: scan under a plate, recognised by where NumPyro raises ------------------------------------
def _walk(carry, _):
    x = numpyro.sample("x", dist.Normal(carry, 1.0))
    return x, x


def _scan_under_plate():
    with numpyro.plate("rows", 2):
        scan(_walk, jnp.zeros(2), None, length=3)


PLATE_HINT = "batch the step's sites over the plate"


def test_scan_under_plate_gives_the_workaround():
    model = reparam.scan_reparam(_scan_under_plate, {"x": "learnable"})
    with pytest.raises(NotImplementedError, match=PLATE_HINT):
        handlers.trace(handlers.seed(model, 0)).get_trace()


def test_scan_under_plate_does_not_depend_on_numpyro_wording(monkeypatch):
    original = numpyro.plate.process_message

    def process_message(self, msg):  # the same refusal, reworded
        if msg["type"] == "control_flow":
            raise NotImplementedError("control flow is not allowed inside plates")
        return original(self, msg)

    monkeypatch.setattr(numpyro.plate, "process_message", process_message)
    model = reparam.scan_reparam(_scan_under_plate, {"x": "learnable"})
    with pytest.raises(NotImplementedError, match=PLATE_HINT):
        handlers.trace(handlers.seed(model, 0)).get_trace()


def test_step_affine_parent_from_an_earlier_scan_body_is_refused():
    """Sites replayed after a scan are not "sampled before" a later scan."""

    def model():
        scan(_walk, 0.0, None, length=3)

        def second(carry, _):
            w = numpyro.sample("w", dist.Normal(carry, 1.0))
            return w, w

        scan(second, 0.0, None, length=3)

    config = {"w": reparam.StepAffine(("x",))}
    with pytest.raises(ValueError, match="was not sampled before"):
        handlers.trace(handlers.seed(reparam.scan_reparam(model, config), 0)).get_trace()


# -- 9: decorrelate options naming axes or sites that do not exist --------------------------------
def panel(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("i", 3):
        a = numpyro.sample("a", dist.Normal(mu, 1.0))
        with numpyro.plate("one", 1, dim=-2):
            numpyro.sample("b", dist.Normal(0.0, 1.0))
    numpyro.sample("y", dist.Normal(a, 0.5).to_event(1), obs=y)


def _run_panel(**options):
    model = reparam.decorrelate(panel, {"a": ["mu"]}, **options)
    handlers.trace(handlers.seed(model, 0)).get_trace(jnp.zeros(3))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"rotate": {"j": "helmert"}}, r"rotate= names the axis 'j'.*\['i', 'one'\]"),
        ({"sequence": "time"}, r"sequence= names the axis 'time'.*\['i', 'one'\]"),
        ({"dims": {"nope": ("i",)}}, r"dims= names sites \['nope'\]"),
    ],
)
def test_decorrelate_options_naming_nothing_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        _run_panel(**options)


def test_decorrelate_options_naming_existing_axes_are_accepted():
    _run_panel(rotate={"i": "helmert"}, dims={"mu": ()})
    _run_panel(rotate={"one": "helmert"})  # an axis of size 1 exists (it is a no-op)
