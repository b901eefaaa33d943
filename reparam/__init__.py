"""Conditional affine reparameterizations for NumPyro models.

``reparam.decorrelate(model, {"a": ["mu"]})`` samples each configured child in coordinates
shifted by coefficients times functions of earlier ("parent") sites, optionally after fixed
orthonormal rotations, which removes the posterior ridges that make mean-field SVI too narrow
and NUTS slow, without touching the model code. The log density is unchanged (unit Jacobian).

Layout (``docs/design.md`` has the maths):

* :mod:`reparam.handler` (the ``decorrelate`` handler), :mod:`reparam.family` (the map),
  :mod:`reparam.decenter` (partial non-centring), :mod:`reparam.rotations`,
  :mod:`reparam.sites` (site layouts), :mod:`reparam.names` (every name reparam creates);
* :mod:`reparam.local`: local Gaussian analysis, exact coefficients, Laplace start, ceiling;
* :mod:`reparam.start` (SVI initialisation) and :mod:`reparam.optim` (relative steps);
* :mod:`reparam.scan`: ``reparam.scan_reparam(model, {"x": "learnable"})`` reparameterizes
  sites inside ``numpyro.contrib.control_flow.scan`` bodies;
* :mod:`reparam.infer`: model-agnostic engines (compiled SVI, NUTS, the decorrelated
  SVI -> NUTS workflow), imported on demand (``from reparam.infer import fit_svi``).
"""

from reparam.auto_config import DecorrelationConfig, suggest_config
from reparam.config import Affine
from reparam.decorrelation import decorrelate, freeze
from reparam.family import ChildFamily, ParentCoupling, Structure
from reparam.handler import DecorrelateMessenger
from reparam.infer.generic_fit import ModelFit, fit
from reparam.infer.pmmh import pmmh
from reparam.infer.smc import particle_filter
from reparam.local.analysis import LocalGaussian, gaussian_coefficients, optimal_factor
from reparam.local.ceiling import Ceiling, ceiling
from reparam.local.laplace import LaplaceMode, laplace_mode
from reparam.local.plan import LinearPlan, linear_plan
from reparam.names import AUX_SUFFIX
from reparam.optim import relative_steps
from reparam.rotations import Helmert, get_rotation
from reparam.scan.handler import (
    Centered,
    GaussianConditional,
    LearnableCentering,
    NonCentered,
    ScanReparamMessenger,
    StepAffine,
    scan_reparam,
)
from reparam.sites import SiteLayout
from reparam.start import GuideInit, Initialization, initialize

__all__ = [
    "AUX_SUFFIX",
    "Affine",
    "Ceiling",
    "Centered",
    "ChildFamily",
    "DecorrelateMessenger",
    "DecorrelationConfig",
    "GaussianConditional",
    "GuideInit",
    "Helmert",
    "Initialization",
    "LaplaceMode",
    "LearnableCentering",
    "LinearPlan",
    "LocalGaussian",
    "ModelFit",
    "NonCentered",
    "ParentCoupling",
    "ScanReparamMessenger",
    "SiteLayout",
    "StepAffine",
    "Structure",
    "ceiling",
    "decorrelate",
    "fit",
    "freeze",
    "gaussian_coefficients",
    "get_rotation",
    "initialize",
    "laplace_mode",
    "linear_plan",
    "optimal_factor",
    "particle_filter",
    "pmmh",
    "relative_steps",
    "scan_reparam",
    "suggest_config",
]
