"""Prefect flows: one per use case, composed from the tasks in tasks/."""
