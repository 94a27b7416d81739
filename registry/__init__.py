"""The MLflow layer: tracking, the model registry, evaluations recorded with model versions."""
