"""Conditional affine reparameterizations for NumPyro models.

``reparam.decorrelate(model, {"a": ["mu"]})`` samples each configured child in coordinates
shifted by coefficients times functions of earlier ("parent") sites, optionally after fixed
orthonormal rotations, which removes the posterior ridges that make mean-field SVI too narrow
and NUTS slow, without touching the model code. The log density is unchanged (unit Jacobian).

Low-level pieces: :mod:`reparam.family` (the map), :mod:`reparam.gaussian` (exact local
coefficients), :mod:`reparam.laplace` (starting hyperparameters), :mod:`reparam.ceiling` (the
best a family can reach), :mod:`reparam.training` (SVI initialisation and step sizes).

``reparam.scan_reparam(model, {"x": "learnable"})`` applies reparameterizations to sites inside
``numpyro.contrib.control_flow.scan`` bodies (:mod:`reparam.scan`).
"""

from reparam.ceiling import Ceiling, ceiling
from reparam.family import ChildFamily, ParentCoupling, Structure
from reparam.gaussian import LocalGaussian, gaussian_coefficients, optimal_factor
from reparam.handler import AUX_SUFFIX, Affine, DecorrelateMessenger, decorrelate, freeze
from reparam.laplace import LaplaceMode, laplace_mode
from reparam.layout import SiteLayout
from reparam.plan import LinearPlan, linear_plan
from reparam.rotations import Helmert, get_rotation
from reparam.scan import (
    Centered,
    GaussianConditional,
    LearnableCentering,
    NonCentered,
    ScanReparamMessenger,
    StepAffine,
    scan_reparam,
)
from reparam.training import GuideInit, Initialization, initialize, relative_steps

__all__ = [
    "AUX_SUFFIX",
    "Affine",
    "Ceiling",
    "Centered",
    "ChildFamily",
    "DecorrelateMessenger",
    "GaussianConditional",
    "GuideInit",
    "Helmert",
    "Initialization",
    "LaplaceMode",
    "LearnableCentering",
    "LinearPlan",
    "LocalGaussian",
    "NonCentered",
    "ParentCoupling",
    "ScanReparamMessenger",
    "SiteLayout",
    "StepAffine",
    "Structure",
    "ceiling",
    "decorrelate",
    "freeze",
    "gaussian_coefficients",
    "get_rotation",
    "initialize",
    "laplace_mode",
    "linear_plan",
    "optimal_factor",
    "relative_steps",
    "scan_reparam",
]
