"""What a fit returns: the labelled :class:`~tensorfact.results.fit.Fit`
(:mod:`~tensorfact.results.fit`), the record of how it was made
(:mod:`~tensorfact.results.record`), labelling draws (:mod:`~tensorfact.results.labels`),
the posterior predictive (:mod:`~tensorfact.results.predictive`) and the netCDF file of a fit
(:mod:`~tensorfact.results.io`).

This package knows the specification and the data, never the model code or the inference
methods: a fit that trains again (``resume``) calls back the method that made it.
"""

from tensorfact.results.fit import Fit
from tensorfact.results.labels import check_finite_draws, posterior_dataset
from tensorfact.results.record import FitRecord, NUTSRecord, SVIRecord

__all__ = ["Fit", "FitRecord", "NUTSRecord", "SVIRecord", "check_finite_draws",
           "posterior_dataset"]
