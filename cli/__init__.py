"""The `lsdflow` command: one module per command group, all resolving models in one place."""
