"""Names tensorfact reserves: the noise and data sites, the result dims, and (read from
:mod:`reparam.names`, the single source) the suffixes the decorrelation, the scan
reparameterizations and the autoguides give their sites and params."""

from __future__ import annotations

from reparam.names import RESERVED_INFIXES, RESERVED_SUFFIXES

NOISE_SITES = ("sigma", "s_sigma", "sigma_series", "log_sigma_series", "df", "s_sigma_time",
               "sigma_time_steps", "log_sigma_time")
DATA_SITE = "y"
RESERVED_NAMES = (*NOISE_SITES, DATA_SITE)
RESERVED_DIMS = ("chain", "draw", "quantile", "sample")

__all__ = [
    "DATA_SITE",
    "NOISE_SITES",
    "RESERVED_DIMS",
    "RESERVED_INFIXES",
    "RESERVED_NAMES",
    "RESERVED_SUFFIXES",
]
