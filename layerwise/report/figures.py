"""The analyses' figures (matplotlib, written to files; no tracking, no orchestration)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

MNIST_SHAPE = (1, 28, 28)  # C, H, W


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _picture(image: torch.Tensor, shape: tuple[int, int, int]):
    """A flat image as what imshow takes: [H, W] for grey, [H, W, 3] for colour."""
    c, h, w = shape
    image = image.reshape(c, h, w).clamp(0, 1)
    return image[0].numpy() if c == 1 else image.permute(1, 2, 0).numpy()


def _imshow(ax, picture) -> None:
    # grey: dark strokes on white, as digits are drawn; colour: as the image is
    ax.imshow(picture, cmap="gray_r" if picture.ndim == 2 else None, vmin=0, vmax=1)


def _show(ax, image: torch.Tensor, shape: tuple[int, int, int], frame: Optional[str] = None) -> None:
    _imshow(ax, _picture(image, shape))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame:
            spine.set_color(frame)
            spine.set_linewidth(2.5)


def digit_rows(rows: list[tuple[str, torch.Tensor]], path: Path, title: str,
               shape: tuple[int, int, int] = MNIST_SHAPE) -> Path:
    """One row of images per (label, images) pair: e.g. originals, PCA and autoencoder reconstructions."""
    plt = _pyplot()
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n + 1.6, 1.0 * len(rows) + 0.5), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            _show(axes[r][c], images[c], shape)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def code_scatter(panels: list[tuple[str, torch.Tensor]], labels: torch.Tensor, path: Path, title: str,
                 classes: Optional[list[str]] = None) -> Path:
    """2-d codes, one panel per (title, codes) pair side by side, coloured by class."""
    plt = _pyplot()
    n = len(classes) if classes else int(labels.max()) + 1
    cmap = "tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (name, codes) in zip(axes[0], panels):
        points = ax.scatter(codes[:, 0].numpy(), codes[:, 1].numpy(), c=labels.numpy(), cmap=cmap, s=2,
                            alpha=0.6, vmin=-0.5, vmax=n - 0.5, rasterized=True)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(points, ax=list(axes[0]), ticks=range(n) if n <= 20 else None, label="class", shrink=0.8)
    if classes and n <= 20:
        bar.set_ticklabels(classes)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(images: torch.Tensor, n: int, path: Path, title: str,
               shape: tuple[int, int, int] = MNIST_SHAPE) -> Path:
    """n x n images (row-major) as one picture without gaps."""
    plt = _pyplot()
    c, h, w = shape
    tiles = images.reshape(n, n, c, h, w).clamp(0, 1)
    canvas = tiles.permute(2, 0, 3, 1, 4).reshape(c, n * h, n * w)
    fig, ax = plt.subplots(figsize=(6, 6.3))
    _imshow(ax, canvas[0].numpy() if c == 1 else canvas.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def retrieval_hits(queries: torch.Tensor, spaces: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path,
                   title: str, shape: tuple[int, int, int] = MNIST_SHAPE) -> Path:
    """Per query a row per space: the query, then its hits (images) framed green when their label
    is the query's, red otherwise. spaces: (name, hit images [q, k, C*H*W], hit is correct [q, k])."""
    plt = _pyplot()
    k = spaces[0][1].shape[1]
    rows = len(queries) * len(spaces)
    fig, axes = plt.subplots(rows, k + 1, figsize=(0.8 * (k + 1) + 1.8, 0.85 * rows + 0.6), squeeze=False)
    for q, query in enumerate(queries):
        for s, (name, hits, correct) in enumerate(spaces):
            row = axes[q * len(spaces) + s]
            _show(row[0], query, shape, frame="black")
            row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            for j in range(k):
                _show(row[j + 1], hits[q, j], shape, frame="green" if correct[q, j] else "red")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
