"""Training over in-memory tensors: one epoch loop (loop.py) that every training runs through,
the optimizers and schedules built from a config object (optim.py), the batched passes over a
dataset (evaluate.py), and the three trainings on it: a layer's autoencoder (autoencoder.py), the
classifier (classifier.py), the unrolled stack (unroll.py); then the greedy loop (stack.py) and
fine-tuning (finetune.py) as library calls. Progress goes to a callback, never to a tracker.

May import: torch, layerwise.nn, layerwise.datasets, layerwise.machine, layerwise.config. Takes
resolved configs (PipelineConfig's layers, a cell's finetune) and re-checks nothing they hold.
"""
