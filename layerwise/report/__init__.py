"""What results become: tables of an ablation (tables.py), figures (figures.py), the published
reference points (anchors.py), nearest-neighbour retrieval (retrieval.py), and a sweep's search on
Optuna (search.py).

May import: torch, pandas, matplotlib, optuna, layerwise.config, layerwise.store.locks (the study's
schema lock between sweep workers). Nothing here trains.
"""
