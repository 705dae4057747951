"""The deep autoencoder use case: the greedy stack unrolled and fine-tuned on reconstruction,
measured against PCA to the same code size on the same images."""
from __future__ import annotations

from prefect import flow

from layerwise.report.anchors import RECONSTRUCTION_CODE_SIZE, RECONSTRUCTION_ERRORS, RECONSTRUCTION_SOURCE
from layerwise.config import PipelineConfig
from tasks.analyses import compare_with_pca
from tasks.context import RunContext
from tasks.data import DataFiles
from tasks.logs import run_logger
from tasks.pretrain import StackFiles
from tasks.results import UnrollResult
from tasks.unroll import unroll_finetune


@flow(name="deep-autoencoder", flow_run_name="{run.pipeline}-unroll", validate_parameters=False)
def deep_autoencoder(run: RunContext, cfg: PipelineConfig, data: DataFiles, stack: StackFiles) -> UnrollResult:
    """stack: the pretrained stack as pipeline.pretrain gives it (weights files and stage keys)."""
    unrolled = unroll_finetune(run, cfg, data, stack)
    pca = compare_with_pca(run, cfg, data, unrolled.model, unrolled.test_sq_error)
    line = (f"test squared error per image: autoencoder {unrolled.test_sq_error:.2f}, "
            f"PCA {pca['pca_test_sq_error']:.2f}")
    if cfg.layers[-1].size == RECONSTRUCTION_CODE_SIZE:
        anchors = ", ".join(f"{name} {value:.2f}" for name, value in RECONSTRUCTION_ERRORS.items())
        line += f" (published for {RECONSTRUCTION_CODE_SIZE}-d codes, {RECONSTRUCTION_SOURCE}: {anchors})"
    run_logger().info(line)
    return UnrollResult(unrolled.test_sq_error, unrolled.test_sq_error_stacked, pca["pca_test_sq_error"],
                        unrolled.run_id, unrolled.trained_by, pca["pca_run_id"], unrolled.codes, pca["figures"])
