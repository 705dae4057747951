"""The networks and what they minimise: autoencoders (dense, conv, unrolled), the classifier the
encoders become, the losses and code penalties, the unlabelled objectives of a fine-tune, weight
transfer and freezing, and PCA (the linear baseline).

May import: torch, layerwise.datasets (pixel scaling) and layerwise.config (types only). Knows
nothing of training loops, stores or runs.
"""
