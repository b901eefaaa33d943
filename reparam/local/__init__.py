"""Local Gaussian analysis of a decorrelated model: its linear structure, the exact
coefficients at a point, the Laplace start of the other sites, and the family's ceiling.

* :mod:`reparam.local.plan`: the involved sites, their order and the linear maps of the family;
* :mod:`reparam.local.analysis`: the local precision and the optimal coefficients;
* :mod:`reparam.local.laplace`: the Laplace-approximate mode of the non-decorrelated sites;
* :mod:`reparam.local.ceiling`: the best mean-field fit a family can reach (a design tool).
"""

from reparam.local.analysis import LocalGaussian, gaussian_coefficients, optimal_factor
from reparam.local.ceiling import Ceiling, ceiling
from reparam.local.laplace import LaplaceMode, laplace_mode
from reparam.local.plan import LinearPlan, linear_plan

__all__ = [
    "Ceiling",
    "LaplaceMode",
    "LinearPlan",
    "LocalGaussian",
    "ceiling",
    "gaussian_coefficients",
    "laplace_mode",
    "linear_plan",
    "optimal_factor",
]
