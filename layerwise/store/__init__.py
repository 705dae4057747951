"""What is kept on disk: the content-keyed store of finished work and its keys (cache.py), stage
weight files (checkpoint.py), the run's split files, inputs, labels and codes (splits.py, their one
owner), and a lock between processes (locks.py).

May import: torch, layerwise.nn (to rebuild a stage), layerwise.datasets, layerwise.config.
"""
