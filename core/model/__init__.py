"""Networks, their geometry, model files and devices."""
