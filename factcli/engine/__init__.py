"""What every analysis stands on: per-layer sums, relations, metrics, the analyze verb."""
