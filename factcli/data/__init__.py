"""Dataset specs, file readers and the shipped digits."""
