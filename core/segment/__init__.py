"""Fragments, agglomeration, segments, and choosing the threshold."""
