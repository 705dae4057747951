"""What is kept on disk: the content-keyed store of finished work and its keys (cache.py), the
weight files of a stage and of the unrolled network (checkpoint.py), the run's split files, inputs,
labels and codes (files.py, their one owner), and a lock between processes (locks.py).

May import: torch, layerwise.nn (to rebuild a stage), layerwise.datasets, layerwise.config.
"""
