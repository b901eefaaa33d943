"""Every site and param name that :mod:`reparam` creates, in one place.

The decorrelation (:func:`reparam.decorrelate`) and the scan reparameterizations
(:func:`reparam.scan_reparam`) add sample sites and ``numpyro.param`` s named after the site they
reparameterize; NumPyro's autoguides add their own params. Packages that build on ``reparam``
(e.g. to refuse user names that would collide) read the names from here.
"""

from __future__ import annotations

# -- sample sites --------------------------------------------------------------------------
AUX_SUFFIX = "_decorrelated"  # u of the conditional affine map (reparam.decorrelate, StepAffine)
NOISE_SUFFIX = "_noise"  # scan NonCentered: the noise drawn before the loop
DECENTERED_SUFFIX = "_decentered"  # scan LearnableCentering: the partially centred site
WHITENED_SUFFIX = "_whitened"  # scan GaussianConditional: whitened path
CONDITIONED_SUFFIX = "_conditioned"  # scan GaussianConditional: the body site, now observed
JACOBIAN_SUFFIX = "_jacobian"  # scan GaussianConditional: f"{x}_whitened_jacobian" factor
SITE_SUFFIXES = (AUX_SUFFIX, NOISE_SUFFIX, DECENTERED_SUFFIX, WHITENED_SUFFIX,
                 CONDITIONED_SUFFIX)

# -- params ----------------------------------------------------------------------------------
SHIFT_INFIX = "_shift_"  # f"{child}_shift_{parent}": the coefficients xi of one parent
WITHIN_KEY = "within"  # f"{child}_within": coupling of the child with itself along time
DECENTER_KEYS = ("centering", "scale_ref", "decenter_at")  # partial non-centring (decenter)
CENTERED_SUFFIX = "_centered"  # scan LearnableCentering: c in [0, 1]
PARAM_SUFFIXES = (f"_{WITHIN_KEY}", *(f"_{k}" for k in DECENTER_KEYS), CENTERED_SUFFIX)

# -- NumPyro autoguides ------------------------------------------------------------------------
GUIDE_LOC_SUFFIX = "_auto_loc"
GUIDE_SCALE_SUFFIX = "_auto_scale"
GUIDE_SUFFIXES = (GUIDE_LOC_SUFFIX, GUIDE_SCALE_SUFFIX, "_auto_scale_tril")

RESERVED_SUFFIXES = (*SITE_SUFFIXES, *PARAM_SUFFIXES, *GUIDE_SUFFIXES)
RESERVED_INFIXES = (SHIFT_INFIX,)


def shift_param(child: str, parent: str) -> str:
    """The name of the ``numpyro.param`` holding ``child``'s coefficients on ``parent``."""
    return f"{child}{SHIFT_INFIX}{parent}"


def child_param(child: str, key: str) -> str:
    """The name of one of ``child``'s other params (``key`` in ``within``, the decenter keys)."""
    return f"{child}_{key}"
