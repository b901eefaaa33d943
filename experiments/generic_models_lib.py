"""Models, data and references for ``experiments/generic_models.py``: plain NumPyro models
(no tensorfact), each centred as a user would write it and, where the reference is a long NUTS
run, hand-written non-centred with deterministic sites under the centred model's names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer.util import potential_energy

from reparam.infer.nuts import run_nuts

TENSOR_SHAPE = (6, 4, 10)
SCALES = ("s_a", "s_b", "s_C", "s_z", "s_A", "s_B")
TENSOR_TRUTH = {"mu": 2.0, "s_a": 1.0, "s_b": 1.0, "s_C": 1.0, "s_z": 0.2, "s_A": 0.2,
                "s_B": 0.2, "sigma": 0.2}
SCHOOLS_Y = np.array([28, 8, -3, 7, -1, 1, 18, 12], np.float32)
SCHOOLS_SIGMA = np.array([15, 10, 16, 11, 9, 11, 10, 18], np.float32)


@dataclass
class Problem:
    """A model, its data and how its reference is computed.

    Attributes:
        centred: the model as written (``reparam.fit``, AutoNormal and plain NUTS run it).
        args: its positional arguments (the data).
        reference: ``"exact"`` (Gaussian, dense linear algebra) or ``"nuts"``.
        noncentred: the hand-written non-centred model for the NUTS reference.
        nuts_reference: (chains, warmup, samples, target_accept) of the reference run.
    """

    name: str
    centred: Callable
    args: tuple
    reference: str = "nuts"
    noncentred: Callable | None = None
    nuts_reference: tuple[int, int, int, float] = (4, 1000, 2000, 0.8)


# ---- additive tensor model -------------------------------------------------------------

def _grw(name: str, scale, steps: int, centred: bool, event_shape=()):
    if centred:
        return numpyro.sample(name, dist.GaussianRandomWalk(scale, steps))
    raw = numpyro.sample(f"{name}_raw", dist.Normal(0.0, 1.0).expand([steps]).to_event(1))
    return numpyro.deterministic(name, scale * jnp.cumsum(raw, -1))


def _normal(name: str, loc, scale, centred: bool):
    if centred:
        return numpyro.sample(name, dist.Normal(loc, scale))
    raw = numpyro.sample(f"{name}_raw", dist.Normal(0.0, 1.0))
    return numpyro.deterministic(name, loc + scale * raw)


def _interaction(s_C, centred: bool):
    ni, nj, _ = TENSOR_SHAPE
    with numpyro.plate("ci", ni, dim=-2), numpyro.plate("cj", nj, dim=-1):
        return _normal("C", 0.0, s_C, centred)


def _tensor_body(y, s, sigma, centred: bool, c_last: bool = False):
    """``y[i,j,t] ~ N(mu + a_i + b_j + z_t + A_it + B_jt + C_ij, sigma)``; ``s`` = the six
    effect scales in :data:`SCALES` order. Sampling order mu, a, b, C, z, A, B (tensorfact's,
    ``docs/design.md`` 8.2) or, with ``c_last``, C after B."""
    ni, nj, nt = TENSOR_SHAPE
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("i", ni):
        a = _normal("a", 0.0, s[0], centred)
    with numpyro.plate("j", nj):
        b = _normal("b", 0.0, s[1], centred)
    C = None if c_last else _interaction(s[2], centred)
    z = _grw("z", s[3], nt, centred)
    with numpyro.plate("i", ni):
        A = _grw("A", s[4], nt, centred)
    with numpyro.plate("j", nj):
        B = _grw("B", s[5], nt, centred)
    C = _interaction(s[2], centred) if c_last else C
    loc = (mu + a[:, None, None] + b[None, :, None] + z + A[:, None, :] + B[None, :, :]
           + C[..., None])
    with numpyro.plate("yi", ni, dim=-3), numpyro.plate("yj", nj, dim=-2), \
            numpyro.plate("t", nt, dim=-1):
        numpyro.sample("y", dist.Normal(loc, sigma), obs=y)


def tensor_fixed(y, scales):
    """Scales fixed: ``scales`` = the six effect scales then sigma."""
    _tensor_body(y, [scales[k] for k in range(6)], scales[6], True)


def tensor_fixed_c_last(y, scales):
    """:func:`tensor_fixed` with C sampled last (for the ceiling's order sensitivity)."""
    _tensor_body(y, [scales[k] for k in range(6)], scales[6], True, c_last=True)


def _tensor_scales():
    s = [numpyro.sample(n, dist.HalfNormal(1.0 if n in ("s_a", "s_b", "s_C") else 0.5))
         for n in SCALES]
    return s, numpyro.sample("sigma", dist.HalfNormal(1.0))


def tensor_sampled(y):
    s, sigma = _tensor_scales()
    _tensor_body(y, s, sigma, True)


def tensor_sampled_nc(y):
    s, sigma = _tensor_scales()
    _tensor_body(y, s, sigma, False)


def simulate_tensor(seed: int = 0) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    ni, nj, nt = TENSOR_SHAPE
    tr = TENSOR_TRUTH
    eff = {"a": rng.normal(0, tr["s_a"], ni), "b": rng.normal(0, tr["s_b"], nj),
           "z": np.cumsum(rng.normal(0, tr["s_z"], nt)),
           "A": np.cumsum(rng.normal(0, tr["s_A"], (ni, nt)), -1),
           "B": np.cumsum(rng.normal(0, tr["s_B"], (nj, nt)), -1),
           "C": rng.normal(0, tr["s_C"], (ni, nj))}
    loc = (tr["mu"] + eff["a"][:, None, None] + eff["b"][None, :, None] + eff["z"]
           + eff["A"][:, None, :] + eff["B"][None, :, :] + eff["C"][..., None])
    y = loc + rng.normal(0, tr["sigma"], loc.shape)
    return y.astype(np.float32), eff


# ---- small hierarchies ------------------------------------------------------------------

def schools(y, sigma, centred: bool = True):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(SCHOOLS_Y)):
        theta = _normal("theta", mu, tau, centred)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def make_hierarchy(groups: int, centred: bool = True):
    def hierarchy(group, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfNormal(2.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
        with numpyro.plate("group", groups):
            theta = _normal("theta", mu, tau, centred)
        with numpyro.plate("obs", len(group)):
            numpyro.sample("y", dist.Normal(theta[group], sigma), obs=y)
    return hierarchy


def make_logistic(groups: int, centred: bool = True):
    def logistic(x, group, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 2.0))
        with numpyro.plate("group", groups):
            alpha = _normal("alpha", mu, tau, centred)
        numpyro.sample("y", dist.Bernoulli(logits=alpha[group] + beta * x), obs=y)
    return logistic


def make_poisson(groups: int, centred: bool = True):
    def poisson(x, exposure, group, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        with numpyro.plate("group", groups):
            alpha = _normal("alpha", 0.0, tau, centred)
        rate = exposure * jnp.exp(mu + alpha[group] + beta * x)
        numpyro.sample("y", dist.Poisson(rate), obs=y)
    return poisson


def problems() -> list[Problem]:
    """The five models (tensor in two variants), data simulated with fixed seeds."""
    y, _ = simulate_tensor(0)
    scales = np.array([TENSOR_TRUTH[k] for k in (*SCALES, "sigma")], np.float32)
    rng = np.random.default_rng(1)
    sizes = [3, 5, 10, 20, 40]
    group = np.repeat(np.arange(5), sizes)
    theta = 1.0 + rng.normal(0, 1.0, 5)
    y_h = (theta[group] + rng.normal(0, 2.0, len(group))).astype(np.float32)
    rng = np.random.default_rng(2)
    g_l = np.repeat(np.arange(10), 30)
    x_l = rng.normal(size=300).astype(np.float32)
    logits = -0.5 + rng.normal(0, 0.7, 10)[g_l] + 1.0 * x_l
    y_l = (rng.uniform(size=300) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    rng = np.random.default_rng(3)
    g_p = np.repeat(np.arange(12), 6)
    x_p = rng.normal(size=72).astype(np.float32)
    expo = rng.uniform(0.5, 2.0, 72).astype(np.float32)
    rate = expo * np.exp(1.0 + rng.normal(0, 0.5, 12)[g_p] + 0.3 * x_p)
    y_p = rng.poisson(rate).astype(np.float32)
    return [
        Problem("tensor 6x4x10, scales fixed", tensor_fixed, (y, scales), reference="exact"),
        Problem("tensor 6x4x10, scales sampled", tensor_sampled, (y,),
                noncentred=tensor_sampled_nc),
        Problem("eight schools (centred)", schools, (SCHOOLS_Y, SCHOOLS_SIGMA),
                noncentred=lambda y, s: schools(y, s, centred=False),
                nuts_reference=(4, 2000, 5000, 0.95)),
        Problem("normal hierarchy, 5 groups", make_hierarchy(5), (group, y_h),
                noncentred=make_hierarchy(5, centred=False)),
        Problem("logistic random intercept, 10x30", make_logistic(10), (x_l, g_l, y_l),
                noncentred=make_logistic(10, centred=False)),
        Problem("Poisson log-linear, 12 groups", make_poisson(12), (x_p, expo, g_p, y_p),
                noncentred=make_poisson(12, centred=False)),
    ]


# ---- references -------------------------------------------------------------------------

def latent_shapes(model: Callable, args: tuple) -> dict[str, tuple[int, ...]]:
    """Latent sample sites -> shapes, in the order the model samples them."""
    trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args)
    return {k: tuple(np.shape(s["value"])) for k, s in trace.items()
            if s["type"] == "sample" and not s["is_observed"]}


@dataclass
class ExactGaussian:
    """Exact posterior of a model whose latent sites are all real and whose log joint is
    quadratic: mean, sd and precision (flat in trace order)."""

    mean: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]
    precision: np.ndarray
    order: dict[str, tuple[int, ...]]

    def precision_over(self, sites) -> np.ndarray:
        """The marginal precision over ``sites`` (layouts with ``.name``), in that order."""
        offsets, start = {}, 0
        for name, shape in self.order.items():
            offsets[name] = np.arange(start, start + int(np.prod(shape)))
            start += int(np.prod(shape))
        index = np.concatenate([offsets[s.name] for s in sites])
        if len(index) == len(self.precision) and np.all(index == np.arange(len(index))):
            return self.precision
        return np.linalg.inv(np.linalg.inv(self.precision)[np.ix_(index, index)])


def exact_gaussian(model: Callable, args: tuple) -> ExactGaussian:
    """Precision = Hessian of the potential (float64, at zero; exact for a Gaussian), mean =
    one Newton step from zero."""
    order = latent_shapes(model, args)
    with jax.enable_x64(True):
        args64 = tuple(jnp.asarray(a, jnp.float64) for a in args)
        names = list(order)

        def flat_to_dict(x):
            out, start = {}, 0
            for n in names:
                size = int(np.prod(order[n]))
                out[n] = x[start:start + size].reshape(order[n])
                start += size
            return out

        dim = sum(int(np.prod(s)) for s in order.values())
        x0 = jnp.zeros(dim, jnp.float64)

        def potential(x):
            return potential_energy(model, args64, {}, flat_to_dict(x))

        hessian = np.asarray(jax.jit(jax.hessian(potential))(x0))
        gradient = np.asarray(jax.jit(jax.grad(potential))(x0))
    cov = np.linalg.inv(hessian)
    mean = flat_to_dict(np.asarray(-cov @ gradient))
    sd = flat_to_dict(np.sqrt(np.diag(cov)))
    return ExactGaussian({k: np.asarray(v) for k, v in mean.items()},
                         {k: np.asarray(v) for k, v in sd.items()}, hessian, order)


def nuts_reference(problem: Problem, sites, scale: float = 1.0, seed: int = 11) -> dict:
    """Long NUTS on the non-centred model: mean/sd per site, r-hat, ESS, divergences."""
    chains, warmup, samples, accept = problem.nuts_reference
    warmup, samples = max(int(warmup * scale), 200), max(int(samples * scale), 300)
    run = run_nuts(problem.noncentred, *problem.args, rng_key=jax.random.PRNGKey(seed),
                   num_warmup=warmup, num_samples=samples, num_chains=chains,
                   target_accept_prob=accept, report_sites=list(sites), warn=False)
    flat = {k: run.samples[k].reshape((-1,) + run.samples[k].shape[2:]) for k in sites}
    d = run.diagnostics
    return {"mean": {k: v.mean(0) for k, v in flat.items()},
            "sd": {k: v.std(0) for k, v in flat.items()},
            "max_rhat": d.max_rhat, "min_ess": d.min_ess, "divergences": d.divergences,
            "seconds": d.seconds, "settings": [chains, warmup, samples, accept]}


def pooled_ratios(draws: dict, mean: dict, sd: dict, band=(0.8, 1.25)) -> dict[str, Any]:
    """sd ratio (draws / reference) and |mean error| in reference sds over every latent
    element of every site, pooled."""
    ratio, error = [], []
    for name, ref_sd in sd.items():
        values = np.asarray(draws[name]).reshape((-1,) + np.shape(ref_sd))
        ratio.append(np.ravel(values.std(0) / ref_sd))
        error.append(np.ravel(np.abs(values.mean(0) - mean[name]) / ref_sd))
    ratio, error = np.concatenate(ratio), np.concatenate(error)
    return {"in_band": float(np.mean((ratio >= band[0]) & (ratio <= band[1]))),
            "median_ratio": float(np.median(ratio)), "min_ratio": float(ratio.min()),
            "max_ratio": float(ratio.max()), "max_mean_error_sd": float(error.max()),
            "elements": int(ratio.size)}
