"""In-sample posterior predictive check per ``(i, j)`` series (:meth:`tensorfact.Fit.ppc`).

The held-out companion is :func:`tensorfact.calibrate`: this module compares the fitted
cells' residuals with the model's noise scale, series by series, which shows a noise model
that is right on average but wrong per series (e.g. one shared ``sigma`` for series of very
different noise), and residual autocorrelation the temporal effects leave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from tensorfact.results.predictive import noise_scale

if TYPE_CHECKING:
    from tensorfact.results.fit import Fit


def ppc(fit: Fit) -> xr.Dataset:
    """In-sample posterior predictive check per ``(i, j)`` series of the observed cells.

    With ``r[i,j,t] = y[i,j,t] - E[loc[i,j,t]]`` (posterior mean of the linear predictor):

    * ``residual_scale = sqrt(mean_t r^2)`` over the series' observed steps;
    * ``noise_scale``: posterior mean of the model's noise scale
      (:func:`tensorfact.results.predictive.noise_scale`), averaged over those steps (for
      Student-t noise the t scale, below the sd);
    * ``ratio = residual_scale / noise_scale`` (about 1, a little less because the effects
      absorb part of the noise, when the noise model fits; well above 1: the model's noise is
      too small for the series);
    * ``lag1_autocorrelation = sum_t rc_t rc_{t+1} / sum_t rc_t^2`` over consecutive observed
      steps, ``rc = r - mean_t r`` (NaN below 3 observed steps);
    * ``cells``: observed steps.

    Returns:
        An ``xarray.Dataset`` over the two non-time dims, with the data's coordinates.
    """
    axis = fit.data.dims.index(fit.spec.time)
    observed = np.moveaxis(fit.data.mask, axis, -1)
    loc = fit.linear_predictor().mean(("chain", "draw")).values
    scale = noise_scale(fit).mean(("chain", "draw")).values
    r = np.where(observed, np.moveaxis(fit.data.values - loc, axis, -1), 0.0)
    cells = observed.sum(-1)
    count = np.maximum(cells, 1)
    residual = np.sqrt((r**2).sum(-1) / count)
    noise = np.where(observed, np.moveaxis(scale, axis, -1), 0.0).sum(-1) / count
    centred = np.where(observed, r - (r.sum(-1) / count)[..., None], 0.0)
    pairs = observed[..., 1:] & observed[..., :-1]
    numerator = np.where(pairs, centred[..., 1:] * centred[..., :-1], 0.0).sum(-1)
    denominator = (centred**2).sum(-1)
    ok = (cells >= 3) & (denominator > 0)
    lag1 = np.where(ok, numerator / np.where(ok, denominator, 1.0), np.nan)
    dims = [d for d in fit.data.dims if d != fit.spec.time]
    coords = {d: fit.data.coords[d] for d in dims}
    none = cells == 0
    variables = {
        "residual_scale": np.where(none, np.nan, residual),
        "noise_scale": np.where(none, np.nan, noise),
        "ratio": np.where(none, np.nan, residual / np.where(none, 1.0, noise)),
        "lag1_autocorrelation": lag1,
        "cells": cells,
    }
    return xr.Dataset({k: (dims, v) for k, v in variables.items()}, coords=coords)
