"""tensorfact: Bayesian additive models of 3-way tensors with decorrelating
reparameterizations.

    y[i,j,t] ~ Normal(mu + a[i] + b[j] + z[t] + A[i,t] + B[j,t] + C[i,j], sigma[i,j]^2)

Typical use::

    import tensorfact
    fit = tensorfact.fit(data)                 # data: a 3-dim xarray.DataArray
    fit.summary(); fit.plot_elbo(); fit.predict()
"""

from tensorfact.api import fit
from tensorfact.build import TensorModel
from tensorfact.data import TensorData, as_tensor_data
from tensorfact.exact import GaussianOracle, GaussianPosterior
from tensorfact.plot import plot_effect, plot_elbo
from tensorfact.results import Fit
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
    "Fit",
    "GaussianOracle",
    "GaussianPosterior",
    "GrandMean",
    "ModelSpec",
    "Noise",
    "Shrinkage",
    "Temporal",
    "TensorData",
    "TensorModel",
    "as_tensor_data",
    "default_spec",
    "fit",
    "plot_effect",
    "plot_elbo",
    "simulate_additive",
    "with_effects",
]
