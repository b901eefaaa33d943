"""The decorrelated model's joint density equals the plain model's (exact reparameterization).

For random values and random nonzero coefficients, the potential energy (negative log joint in
unconstrained coordinates, including Jacobians) of the decorrelated model at its auxiliary
values equals the plain model's at the implied model-coordinate values, in every supported
configuration.
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
CONFIGS = {
    "naive shifts": ({"a": ["mu"], "z": ["mu"], "A": ["mu", "a", "z"]}, {"dims": PANEL_DIMS}),
    "positional dims": ({"a": ["mu"], "A": ["a", "z"]}, {}),
    "rotated, dense in time": ({"a": ["mu"], "z": ["mu", "a"], "A": ["mu", "a", "z"]}, ROTATED),
    "rotated, band 1": (
        {"a": ["mu"], "z": ["mu", "a"], "A": ["mu", "a", "z"]},
        {**ROTATED, "band": 1},
    ),
    "within off": (
        {"z": reparam.Affine(("mu",), within=False), "A": reparam.Affine(("z",), within=False)},
        ROTATED,
    ),
    "positive child": ({"a": ["mu"], "scale": ["a", "mu"]}, ROTATED),
    "callable config": (lambda name: ["mu"] if name in ("a", "A") else None, ROTATED),
}


def _random_coefficients(model, y, seed):
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(y)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(trace))
    return {
        name: 0.5 * jax.random.normal(key, site["value"].shape, site["value"].dtype)
        for key, (name, site) in zip(keys, trace.items(), strict=True)
        if site["type"] == "param"
    }


def _potentials(config, options, seed=0):
    y = panel_data()
    decorrelated = reparam.decorrelate(panel_model, config, **options)
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
    return pe_dec, pe_plain, trace


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


def test_log_joint_unchanged_float64(x64):
    config, options = CONFIGS["rotated, dense in time"]
    pe_dec, pe_plain, trace = _potentials(config, options)
    assert trace["A"]["value"].dtype == jnp.float64
    np.testing.assert_allclose(pe_dec, pe_plain, rtol=1e-11)


def test_aux_prior_round_trip():
    """Drawing from the auxiliary prior and mapping back reproduces the draw exactly."""
    config, options = CONFIGS["rotated, dense in time"]
    y = panel_data()
    decorrelated = reparam.decorrelate(panel_model, config, **options)
    frozen = reparam.freeze(decorrelated, _random_coefficients(decorrelated, y, 3))
    trace = handlers.trace(handlers.seed(frozen, 0)).get_trace(y)
    aux = trace["A" + reparam.AUX_SUFFIX]["fn"]
    draws = aux.sample(jax.random.PRNGKey(1), (3,))
    assert draws.shape == (3, 4, 5)
    back = jax.vmap(aux.to_aux)(jax.vmap(aux.to_model)(draws))
    np.testing.assert_allclose(back, draws, atol=1e-4)
    # the density of u is the base density of x(u): the Jacobian is 1
    np.testing.assert_allclose(
        aux.log_prob(draws[0]), aux.base.log_prob(aux.to_model(draws[0])), rtol=1e-6
    )
