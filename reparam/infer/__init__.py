"""Inference: a compiled SVI loop, NUTS with diagnostics, and the decorrelated workflow."""

from reparam.infer.nuts import NUTSDiagnostics, NUTSRun, run_nuts
from reparam.infer.svi import NonFiniteLoss, Plateau, SVIRun, SVIRunner, continue_svi, run_svi
from reparam.infer.workflow import (
    CoefficientModel,
    SVIFit,
    fit_nuts,
    fit_svi,
    restore_svi,
    resume_svi,
)

__all__ = [
    "CoefficientModel",
    "NUTSDiagnostics",
    "NUTSRun",
    "NonFiniteLoss",
    "Plateau",
    "SVIFit",
    "SVIRun",
    "SVIRunner",
    "continue_svi",
    "fit_nuts",
    "fit_svi",
    "restore_svi",
    "resume_svi",
    "run_nuts",
    "run_svi",
]
