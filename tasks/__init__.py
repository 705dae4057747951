"""Prefect tasks: thin wrappers that load inputs, call the torch code, log to MLflow, return paths or run ids."""
