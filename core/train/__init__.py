"""Training with gunpowder: pipeline, targets, augmentations, losses."""
