"""What the codes learned: the deep autoencoder against PCA (errors, digit grids, 2-d maps) and
nearest-neighbour retrieval in code space against pixel space. Figures go to the parent run."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from prefect import task

from layerwise.config import PipelineConfig, RetrievalConfig
from layerwise.datasets import to_unit
from layerwise.machine.cpu import configure_cpu
from layerwise.nn.pca import fit_pca
from layerwise.report.figures import code_scatter, digit_rows, image_grid, retrieval_hits
from layerwise.report.retrieval import nearest, precision_at_k
from layerwise.store.checkpoint import load_unrolled
from layerwise.store.files import load_codes, load_inputs, load_labels
from tasks import tracking
from tasks.context import RunContext
from tasks.data import DataFiles
from tasks.logs import run_logger

FIGURES = "figures"


def _log_figures(mlf, run_ids: list[str], draw) -> list[str]:
    """draw(folder) writes figures into folder and returns their paths; each run logs them under figures/."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = draw(Path(tmp))
        for run_id in run_ids:
            for path in paths:
                mlf.log_artifact(run_id, str(path), FIGURES)
    return [f"{FIGURES}/{Path(path).name}" for path in paths]


@task(name="compare-with-pca")
def compare_with_pca(run: RunContext, cfg: PipelineConfig, data: DataFiles, model_path: str,
                     autoencoder_error: float) -> dict:
    """PCA to the code size on the same training images, its test squared error (child run pca-K),
    beside the unrolled model's (autoencoder_error, measured by the unroll task),
    and the figures: originals / PCA / autoencoder digits; for a 2-d code also the two maps of the
    test set and the decoded grid of codes."""
    configure_cpu()
    k = cfg.sizes[-1]
    pipeline = run.pipeline
    with run.child_run(f"pca-{k}", "pca") as child:
        inputs, labels = load_inputs(data.inputs, ("train", "test")), load_labels(data.labels)
        pca = fit_pca(to_unit(inputs["train"]), k)
        test = to_unit(inputs["test"])
        pca_error = (pca.reconstruct(test) - test).pow(2).sum(dim=1).mean().item()
        child.params({"components": k, "fit_images": len(inputs["train"])})
        child.metrics({"test_sq_error": pca_error})
        run_logger().info(f"[pca-{k}] test squared error per image {pca_error:.2f}")
    model = load_unrolled(model_path)
    shape, classes = labels.shape, labels.classes
    with torch.inference_mode():
        shown = _one_per_class(labels.test, cfg.unroll.grid_digits)
        rows = [("original", test[shown]), (f"PCA-{k}", pca.reconstruct(test[shown])),
                (f"autoencoder\n{'-'.join(map(str, cfg.sizes))}", model.reconstruct(test[shown]))]
        codes = model.encode(test) if k == 2 else None
        if codes is not None:
            radius = 2 * codes.std(dim=0).max().item()
            axis = torch.linspace(-radius, radius, cfg.unroll.decode_grid)
            grid_codes = torch.cartesian_prod(axis.flip(0), axis)[:, [1, 0]]  # rows: y from high to low
            decoded = model.decode_to_pixels(grid_codes)

    def draw(folder: Path) -> list[Path]:
        paths = [digit_rows(rows, folder / "reconstructions.png",
                            f"{pipeline}: test images and their reconstructions (squared error per test image: "
                            f"PCA-{k} {pca_error:.2f}, autoencoder {autoencoder_error:.2f})", shape)]
        if codes is not None:
            paths.append(code_scatter([(f"autoencoder code ({'-'.join(map(str, cfg.sizes))})", codes),
                                       ("first two principal components", pca.encode(test))], labels.test,
                                      folder / "map-2d.png", f"{pipeline}: the {len(test):,} test images in 2-d",
                                      classes))
            paths.append(image_grid(decoded, cfg.unroll.decode_grid, folder / "decoded-grid.png",
                                    f"codes on a {cfg.unroll.decode_grid}x{cfg.unroll.decode_grid} grid over "
                                    f"[-{radius:.2f}, {radius:.2f}]^2, decoded", shape))
        return paths

    figures = _log_figures(child.mlf, [run.parent_run_id], draw)
    return {"pca_run_id": child.id, "pca_test_sq_error": pca_error, "figures": figures}


def _one_per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The first image of each class in turn (class 0, 1, ..., 0's second, 1's second, ...), n in all
    (fewer where the classes run out)."""
    per_class = [(labels == c).nonzero().flatten() for c in labels.unique(sorted=True)]
    picked = [members[i] for i in range(max(map(len, per_class))) for members in per_class if i < len(members)]
    return torch.stack(picked[:n])


@task(name="retrieval", task_run_name="retrieval-{space}")
def retrieval(run: RunContext, cfg: RetrievalConfig, data: DataFiles, codes_path: str, space: str) -> dict:
    """precision@k of test queries against the training images, in the codes of codes_path and in
    pixels (child run retrieval-SPACE), and a figure of a few queries with their hits in both.
    The pixel search is the same for every space of a run: done once, kept in the run's scratch."""
    configure_cpu()
    pipeline, parent_run_id = run.pipeline, run.parent_run_id
    with run.child_run(f"retrieval {space}", "retrieval") as child:
        inputs, labels = load_inputs(data.inputs, ("train", "test")), load_labels(data.labels)
        codes = load_codes(codes_path)
        n = min(cfg.queries or len(inputs["test"]), len(inputs["test"]))
        # the searched images are the labelled training images: the first rows (unlabelled ones follow)
        base_labels = labels.train
        query_labels, labelled = labels.test[:n], len(base_labels)
        base_pixels, queries, shape = to_unit(inputs["train"][:labelled]), to_unit(inputs["test"][:n]), labels.shape
        spaces = {f"code ({codes['train'].shape[1]}-d)": (codes["test"][:n], codes["train"][:labelled]),
                  f"pixels ({base_pixels.shape[1]}-d)": (queries, base_pixels)}
        hits, metrics = {}, {}
        for name, (queries, base) in spaces.items():
            hits[name] = _pixel_hits(queries, base, cfg.k, run.workdir) if name.startswith("pixels") \
                else nearest(queries, base, cfg.k)
            key = "code" if name.startswith("code") else "pixels"
            metrics[f"precision_at_{cfg.k}/{key}"] = precision_at_k(query_labels, base_labels, hits[name])
        child.params({"k": cfg.k, "queries": n, "base_images": len(base_labels),
                      "code_width": codes["train"].shape[1], "space": space})
        child.metrics(metrics)
        tracking.log_metrics(child.mlf, parent_run_id, {f"{key}/{space}": value for key, value in metrics.items()})
        run_logger().info(f"[retrieval {space}] " + ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
                          + f" ({n} test queries against {len(base_labels)} training images)")
        shown = _one_per_class(query_labels, cfg.figure_queries)

        def draw(folder: Path) -> list[Path]:
            panels = [(name, base_pixels[found[shown]], base_labels[found[shown]] == query_labels[shown, None])
                      for name, found in hits.items()]
            return [retrieval_hits(queries[shown], panels, folder / f"retrieval-{space}.png",
                                   f"{pipeline}: {cfg.k} nearest training images per test query "
                                   f"(green: same class)", shape)]

        figures = _log_figures(child.mlf, [child.id, parent_run_id], draw)
    return {"run_id": child.id, **metrics, "figures": figures}


def _pixel_hits(queries: torch.Tensor, base: torch.Tensor, k: int, workdir: Path) -> torch.Tensor:
    """Nearest neighbours in pixel space, searched by the run's first retrieval and read by the rest."""
    path = Path(workdir) / "retrieval" / f"pixel-hits-k{k}-q{len(queries)}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    hits = nearest(queries, base, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(hits, path)
    return hits
