"""Greedy layer-wise autoencoder pretraining: the torch code (no Prefect, no MLflow in here)."""
