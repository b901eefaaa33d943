"""Specification + data shape -> NumPyro model, with the decorrelation attached.

The model (:class:`TensorModel`) samples all hyperparameters first (prior scales, AR
coefficients, noise), then the location effects in specification order, then the data:

    y[i,j,t] ~ Normal(sum_e effect_e[dims_e], sigma[i,j]),  NaN cells masked out,

or ``StudentT(df, sum_e effect_e[dims_e], sigma[i,j])`` for ``Noise(family="student_t")``.
:meth:`TensorModel.gaussian_surrogate` is the same model with the Student-t replaced by the
Gaussian of equal Fisher information; its (positive-definite) local precision drives the
Gaussian start of SVI, where the Student-t Hessian can be indefinite (cells whose residual
exceeds ``sqrt(df) sigma`` have negative curvature).

The decorrelation (:meth:`TensorModel.decorrelated`) makes every location effect a child of all
earlier location effects, in coordinates rotated by an orthonormal Helmert basis along each
non-time dim, coupled densely along time. On complete data with fixed hyperparameters this
family contains the exact posterior (the rotated posterior splits into small blocks, each a
chain along time), so its ceiling is exact; see ``experiments/ceiling_b2.py`` (measured
ceilings with missing cells too).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array
from numpyro import handlers

import reparam
from tensorfact.model.minibatch import observe_batch
from tensorfact.model.priors import AR1, DriftRandomWalk, scale_prior
from tensorfact.model.temporal import sample_scan_effect, start_point, step_sites
from tensorfact.spec import (
    DF_PRIOR,
    TIME_NOISE_PRIOR_SCALE,
    Effect,
    GrandMean,
    ModelSpec,
    Shrinkage,
    Temporal,
)

DecorrelateToggle = bool | Mapping[str, bool]


@dataclass(frozen=True)
class LocationSite:
    """A location site of the model: name, the effect it belongs to, and its dims."""

    name: str
    effect: str
    dims: tuple[str, ...]


def _vectorised(effect: object) -> bool:
    """A built-in temporal effect (hyperparameters sampled here, not by a transition)."""
    return isinstance(effect, Temporal) and effect.transition is None


def fisher_scale(scale: Array, df: Array) -> Array:
    """Sd of the Gaussian with the Fisher information of ``StudentT(df, loc, scale)`` about
    ``loc``: that information is ``(df + 1) / ((df + 3) scale^2)``, so the sd is
    ``scale sqrt((df + 3) / (df + 1))`` (tends to ``scale`` as ``df -> inf``; written as
    ``sqrt(1 + 2 / (df + 1))``, finite for ``df = inf``, where an optimiser's trial steps go)."""
    return scale * jnp.sqrt(1.0 + 2.0 / (df + 1.0))


def to_data_axes(value: Array, dims: tuple[str, ...], data_dims: tuple[str, ...]) -> Array:
    """Transposes/expands an effect with axes ``dims`` to broadcast against ``data_dims``."""
    order = [dims.index(d) for d in data_dims if d in dims]
    value = jnp.transpose(value, order) if order != list(range(len(order))) else value
    for axis, dim in enumerate(data_dims):
        if dim not in dims:
            value = jnp.expand_dims(value, axis)
    return value


class TensorModel:
    """The NumPyro model of a specification for data of given dim sizes.

    Call it as ``model(y, mask)`` with ``y`` the data (NaN replaced by any finite value) and
    ``mask`` true where a cell is observed.

    Args:
        spec: the model specification.
        sizes: dim name -> length, for the three data dims.
        surrogate: Gaussian likelihood of the Student-t's Fisher information (the start).
        batch_size: observe a random minibatch of this many cells per evaluation, scaled to
            be unbiased (:mod:`tensorfact.model.minibatch`); ``None``: every cell.
    """

    def __init__(
        self,
        spec: ModelSpec,
        sizes: Mapping[str, int],
        *,
        surrogate: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.spec = spec
        self.sizes = {d: int(sizes[d]) for d in spec.dims}
        self.surrogate = surrogate
        self.batch_size = batch_size

    def gaussian_surrogate(self) -> TensorModel:
        """The same sites with a Gaussian likelihood of the Student-t's Fisher information
        (:func:`fisher_scale`); ``self`` for Normal noise. Used only to compute SVI's start."""
        if self.spec.noise.family == "normal":
            return self
        return TensorModel(self.spec, self.sizes, surrogate=True, batch_size=self.batch_size)

    def full_batch(self) -> TensorModel:
        """The same model observing every cell (``self`` without minibatches)."""
        if self.batch_size is None:
            return self
        return TensorModel(self.spec, self.sizes, surrogate=self.surrogate)

    def program_key(self) -> tuple:
        """What determines this model's computation apart from its array arguments: the
        specification, the dim sizes and the surrogate switch (used by
        :func:`reparam.programs.model_key` to share compiled programs)."""
        return ("TensorModel", self.spec, tuple(self.sizes.items()), self.surrogate,
                self.batch_size)

    # -- structure ---------------------------------------------------------------------------
    @property
    def sampling_order(self) -> tuple[Effect, ...]:
        """The effects in the order the model samples them: those without the time dim first,
        then the time-indexed ones (each group in the spec's order).

        With this order every Helmert contrast chain along time is the last chain of its block
        of the exact conditional (complete data), so the decorrelation's Markov coupling on
        the contrasts is exact (``docs/design.md`` section 8.2); with ``C`` sampled after
        ``A`` the contrast chains of ``A`` would marginalise ``C`` (KL 146 nats on B2).
        """
        effects = self.spec.effects
        timeless = [e for e in effects if self.spec.time not in self.spec.effect_dims(e)]
        return (*timeless, *(e for e in effects if e not in timeless))

    @property
    def location_sites(self) -> tuple[LocationSite, ...]:
        """Location sites in sampling order (a trend's slope comes before its level)."""
        sites = []
        for effect in self.sampling_order:
            dims = self.spec.effect_dims(effect)
            if _vectorised(effect) and effect.kind == "local_linear_trend":
                sites.append(LocationSite(f"{effect.name}_slope", effect.name, dims))
            sites.append(LocationSite(effect.name, effect.name, dims))
        return tuple(sites)

    def shape_of(self, dims: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(self.sizes[d] for d in dims)

    # -- the model ---------------------------------------------------------------------------
    def __call__(self, y: Array, mask: Array) -> None:
        spec, time = self.spec, self.spec.time
        num_steps = self.sizes[time]
        hyper = self._sample_hyperparameters()
        loc, terms = 0.0, []
        for effect in self.sampling_order:
            dims = spec.effect_dims(effect)
            shape = self.shape_of(dims)
            if isinstance(effect, GrandMean):
                value = numpyro.sample(effect.name, dist.Normal(effect.loc, effect.scale))
            elif isinstance(effect, Shrinkage):
                scale = hyper[effect.scale_site]
                if effect.prior == "horseshoe":
                    scale = scale * hyper[f"lambda_{effect.name}"]
                prior = dist.Normal(0.0, jnp.broadcast_to(scale, shape))
                value = numpyro.sample(effect.name, prior.to_event(len(shape)))
            else:
                value = self._sample_temporal(effect, shape[:-1], num_steps, hyper)
            if self.batch_size is None:
                loc = loc + to_data_axes(value, dims, spec.dims)
            terms.append((value, dims))
        scales = self._noise_scales(hyper)
        likelihood = functools.partial(self._likelihood, hyper)
        if self.batch_size is not None:
            observe_batch(y, mask, spec.dims, terms, scales, likelihood, self.batch_size)
            return
        sigma = 1.0
        for value, dims in scales:
            sigma = sigma * to_data_axes(value, dims, spec.dims)
        loc = jnp.broadcast_to(loc, mask.shape)
        numpyro.sample("y", likelihood(loc, sigma).mask(mask).to_event(3), obs=y)

    def _noise_scales(self, hyper: Mapping[str, Array]) -> list[tuple[Array, tuple[str, ...]]]:
        """The factors of the noise scale and their dims (their product is each cell's)."""
        spec = self.spec
        scales = [(hyper["sigma_series"], spec.other_dims) if spec.noise.per_series
                  else (hyper["sigma"], ())]
        if spec.noise.time_by is not None:
            scales.append((jnp.exp(hyper["log_sigma_time"]), (spec.noise.time_by, spec.time)))
        return scales

    def cell_precision(self, point: Mapping[str, Any], mask: Array) -> Array:
        """The Gaussian likelihood's curvature in each cell's mean at ``point``: ``1 / sigma^2``
        on observed cells, 0 on missing ones (Student-t: its Fisher-scale surrogate)."""
        seeded = handlers.substitute(handlers.seed(self._sample_hyperparameters, 0),
                                     data=dict(point))
        with handlers.block():
            hyper = seeded()
        sigma = 1.0
        for value, dims in self._noise_scales(hyper):
            sigma = sigma * to_data_axes(value, dims, self.spec.dims)
        if self.spec.noise.family != "normal":
            sigma = fisher_scale(sigma, hyper["df"])
        return jnp.where(mask, jnp.broadcast_to(sigma, mask.shape) ** -2.0, 0.0)

    def _likelihood(self, hyper: Mapping[str, Array], loc: Array, sigma: Array):
        """The distribution of the cells with location ``loc`` and noise scale ``sigma``."""
        if self.spec.noise.family == "normal":
            return dist.Normal(loc, sigma)
        if self.surrogate:
            return dist.Normal(loc, fisher_scale(sigma, hyper["df"]))
        return dist.StudentT(hyper["df"], loc, sigma)

    def _sample_hyperparameters(self) -> dict[str, Array]:
        hyper = {}
        for effect in self.spec.effects:
            if isinstance(effect, Shrinkage):
                hyper[effect.scale_site] = numpyro.sample(
                    effect.scale_site, scale_prior(effect.prior, effect.prior_scale)
                )
                if effect.prior == "horseshoe":
                    shape = self.shape_of(self.spec.effect_dims(effect))
                    name = f"lambda_{effect.name}"
                    hyper[name] = numpyro.sample(
                        name, dist.HalfCauchy(1.0).expand(shape).to_event(len(shape))
                    )
            elif _vectorised(effect):
                prior = dist.HalfNormal(effect.prior_scale)
                hyper[effect.scale_site] = numpyro.sample(effect.scale_site, prior)
                if effect.kind == "ar1":
                    name = f"phi_{effect.name}"
                    hyper[name] = numpyro.sample(name, dist.Uniform(-1.0, 1.0))
                if effect.kind == "local_linear_trend":
                    name = f"{effect.scale_site}_slope"
                    hyper[name] = numpyro.sample(name, prior)
        noise = self.spec.noise
        hyper["sigma"] = numpyro.sample("sigma", dist.HalfNormal(noise.prior_scale))
        if noise.per_series:
            hyper["s_sigma"] = numpyro.sample("s_sigma", dist.HalfNormal(0.5))
            shape = self.shape_of(self.spec.other_dims)
            log_sigma = dist.Normal(jnp.log(hyper["sigma"]), hyper["s_sigma"])
            series = numpyro.sample(
                "log_sigma_series", log_sigma.expand(shape).to_event(len(shape))
            )
            hyper["sigma_series"] = numpyro.deterministic("sigma_series", jnp.exp(series))
        if noise.time_by is not None:
            hyper["s_sigma_time"] = numpyro.sample(
                "s_sigma_time", dist.HalfNormal(TIME_NOISE_PRIOR_SCALE)
            )
            shape = self.shape_of((noise.time_by, self.spec.time))
            steps = numpyro.sample("sigma_time_steps", dist.Normal(0.0, 1.0).expand(shape)
                                   .to_event(2))
            walk = hyper["s_sigma_time"] * jnp.cumsum(steps, axis=-1)
            hyper["log_sigma_time"] = numpyro.deterministic(
                "log_sigma_time", walk - jnp.mean(walk, axis=-1, keepdims=True)
            )
        if noise.learns_df:
            hyper["df"] = numpyro.sample("df", dist.Gamma(*DF_PRIOR))
        elif noise.family == "student_t":
            hyper["df"] = jnp.asarray(noise.df)
        return hyper

    def _sample_temporal(
        self, effect: Temporal, rows: tuple[int, ...], num_steps: int, hyper: dict[str, Array]
    ) -> Array:
        if effect.transition is not None:  # user-written transition, run with contrib scan
            return sample_scan_effect(effect.name, effect.transition, rows, num_steps)
        scale = hyper[effect.scale_site]
        if effect.kind == "random_walk":
            prior = dist.GaussianRandomWalk(scale, num_steps).expand(rows)
        elif effect.kind == "ar1":
            prior = AR1(hyper[f"phi_{effect.name}"], scale, num_steps).expand(rows)
        else:
            slope_prior = dist.GaussianRandomWalk(hyper[f"{effect.scale_site}_slope"], num_steps)
            slope = numpyro.sample(
                f"{effect.name}_slope", slope_prior.expand(rows).to_event(len(rows))
            )
            prior = DriftRandomWalk(slope, jnp.broadcast_to(scale, rows))
        return numpyro.sample(effect.name, prior.to_event(len(rows)))

    @property
    def noise_deterministics(self) -> dict[str, tuple[str, ...]]:
        """Deterministic noise sites -> dims (returned with the posterior draws)."""
        noise, out = self.spec.noise, {}
        if noise.per_series:
            out["sigma_series"] = self.spec.other_dims
        if noise.time_by is not None:
            out["log_sigma_time"] = (noise.time_by, self.spec.time)
        return out

    @property
    def noise_site_dims(self) -> dict[str, tuple[str, ...]]:
        """Every noise site with dims -> its dims (scalar sites are left out)."""
        noise, out = self.spec.noise, dict(self.noise_deterministics)
        if noise.per_series:
            out["log_sigma_series"] = self.spec.other_dims
        if noise.time_by is not None:
            out["sigma_time_steps"] = (noise.time_by, self.spec.time)
        return out

    # -- decorrelation -----------------------------------------------------------------------
    def decorrelation_config(self, decorrelate: DecorrelateToggle = True) -> dict[str, list[str]]:
        """Child site -> parents (all earlier location sites), for the effects switched on.

        Args:
            decorrelate: ``True`` (all effects), ``False`` (none) or ``{effect: bool}``
                (effects not named stay on).

        Raises:
            ValueError: if the mapping names an unknown effect.
            TypeError: if ``decorrelate`` is neither a bool nor a mapping of bools.
        """
        switched = self._switched_on(decorrelate)
        config, earlier = {}, []
        for site in self._decorrelatable_sites():
            if switched[site.effect] and (earlier or self.spec.time in site.dims):
                config[site.name] = list(earlier)
            earlier.append(site.name)
        return config

    def _switched_on(self, decorrelate: DecorrelateToggle) -> dict[str, bool]:
        names = self.spec.effect_names
        if isinstance(decorrelate, bool):
            return dict.fromkeys(names, decorrelate)
        if not isinstance(decorrelate, Mapping):
            raise TypeError(
                "decorrelate must be True, False or a mapping {effect name: bool}, got "
                f"{type(decorrelate).__name__}."
            )
        unknown = [k for k in decorrelate if k not in names]
        if unknown:
            raise ValueError(
                f"decorrelate names unknown effects {unknown}; the model's effects are {names}."
            )
        for key, value in decorrelate.items():
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"decorrelate[{key!r}] must be True or False, got {value!r}.")
        return {n: bool(decorrelate.get(n, True)) for n in names}

    def decorrelated(self, decorrelate: DecorrelateToggle = True) -> reparam.DecorrelateMessenger:
        """This model with the decorrelation attached to the effects switched on.

        Effects switched off are sampled unchanged (their site names stay as in the plain
        model) but still enter the Gaussian start, so on and off fits start alike. Along time
        the coupling is Markov on the Helmert contrasts and dense on the mean chains
        (``markov="contrasts"`` of :func:`reparam.decorrelate`): exact for complete data,
        ``O(T)`` per contrast row.
        """
        spec = self.spec
        dims = {**{site.name: site.dims for site in self.location_sites}, **self.step_sites}
        used = {d for site_dims in dims.values() for d in site_dims}  # rotate only axes in use
        sequence = spec.time if spec.time in used else None
        config = {child: reparam.Affine(tuple(parents), decenter=True)
                  for child, parents in self.decorrelation_config(decorrelate).items()}
        return reparam.decorrelate(
            self,
            config,
            rotate={d: "helmert" for d in spec.other_dims if d in used},
            sequence=sequence,
            markov="contrasts" if sequence is not None else False,
            dims=dims,
            involve=[site.name for site in self._decorrelatable_sites()] + list(self.step_sites),
            coefficients="params",  # set by the fit's own start (tensorfact.methods.svi)
        )

    @functools.cached_property
    def step_sites(self) -> dict[str, tuple[str, ...]]:
        """Per-step latent sites of the scan-transition effects -> dims (time first); they join
        the Gaussian analysis of the start (see :func:`tensorfact.model.temporal.step_sites`)."""
        spec = self.spec
        scanned = {
            e.name: spec.effect_dims(e)[:-1]
            for e in spec.effects
            if isinstance(e, Temporal) and not _vectorised(e)
        }
        if not scanned:
            return {}
        shape = self.shape_of(spec.dims)
        return step_sites(self, scanned, spec.time, self.sizes[spec.time],
                          jnp.zeros(shape), jnp.ones(shape, bool))

    def _decorrelatable_sites(self) -> tuple[LocationSite, ...]:
        """Location sites sampled as sites of this model (a scan-transition effect is a
        deterministic of per-step sites; reparameterize those with ``reparam.scan_reparam``)."""
        effects = self.spec.effects
        scanned = {e.name for e in effects if isinstance(e, Temporal) and not _vectorised(e)}
        return tuple(site for site in self.location_sites if site.effect not in scanned)

    # -- starting point ----------------------------------------------------------------------
    def initial_point(self, y: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """A data-scaled starting point: locations 0 (``mu`` at the data mean), effect scales
        at half the data sd, temporal innovation scales at a tenth, noise at half."""
        observed = np.asarray(y)[np.asarray(mask, bool)]
        spread = float(np.std(observed)) if observed.size > 1 else 1.0
        spread = spread if spread > 0 else 1.0
        point: dict[str, np.ndarray] = {}
        for effect in self.spec.effects:
            dims = self.spec.effect_dims(effect)
            shape = self.shape_of(dims)
            if isinstance(effect, GrandMean):
                point[effect.name] = np.asarray(np.mean(observed), np.float32)
                continue
            point[effect.name] = np.zeros(shape, np.float32)
            if isinstance(effect, Shrinkage):
                point[effect.scale_site] = np.asarray(0.5 * spread, np.float32)
                if effect.prior == "horseshoe":
                    point[f"lambda_{effect.name}"] = np.ones(shape, np.float32)
            else:
                point[effect.scale_site] = np.asarray(0.1 * spread, np.float32)
                if effect.kind == "ar1":
                    point[f"phi_{effect.name}"] = np.asarray(0.5, np.float32)
                if effect.kind == "local_linear_trend":
                    point[f"{effect.scale_site}_slope"] = np.asarray(0.02 * spread, np.float32)
                    point[f"{effect.name}_slope"] = np.zeros(shape, np.float32)
        point["sigma"] = np.asarray(0.5 * spread, np.float32)
        if self.spec.noise.per_series:
            point["s_sigma"] = np.asarray(0.3, np.float32)
            shape = self.shape_of(self.spec.other_dims)
            point["log_sigma_series"] = np.full(shape, np.log(0.5 * spread), np.float32)
        if self.spec.noise.time_by is not None:
            point["s_sigma_time"] = np.asarray(0.05, np.float32)
            shape = self.shape_of((self.spec.noise.time_by, self.spec.time))
            point["sigma_time_steps"] = np.zeros(shape, np.float32)
        if self.spec.noise.learns_df:
            point["df"] = np.asarray(10.0, np.float32)  # the prior's mode
        if any(isinstance(e, Temporal) and not _vectorised(e) for e in self.spec.effects):
            point = start_point(self, point, jnp.asarray(y), jnp.asarray(mask))
        return point

    def initial_hyperparameters(self, y: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`initial_point` without the location sites (float64): where NUTS over the
        hyperparameters starts (``method="exact"``) and the reference's optimiser too."""
        point = self.initial_point(y, mask)
        location = {site.name for site in self.location_sites}
        return {k: np.asarray(v, np.float64) for k, v in point.items() if k not in location}
