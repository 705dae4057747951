"""Greedy layer-wise autoencoder pretraining: the torch core (no Prefect, no MLflow in here).

Its rooms, each importing only the rooms below it (import-linter's contracts in pyproject.toml):

    train/  store/  report/     trainings and the greedy loop; what is kept on disk; tables, figures, search
    nn/  machine/               networks, losses, objectives; device, CPU, memory
    datasets/                   where images come from, and a run's splits
    config/                     the pipelines.yaml schema, read and validated once
    errors.py  paths.py         what every room may raise; where things live

Each room's __init__.py says what lives there and what it may import.
"""
