"""Where SVI on a decorrelated model starts: hyperparameters, coefficients and the guide.

Measured on the additive tensor benchmark (B2): with coefficients at the local Gaussian optimum
for the right scale hyperparameters, a mean-field guide over the auxiliary sites reaches the
exact posterior sds; the same family started from poor hyperparameters drifts (coefficients
computed at wrong scales pull the scales further off), and stochastic-gradient updates of the
coefficients degrade them. So training starts from

1. the Laplace-approximate mode of the sites that are not decorrelated
   (:func:`reparam.laplace_mode`),
2. the decorrelated sites at their conditional mode (a Newton step),
3. coefficients at the exact local conditional, projected onto the family, and
4. a mean-field guide whose scales are the local optimum ``diag(F^T P F)^{-1/2}``,

after which Adam's location steps are scaled by the current guide scale
(:func:`reparam.optim.relative_steps`).

A plain model (no decorrelated children) with more than ``dense_limit`` involved dims starts
matrix-free instead (:mod:`reparam.local.curvature`): a preconditioned-CG Newton step and the
exact Hessian diagonal from coloured Hessian-vector products, so its cost is linear in the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from reparam.local.analysis import LocalGaussian
from reparam.local.curvature import newton_matrix_free
from reparam.local.laplace import LaplaceMode, laplace_mode
from reparam.names import AUX_SUFFIX

DENSE_LIMIT = 3000  # involved dims above which a plain model's start is matrix-free
MAX_NEWTON = 50  # Newton steps to the conditional mode of a non-Gaussian likelihood


class GuideInit(NamedTuple):
    """Initial values for NumPyro's ``AutoNormal`` over a decorrelated model.

    Attributes:
        values: site name as the guide sees it (auxiliary names for children) -> location,
            for ``init_to_value(values=...)``.
        scales: the same names -> initial scale, for ``SVI.init(init_params=...)`` as
            ``f"{name}_auto_scale"``; sites missing here keep the guide's default.
    """

    values: dict[str, np.ndarray]
    scales: dict[str, np.ndarray]

    def init_params(self, scale_suffix: str = "_auto_scale") -> dict[str, np.ndarray]:
        return {name + scale_suffix: scale for name, scale in self.scales.items()}


@dataclass(frozen=True)
class Initialization:
    """Starting point for SVI on a decorrelated model (see the module docstring).

    Attributes:
        point: all latent sites in model coordinates.
        coefficients: decorrelation coefficients (the model's ``numpyro.param`` names).
        guide: ``AutoNormal`` initial locations and scales.
        laplace: the Laplace-mode result when it was computed.
    """

    point: dict[str, np.ndarray]
    coefficients: dict[str, np.ndarray]
    guide: GuideInit
    laplace: LaplaceMode | None = None


def initialize(
    local: LocalGaussian,
    point: Mapping[str, Any],
    *,
    laplace: bool = True,
    dtype: Any = jnp.float32,
    guide_names: Mapping[str, str] | None = None,
    dense_limit: int | None = None,
    mode: LaplaceMode | None = None,
) -> Initialization:
    """Computes coefficients and a matching mean-field guide at (or from) ``point``.

    Args:
        local: the :class:`~reparam.local.analysis.LocalGaussian` of the decorrelated model.
        point: values of all latent sites in model coordinates.
        laplace: first move the sites that are not decorrelated to their Laplace mode
            (recommended at the start of training; skip it to refresh at a guide's median).
        dtype: dtype of the returned arrays.
        guide_names: site name -> the name the trained model's guide sees. Default: the
            auxiliary name for children, the site name otherwise. Pass identity names when
            ``local`` only analyses a plain model (an unrotated decorrelation whose children
            have no parents, so ``u = x``).
        dense_limit: a plain model with more involved dims starts matrix-free (module
            docstring; no Laplace step, whatever ``laplace`` says). Default
            :data:`DENSE_LIMIT`.
        mode: the Laplace mode of the sites not decorrelated, computed by the caller (e.g.
            from an exact marginal likelihood that needs no dense matrix); it replaces
            :func:`~reparam.local.laplace.laplace_mode` (for ``laplace=True``). Its sites must
            be sites of ``point`` that the analysis does not involve.

    Raises:
        ValueError: if ``mode`` holds an involved site or one ``point`` lacks.
    """
    limit = DENSE_LIMIT if dense_limit is None else dense_limit
    if not local.plan.families and local.plan.dim > limit:
        point, sd = newton_matrix_free(local, point)
        mode, coefficients, loc = None, {}, {}
    else:
        if mode is not None:
            _check_mode(mode, local, point)
        if laplace and mode is None:
            if not local.exact_newton:  # its inner Newton steps start near the mode
                point = conditional_mode(local, point)[0]
            mode = laplace_mode(local, point)
        mode = mode if laplace else None
        point = dict(mode.point) if mode is not None else dict(point)
        point, precision = conditional_mode(local, point)
        coefficients = local.coefficients(point, precision=precision)
        loc, sd = local.aux_point(point, coefficients, precision)
        coefficients.update(local.decentering(point, coefficients, sd))
    for name, family in local.plan.families.items():
        if family.decenter:  # rescale deviations from the fitted point (reparam.decenter)
            coefficients[f"{name}_decenter_at"] = np.asarray(loc[name])
    families = local.plan.families
    values = {k: np.asarray(v, dtype) for k, v in point.items()}
    scales: dict[str, np.ndarray] = {}
    for site in local.plan.sites:
        default = site.name + AUX_SUFFIX if site.name in families else site.name
        guide_name = default if guide_names is None else guide_names.get(site.name, default)
        value = values.pop(site.name, None)
        # a parent-only site's guide coordinate is its own (unconstrained) value: the guide is
        # initialised with the constrained value, as init_to_value expects
        from_aux = site.name in families or value is None
        values[guide_name] = np.asarray(loc[site.name], dtype) if from_aux else value
        scales[guide_name] = np.asarray(sd[site.name], dtype)
    if mode is not None:  # keep the guide's default where the Laplace Hessian is degenerate
        scales.update(
            {
                k: np.asarray(v, dtype)
                for k, v in mode.unconstrained_sd.items()
                if np.all(np.isfinite(v)) and np.all(np.asarray(v) > 0)
            }
        )
    return Initialization(
        point={k: np.asarray(v, dtype) for k, v in point.items()},
        coefficients={k: np.asarray(v, dtype) for k, v in coefficients.items()},
        guide=GuideInit(values=values, scales=scales),
        laplace=mode,
    )


def conditional_mode(local: LocalGaussian, point: Mapping[str, Any], *,
                     max_iterations: int = MAX_NEWTON, tolerance: float = 1e-6
                     ) -> tuple[dict[str, Any], Any]:
    """The involved sites at their conditional mode given the others, by Newton steps with
    backtracking on the potential; returns the point and the local precision there.

    A Gaussian likelihood (``local.exact_newton``) needs one step. Otherwise (Poisson,
    Bernoulli, ... likelihoods) steps repeat, each halved until the potential does not rise,
    until the potential falls by less than ``tolerance`` nats or ``max_iterations`` steps;
    the precision is re-evaluated at the final point (the curvature of a non-Gaussian
    likelihood depends on it: the Fisher information at the mode).
    """
    moved, precision = local.newton(point)
    if local.exact_newton:
        return moved, precision
    names = [s.name for s in local.plan.sites if s.real_support]  # newton moves these
    value = local.potential(point)
    for _ in range(max_iterations):
        step, trial = 1.0, moved
        trial_value = local.potential(trial)
        while not trial_value <= value and step > 1e-3:  # NaN counts as a rise
            step /= 2
            trial = {**point, **{n: np.asarray(point[n]) + step * (np.asarray(moved[n])
                                 - np.asarray(point[n])) for n in names}}
            trial_value = local.potential(trial)
        if not trial_value < value - tolerance:
            break
        point, value = trial, trial_value
        moved, precision = local.newton(point)
    return dict(point), precision


def _check_mode(mode: LaplaceMode, local: LocalGaussian, point: Mapping[str, Any]) -> None:
    involved = {s.name for s in local.plan.sites}
    wrong = sorted(k for k in mode.unconstrained_sd if k in involved or k not in point)
    if wrong:
        raise ValueError(
            f"The given Laplace mode holds {wrong}, which are involved in the decorrelation or "
            "not sites of the point; give the mode of the other (hyperparameter) sites only."
        )
