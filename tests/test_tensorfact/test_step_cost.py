"""The SVI step of the decorrelated tensor model costs what the model costs: with the Markov
coupling on the Helmert contrasts (``markov="contrasts"``) its largest array grows like the
cells, not like ``rows x T^2`` as with a dense coupling along time for every row."""

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.util import potential_energy, unconstrain_fn

import reparam
from reparam.infer.workflow import CoefficientModel
from tensorfact.model.tensor import TensorModel
from tensorfact.spec import default_spec
from tests.cost import largest_intermediate


def _decorrelated(model: TensorModel, family: str) -> reparam.DecorrelateMessenger:
    if family == "markov contrasts":
        return model.decorrelated(True)
    spec = model.spec
    return reparam.decorrelate(
        model, model.decorrelation_config(True), rotate={d: "helmert" for d in spec.other_dims},
        sequence=spec.time, dims={s.name: s.dims for s in model.location_sites},
    )


def _gradient_cost(sizes: dict, family: str) -> tuple[int, int]:
    """Largest intermediate of the potential's gradient (the SVI step's core) and the number
    of coefficients."""
    model = TensorModel(default_spec(tuple(sizes)), sizes)
    shape = tuple(sizes.values())
    args = (jnp.zeros(shape), jnp.ones(shape, bool))
    decorrelated = _decorrelated(model, family)
    trace = handlers.trace(handlers.seed(decorrelated, 0)).get_trace(*args)
    coefficients = {k: v["value"] for k, v in trace.items() if v["type"] == "param"}
    wrapped = CoefficientModel(decorrelated)
    kwargs = {"coefficients": coefficients}
    trace = handlers.trace(handlers.seed(wrapped, 0)).get_trace(*args, **kwargs)
    values = {k: v["value"] for k, v in trace.items()
              if v["type"] == "sample" and not v["is_observed"]}
    point = unconstrain_fn(wrapped, args, kwargs, values)

    def gradient(point, coefficients):
        return jax.grad(lambda p: potential_energy(
            wrapped, args, {"coefficients": coefficients}, p))(point)

    count = int(sum(np.size(v) for v in coefficients.values()))
    return largest_intermediate(gradient, point, coefficients), count


def test_markov_contrasts_step_is_linear_in_cells_when_time_doubles():
    """T 10 -> 20 (cells x2): the step's largest array grows <= 2.2x with the default family,
    >= 3.5x with a dense coupling along time per row (so the bound can fail). Coefficients:
    beyond the ``6 T^2`` of the mean chains' dense couplings (``z, A, B`` within, ``A <- z``,
    ``B <- z``, ``B <- A``) they grow like the effects (measured 821 -> 1621; dense per row:
    2481 -> 8541)."""
    small, large = {"i": 8, "j": 6, "t": 10}, {"i": 8, "j": 6, "t": 20}
    (markov_small, count_small), (markov_large, count_large) = (
        _gradient_cost(small, "markov contrasts"), _gradient_cost(large, "markov contrasts"))
    (dense_small, dense_count_small), (dense_large, dense_count_large) = (
        _gradient_cost(small, "dense time"), _gradient_cost(large, "dense time"))
    assert markov_large <= 2.2 * markov_small
    assert count_large - 6 * 20**2 <= 2.2 * (count_small - 6 * 10**2)
    assert dense_large >= 3.5 * dense_small
    assert dense_count_large >= 3.0 * dense_count_small
