"""The machine a run computes on: the device (device.py), the CPU's instruction set and the
compiled training step (cpu.py), and the memory estimate that refuses what cannot fit (memory.py).

May import: torch, psutil, layerwise.datasets, layerwise.config.
"""
