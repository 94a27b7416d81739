"""Scores against labels, validation and checkpoint selection."""
