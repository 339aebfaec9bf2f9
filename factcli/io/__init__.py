"""Formats others rely on: checkpoints, reports, atomic files."""
