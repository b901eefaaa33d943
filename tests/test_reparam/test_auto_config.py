"""``reparam.suggest_config`` / ``decorrelate(model)``: the configuration discovered from a model
written without reparam in mind, checked against the configuration the maths prescribes and
the KL ceiling of tensorfact's hand-built one (the exact posterior of the fixed-scale tensor)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer.util import potential_energy, unconstrain_fn

import reparam
from reparam.auto_config import start_point
from tests.test_reparam.models import panel_data, panel_model
from tests.test_reparam.user_models import (
    SCHOOLS_SIGMA,
    SCHOOLS_Y,
    TENSOR_SCALES,
    schools_model,
    tensor_data,
    tensor_model,
)

EFFECTS = ("mu", "a", "b", "z", "A", "B", "C")


def test_tensor_model_gets_the_additive_structure():
    """Every effect against all earlier ones, Helmert along the plates each effect sums over,
    the walks' steps as the sequence (named after the data's time plate), C's renamed plates
    aligned with a's and b's by size; with fixed scales nothing is decentred."""
    found = reparam.suggest_config(tensor_model, tensor_data(), TENSOR_SCALES)
    assert list(found.config) == list(EFFECTS[1:])
    for k, child in enumerate(EFFECTS[1:]):
        assert found.config[child] == reparam.Affine(parents=EFFECTS[:k + 1])
    assert found.rotate == {"i": "helmert", "j": "helmert"}
    assert found.sequence == "week" and found.markov is False
    assert found.dims == {"z": ("week",), "A": ("i", "week"), "B": ("j", "week"),
                          "C": ("i", "j")}


def test_sampled_scales_decentre_the_children_and_stay_unchanged():
    found = reparam.suggest_config(tensor_model, tensor_data())
    assert not any(name.startswith("s_") or name == "sigma" for name in found.config)
    assert all(affine.decenter for affine in found.config.values())
    assert all(not p.startswith("s_") for a in found.config.values() for p in a.parents)


def test_eight_schools_and_random_walk_panel():
    schools = reparam.suggest_config(schools_model, SCHOOLS_SIGMA, SCHOOLS_Y)
    assert schools.config == {"theta": reparam.Affine(parents=("mu",), decenter=True)}
    assert schools.rotate == {"school": "helmert"} and schools.sequence is None
    panel = reparam.suggest_config(panel_model, panel_data())
    # no plate has the walks' length: the steps get the sequence name of their own
    assert panel.sequence == "steps" and panel.dims["A"] == ("i", "steps")
    assert panel.config["z"].parents == ("mu", "a") and panel.rotate == {"i": "helmert"}


def _ceiling_kl(decorrelated, y):
    args = (y, TENSOR_SCALES)
    point = start_point(tensor_model, args, {})
    plan = reparam.linear_plan(decorrelated, point, *args)
    with jax.enable_x64(True):
        x0 = plan.join({s.name: jnp.asarray(point[s.name], jnp.float64) for s in plan.sites})
        precision = jax.hessian(lambda x: potential_energy(tensor_model, args, {},
                                                           plan.split(x)))(x0)
    return reparam.ceiling(plan, np.asarray(precision), steps=0).kl


def test_auto_config_reaches_the_hand_built_ceiling():
    """The exact posterior (fixed scales: Gaussian) is reachable by the discovered family
    (KL 0, as with tensorfact's configuration, which
    :func:`test_tensor_model_gets_the_additive_structure` shows it equals); the parents a user
    would write without the rotations, sequence and axis names leave 20 nats."""
    y = tensor_data()
    found = reparam.suggest_config(tensor_model, y, TENSOR_SCALES)  # = the hand-built one
    auto = reparam.decorrelate(tensor_model, found, coefficients="params")
    naive = reparam.decorrelate(
        tensor_model, {e: list(EFFECTS[:k + 1]) for k, e in enumerate(EFFECTS[1:])},
        coefficients="params")
    assert abs(_ceiling_kl(auto, y)) < 1e-6
    assert _ceiling_kl(naive, y) > 5.0


def test_printed_config_is_the_call_a_person_writes():
    found = reparam.suggest_config(schools_model, SCHOOLS_SIGMA, SCHOOLS_Y)
    namespace = {"reparam": reparam, "model": schools_model}
    exec(str(found), namespace)  # noqa: S102 - the printed text is code by contract
    rebuilt = reparam.decorrelate(schools_model, namespace["config"],
                                  rotate=found.rotate)
    assert rebuilt.suggestion().config == found.config
    assert "reparam.decorrelate(model, config, rotate={'school': 'helmert'})" in str(found)


def test_auto_decorrelation_is_an_exact_reparameterization():
    """``decorrelate(model)``: configuration found at the first call, coefficients fixed at
    the Gaussian start; the potential at the auxiliary values equals the plain model's at the
    implied values minus the decentring log-Jacobian, computed independently."""
    decorrelated = reparam.decorrelate(schools_model)
    args = (SCHOOLS_SIGMA, SCHOOLS_Y)
    trace = handlers.trace(handlers.seed(decorrelated, 3)).get_trace(*args)
    assert trace["theta"]["type"] == "deterministic"
    latent = {k: v["value"] for k, v in trace.items()
              if v["type"] == "sample" and not v["is_observed"]}
    assert set(latent) == {"mu", "tau", "theta_decorrelated"}
    pe_dec = potential_energy(decorrelated, args, {},
                              unconstrain_fn(decorrelated, args, {}, latent))
    plain = {k: trace[k]["value"] for k in ("mu", "tau", "theta")}
    pe_plain = potential_energy(schools_model, args, {},
                                unconstrain_fn(schools_model, args, {}, plain))
    fixed = decorrelated._start
    log_jacobian = jnp.sum((1.0 - fixed["theta_centering"])
                           * jnp.log(plain["tau"] / fixed["theta_scale_ref"]))
    assert np.any(np.asarray(fixed["theta_centering"]) < 0.99)  # decentred: term exercised
    np.testing.assert_allclose(pe_dec, pe_plain - log_jacobian, rtol=1e-5)


def test_nothing_to_discover_and_other_refusals():
    def independent(y):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        numpyro.sample("ya", dist.Normal(a, 1.0), obs=y)
        numpyro.sample("yb", dist.Normal(b, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"nothing to decorrelate.*\{child: \[earlier"):
        reparam.suggest_config(independent, 1.0)

    def discrete():
        numpyro.sample("k", dist.Poisson(3.0))
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="discrete"):
        reparam.suggest_config(discrete)
    with pytest.raises(ValueError, match="sequence='t' is not an axis"):
        reparam.suggest_config(schools_model, SCHOOLS_SIGMA, SCHOOLS_Y, sequence="t")
    with pytest.raises(ValueError, match="first call"):
        reparam.decorrelate(schools_model).suggestion()


def _coupling_pattern(dims):
    """Which ``a[k]`` each ``C[i, j]`` is shifted by (``|dC/da| > 0``), all coefficients 1."""
    decorrelated = reparam.decorrelate(tensor_model, {"C": ["a"]}, dims=dims,
                                       coefficients="params")
    y = tensor_data()

    def child(a):
        values = {"a": a, "C_decorrelated": jnp.zeros((4, 3)), "C_shift_a": jnp.ones((4, 3))}
        run = handlers.substitute(handlers.seed(decorrelated, 0), data=values)
        return handlers.trace(run).get_trace(y, TENSOR_SCALES)["C"]["value"]

    return np.abs(np.asarray(jax.jacobian(child)(jnp.zeros(4)))) > 1e-6


def test_given_config_aligns_renamed_plates_by_size():
    """``{"C": ["a"]}`` without ``dims``: C's plate ``ci`` is a's ``i`` (same size, never on
    one site), so row i of C moves with a[i] only; with the plates kept apart by ``dims`` C
    moves with a's mean (every element)."""
    aligned = _coupling_pattern(None)
    np.testing.assert_array_equal(aligned, np.eye(4, dtype=bool)[:, None, :].repeat(3, 1))
    assert _coupling_pattern({"a": ("i",), "C": ("ci", "cj")}).all()
