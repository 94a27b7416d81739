"""Affinities and LSDs from raw data: in memory and block by block."""
