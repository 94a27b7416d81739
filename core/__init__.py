"""lsdflow domain code: importable without Prefect or MLflow."""
