"""Reparameterizations of sample sites inside ``numpyro.contrib.control_flow.scan`` bodies.

* :mod:`reparam.scan.handler`: :func:`scan_reparam`, the handler that intercepts ``scan``;
* :mod:`reparam.scan.strategies`: the strategies and the probe of a body;
* :mod:`reparam.scan.conditional`: the Gaussian-conditional map of whole paths.
"""

from reparam.names import CONDITIONED_SUFFIX, DECENTERED_SUFFIX, NOISE_SUFFIX, WHITENED_SUFFIX
from reparam.scan.handler import ScanReparamMessenger, scan_reparam
from reparam.scan.strategies import (
    SHORTCUTS,
    Centered,
    GaussianConditional,
    LearnableCentering,
    NonCentered,
    ScanConfig,
    StepAffine,
    Strategy,
)

__all__ = [
    "CONDITIONED_SUFFIX",
    "DECENTERED_SUFFIX",
    "NOISE_SUFFIX",
    "SHORTCUTS",
    "WHITENED_SUFFIX",
    "Centered",
    "GaussianConditional",
    "LearnableCentering",
    "NonCentered",
    "ScanConfig",
    "ScanReparamMessenger",
    "StepAffine",
    "Strategy",
    "scan_reparam",
]
