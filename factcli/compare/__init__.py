"""Comparisons of relations, layers and runs, and the --require grammar."""
