"""PCA, the linear one-layer baseline a deep autoencoder is measured against."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PCA:
    mean: torch.Tensor        # (features,)
    components: torch.Tensor  # (k, features), orthonormal rows, by decreasing variance

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return code @ self.components + self.mean

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def fit_pca(x: torch.Tensor, k: int) -> PCA:
    """The top-k principal directions of x, exactly (eigenvectors of the covariance, in float64)."""
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k must lie between 1 and {x.shape[1]}, got {k}")
    mean = x.mean(dim=0)
    centred = (x - mean).double()
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return PCA(mean, vectors[:, -k:].flip(1).T.contiguous().to(x.dtype))
