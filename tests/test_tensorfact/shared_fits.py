"""Small fits shared by the reliability tests, cached per process.

Every fit compiles its model anew (tens of seconds on a busy 2-core machine), so the
persistence, guard and property tests share these few fits of the conftest's 8 x 5 x 12 data
under one small specification (``mu + a[region] + z[year]``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from unittest import mock

import numpy as np
import xarray as xr

import tensorfact
from reparam.programs import PROGRAMS
from tensorfact import GrandMean, ModelSpec, Shrinkage, Temporal
from tests.test_tensorfact.conftest import COORDS, SIZES

SETTINGS = {"seed": 0, "stop_at_plateau": False, "num_draws": 40}


@functools.cache
def data() -> xr.DataArray:
    """The conftest's ``small_data`` (8 x 5 x 12, 10% missing)."""
    return tensorfact.simulate_additive(SIZES, seed=3, missing=0.1, coords=COORDS,
                                        name="sales")[0]


def spec() -> ModelSpec:
    return ModelSpec(
        dims=tuple(SIZES), time="year",
        effects=(GrandMean(), Shrinkage("a", ("region",)), Temporal("z")),
    )


@functools.cache
def svi_fit(num_steps: int, replica: int = 0, numpy: bool = False):
    """``(fit, input, snapshot)``: an SVI fit of ``num_steps`` steps without plateau stopping,
    the object passed as data (a DataArray, or its NumPy values with ``dims``) and a deep copy
    of that object taken before the call.

    ``replica > 0`` repeats an identical call with the process's shared compiled programs
    set aside (so everything is traced and compiled anew, as in a fresh process)."""
    source = data().copy(deep=True)
    given = np.array(source.values) if numpy else source
    snapshot = copy.deepcopy(given)
    kwargs = {"dims": tuple(SIZES)} if numpy else {}
    with contextlib.ExitStack() as stack:
        if replica:
            stack.enter_context(mock.patch.dict(PROGRAMS._programs, clear=True))
        fit = tensorfact.fit(given, spec(), num_steps=num_steps, **SETTINGS, **kwargs)
    return fit, given, snapshot


@functools.cache
def nuts_fit():
    """``(fit, warnings)``: a deliberately short NUTS run started from ``svi_fit(300)``."""
    start = svi_fit(300)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = tensorfact.fit(data(), spec(), method="nuts", from_fit=start, num_warmup=30,
                             num_samples=30, num_chains=2, seed=0)
    return fit, [w for w in caught if issubclass(w.category, RuntimeWarning)]
