"""Recursive Feature Machines: kernels and the estimator."""
