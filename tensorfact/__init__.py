"""tensorfact: Bayesian additive models of 3-way tensors with decorrelating
reparameterizations.

    y[i,j,t] ~ Normal(mu + a[i] + b[j] + z[t] + A[i,t] + B[j,t] + C[i,j], sigma[i,j]^2)

Typical use::

    import tensorfact
    fit = tensorfact.fit(data)                 # data: a 3-dim xarray.DataArray
    fit.summary(); fit.plot_elbo(); fit.predict()
    fit.save("fit.nc"); fit = tensorfact.load("fit.nc").resume(1000)
"""

from reparam.infer.svi import NonFiniteLoss
from tensorfact.api import check_inputs, fit, load
from tensorfact.calibration import Calibration, calibrate
from tensorfact.data import TensorData, as_tensor_data
from tensorfact.model.tensor import TensorModel
from tensorfact.plot import plot_effect, plot_elbo
from tensorfact.results.fit import Fit
from tensorfact.simulate import simulate_additive
from tensorfact.spec import (
    GrandMean,
    ModelSpec,
    Noise,
    Shrinkage,
    Temporal,
    default_spec,
    with_effects,
)

__all__ = [
    "Calibration",
    "Fit",
    "GrandMean",
    "ModelSpec",
    "Noise",
    "NonFiniteLoss",
    "Shrinkage",
    "Temporal",
    "TensorData",
    "TensorModel",
    "as_tensor_data",
    "calibrate",
    "check_inputs",
    "default_spec",
    "fit",
    "load",
    "plot_effect",
    "plot_elbo",
    "simulate_additive",
    "with_effects",
]
