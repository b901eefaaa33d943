"""tensorfact: Bayesian additive models of 3-way tensors."""
