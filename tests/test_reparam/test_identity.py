"""The decorrelated model is an exact reparameterization of the plain model.

For random values and random nonzero coefficients, the potential energy (negative log joint in
unconstrained coordinates, including Jacobians) of the decorrelated model at its auxiliary
values equals the plain model's at the implied model-coordinate values minus the log-Jacobian
of the map: rotations, shifts and within-site couplings have unit Jacobian, and partial
non-centring contributes ``sum_k (1 - c_k) log(s / s0)`` (``reparam.decenter``), which is
computed here independently from the coefficients and the sampled scales.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer.util import potential_energy, unconstrain_fn

import reparam
from tests.test_reparam.models import PANEL_DIMS, panel_data, panel_model

ROTATED = {"rotate": {"i": "helmert"}, "sequence": "t", "dims": PANEL_DIMS}


def decentred(config):
    """``config`` with partial non-centring on for every child."""
    return {k: reparam.Affine(tuple(v), decenter=True) for k, v in config.items()}


CONFIGS = {
    "naive shifts": ({"a": ["mu"], "z": ["mu"], "A": ["mu", "a", "z"]}, {"dims": PANEL_DIMS}),
    "positional dims": ({"a": ["mu"], "A": ["a", "z"]}, {}),
    "rotated, dense in time": (
        decentred({"a": ["mu"], "z": ["mu", "a"], "A": ["mu", "a", "z"]}), ROTATED),
    "rotated, band 1": (
        decentred({"a": ["mu"], "z": ["mu", "a"], "A": ["mu", "a", "z"]}),
        {**ROTATED, "band": 1},
    ),
    "rotated, markov band 1": (
        decentred({"a": ["mu"], "z": ["mu", "a"], "A": ["mu", "a", "z"]}),
        {**ROTATED, "band": 1, "markov": True},
    ),
    "rotated, markov contrasts": (
        decentred({"a": ["mu"], "z": ["mu", "a"], "A": ["mu", "a", "z"]}),
        {**ROTATED, "markov": "contrasts"},
    ),
    "within off": (
        {"z": reparam.Affine(("mu",), within=False), "A": reparam.Affine(("z",), within=False)},
        ROTATED,
    ),
    "positive child": (decentred({"a": ["mu"], "scale": ["a", "mu"]}), ROTATED),
    "callable config": (lambda name: ["mu"] if name in ("a", "A") else None, ROTATED),
}


def _random_coefficients(model, y, seed):
    """Random nonzero coefficients; decentring at a random centredness and reference scale
    (so the Jacobian term is exercised)."""
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(y)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(trace))
    out = {}
    for key, (name, site) in zip(keys, trace.items(), strict=True):
        if site["type"] != "param":
            continue
        shape, dtype = site["value"].shape, site["value"].dtype
        if name.endswith("_centering"):
            out[name] = jax.random.uniform(key, shape, dtype)
        elif name.endswith("_scale_ref"):
            out[name] = jnp.exp(jax.random.normal(key, shape, dtype))
        else:
            out[name] = 0.5 * jax.random.normal(key, shape, dtype)
    return out


def _potentials(config, options, seed=0):
    y = panel_data()
    decorrelated = reparam.decorrelate(panel_model, config, coefficients="params", **options)
    coefficients = _random_coefficients(decorrelated, y, seed)
    assert coefficients and all(jnp.any(v != 0) for v in coefficients.values())
    frozen = reparam.freeze(decorrelated, coefficients)
    trace = handlers.trace(handlers.seed(frozen, seed + 1)).get_trace(y)
    latent = {
        k: v["value"] for k, v in trace.items() if v["type"] == "sample" and not v["is_observed"]
    }
    plain_values = {k: trace[k]["value"] for k in ("mu", "s", "a", "z", "A", "scale")}
    pe_dec = potential_energy(frozen, (y,), {}, unconstrain_fn(frozen, (y,), {}, latent))
    pe_plain = potential_energy(
        panel_model, (y,), {}, unconstrain_fn(panel_model, (y,), {}, plain_values)
    )
    # the children's prior scales (panel_model)
    scales = {"a": trace["s"]["value"], "z": jnp.asarray(0.3), "A": jnp.asarray(0.2)}
    log_jacobian = sum(
        jnp.sum((1 - coefficients[f"{c}_centering"])
                * jnp.log(scales[c] / coefficients[f"{c}_scale_ref"]))
        for c in scales if f"{c}_centering" in coefficients
    )
    return pe_dec, pe_plain - log_jacobian, trace


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_log_joint_unchanged(name):
    config, options = CONFIGS[name]
    for seed in (0, 1):
        pe_dec, pe_plain, trace = _potentials(config, options, seed)
        np.testing.assert_allclose(pe_dec, pe_plain, rtol=2e-5)
        children = config if isinstance(config, dict) else ("a", "A")
        for child in children:
            assert trace[child]["type"] == "deterministic"
            assert trace[child + reparam.AUX_SUFFIX]["type"] == "sample"
        if name == "rotated, dense in time":  # a ~ N(0, s) and A ~ GRW(0.2) are decentred
            prior = trace["a" + reparam.AUX_SUFFIX]["fn"]
            assert np.shape(prior.log_jacobian) == (4,)  # one term per plate element
            assert np.all(np.asarray(prior.log_jacobian) != 0.0)


def test_log_joint_unchanged_float64(x64):
    config, options = CONFIGS["rotated, dense in time"]
    pe_dec, pe_plain, trace = _potentials(config, options)
    assert trace["A"]["value"].dtype == jnp.float64
    np.testing.assert_allclose(pe_dec, pe_plain, rtol=1e-11)


@pytest.mark.parametrize("name", ["rotated, dense in time", "rotated, markov band 1"])
def test_aux_prior_round_trip(name):
    """Drawing from the auxiliary prior and mapping back reproduces the draw exactly."""
    config, options = CONFIGS[name]
    y = panel_data()
    decorrelated = reparam.decorrelate(panel_model, config, **options)
    frozen = reparam.freeze(decorrelated, _random_coefficients(decorrelated, y, 3))
    trace = handlers.trace(handlers.seed(frozen, 0)).get_trace(y)
    aux = trace["A" + reparam.AUX_SUFFIX]["fn"]
    draws = aux.sample(jax.random.PRNGKey(1), (3,))
    assert draws.shape == (3, 4, 5)
    back = jax.vmap(aux.to_aux)(jax.vmap(aux.to_model)(draws))
    np.testing.assert_allclose(back, draws, atol=1e-4)
    # the auxiliary density is the base density of x(v) times the decentring Jacobian
    np.testing.assert_allclose(
        aux.log_prob(draws[0]),
        aux.base.log_prob(aux.to_model(draws[0])) + aux.log_jacobian,
        rtol=1e-6,
    )


def test_markov_form_is_the_bidiagonal_inverse():
    """Markov form: u = M x~ + S(p~) with M unit lower bidiagonal, and the recurrence that
    recovers x~ is its exact inverse (checked against a dense triangular solve)."""
    layout = reparam.SiteLayout("A", (3, 7), ("i", "t"))
    structure = reparam.Structure(sequence="t", band=1, markov=True)
    family = reparam.ChildFamily(layout, (), structure)
    assert family.param_shapes() == {"within": (3, 7)}
    rng = np.random.default_rng(0)
    m = jnp.asarray(rng.normal(size=(3, 7)))
    x = jnp.asarray(rng.normal(size=(2, 3, 7)))  # a leading batch axis
    u = family.to_aux(x, {}, {"within": m})
    dense = np.eye(7)[None] - np.asarray(m)[:, :, None] * np.eye(7, k=-1)[None]
    np.testing.assert_allclose(u, np.einsum("its,bis->bit", dense, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(family.from_aux(u, {}, {"within": m}), x, rtol=1e-4, atol=1e-5)


def test_markov_needs_a_band():
    with pytest.raises(ValueError, match="band"):
        reparam.decorrelate(panel_model, {"A": ["z"]}, sequence="t", markov=True)
