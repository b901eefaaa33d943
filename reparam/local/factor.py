"""Factorisations of a local precision ``P``: the saddle-free curvature where ``P`` is
indefinite, its Cholesky factor, and the reverse-order LDL factor the exact coefficients come
from (:mod:`reparam.local.analysis`)."""

from __future__ import annotations

import numpy as np


def positive_curvature(precision: np.ndarray, floor: float = 1e-8) -> np.ndarray:
    """``P`` where it is positive definite; else its saddle-free form ``|P| = V |L| V^T``
    (eigenvalues by absolute value, at least ``floor`` times the largest).

    Away from the mode the Hessian can be indefinite along a scale site that enters the
    analysis (a positive parent or child, e.g. ``tau`` of a centred hierarchy, whose
    curvature changes sign across the funnel); ``|P|`` keeps every direction's curvature
    magnitude, so the Newton step goes downhill and the coefficients and guide scales stay
    finite (the saddle-free Newton method). A positive definite ``P`` is returned unchanged.
    """
    try:
        np.linalg.cholesky(precision)
        return precision
    except np.linalg.LinAlgError:
        pass
    values, vectors = np.linalg.eigh(0.5 * (precision + precision.T))
    magnitude = np.abs(values)
    magnitude = np.maximum(magnitude, floor * max(float(magnitude.max()), 1e-300))
    return (vectors * magnitude) @ vectors.T


def cholesky(precision: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a local precision.

    Raises:
        ValueError: if it is not positive definite (naming where to evaluate it).
    """
    try:
        return np.linalg.cholesky(precision)
    except np.linalg.LinAlgError:
        raise ValueError(
            "The local precision is not positive definite at this point; evaluate it nearer "
            "the posterior mode (e.g. at reparam.laplace_mode's point or an SVI median)."
        ) from None


def optimal_factor(precision: np.ndarray) -> np.ndarray:
    """Unit lower-triangular ``N`` with ``N^{-T} P N^{-1}`` diagonal (reverse-order LDL).

    Raises:
        ValueError: if ``precision`` is not positive definite.
    """
    chol = cholesky(np.asarray(precision, np.float64)[::-1, ::-1])
    unit = chol / np.diag(chol)[None, :]
    return unit.T[::-1, ::-1].copy()
