"""Nearest-neighbour retrieval: does a space put images of the same digit next to each other?"""
from __future__ import annotations

import torch


def nearest(queries: torch.Tensor, base: torch.Tensor, k: int, batch_size: int = 1024) -> torch.Tensor:
    """Indices into base of each query's k nearest rows (Euclidean), nearest first."""
    base_sq = base.pow(2).sum(dim=1)
    hits = []
    for start in range(0, len(queries), batch_size):
        q = queries[start:start + batch_size]
        # ||q - b||^2 = ||q||^2 - 2 q.b + ||b||^2; ||q||^2 is the same for every b of a query
        distances = base_sq - 2 * q @ base.T
        hits.append(distances.topk(k, dim=1, largest=False).indices)
    return torch.cat(hits)


def precision_at_k(query_labels: torch.Tensor, base_labels: torch.Tensor, hits: torch.Tensor) -> float:
    """The share of the retrieved images (hits: one row of indices per query) whose label is the query's."""
    return (base_labels[hits] == query_labels[:, None]).float().mean().item()
