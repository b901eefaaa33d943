"""The NumPyro model of a specification: :class:`TensorModel` (:mod:`tensorfact.model.tensor`),
its prior distributions (:mod:`tensorfact.model.priors`) and temporal effects written as scan
transitions (:mod:`tensorfact.model.temporal`)."""

from tensorfact.model.tensor import DecorrelateToggle, LocationSite, TensorModel

__all__ = ["DecorrelateToggle", "LocationSite", "TensorModel"]
