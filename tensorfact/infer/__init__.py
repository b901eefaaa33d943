"""Inference: a compiled SVI loop, NUTS with diagnostics, and the decorrelated workflow."""

from tensorfact.infer.decorrelated import (
    CoefficientModel,
    SVIFit,
    fit_nuts,
    fit_svi,
    restore_svi,
    resume_svi,
)
from tensorfact.infer.nuts import NUTSDiagnostics, NUTSRun, run_nuts
from tensorfact.infer.svi import NonFiniteLoss, Plateau, SVIRun, SVIRunner, continue_svi, run_svi

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
