"""Oracles for tests and benchmarks, not used by the library itself: the dense Gaussian
posterior of the location effects given the hyperparameters (:mod:`tensorfact.testing.dense`)
and the importance-sampled reference posterior (:mod:`tensorfact.testing.reference`)."""
