"""The inference methods behind :func:`tensorfact.fit`: their settings
(:mod:`tensorfact.methods.settings`), SVI (:mod:`tensorfact.methods.svi`), NUTS on the
decorrelated model (:mod:`tensorfact.methods.nuts`) and collapsed exact inference
(:mod:`tensorfact.methods.exact`). Each builds a :class:`~tensorfact.results.fit.Fit`."""
