"""The deep autoencoder use case: the greedy stack unrolled and fine-tuned on reconstruction,
measured against PCA to the same code size on the same images."""
from __future__ import annotations

from prefect import flow

from layerwise.anchors import RECONSTRUCTION_CODE_SIZE, RECONSTRUCTION_ERRORS, RECONSTRUCTION_SOURCE
from tasks.analyses import compare_with_pca
from tasks.logs import run_logger
from tasks.unroll import unroll_finetune


@flow(name="deep-autoencoder", flow_run_name="{pipeline}-unroll")
def deep_autoencoder(parent_run_id: str, experiment_id: str, pipeline: str, config: dict, inputs: str, labels: str,
                     stack: dict, workdir: str) -> dict:
    """stack: the pretrained stack as pretrain_stack gives it (weights files and stage keys)."""
    unrolled = unroll_finetune(parent_run_id, experiment_id, pipeline, config, inputs, stack["weights"],
                               stack["keys"], workdir)
    pca = compare_with_pca(parent_run_id, experiment_id, pipeline, config, inputs, labels, unrolled["model"],
                           unrolled["test_sq_error"])
    line = (f"test squared error per image: autoencoder {unrolled['test_sq_error']:.2f}, "
            f"PCA {pca['pca_test_sq_error']:.2f}")
    if config["layers"][-1]["size"] == RECONSTRUCTION_CODE_SIZE:
        anchors = ", ".join(f"{name} {value:.2f}" for name, value in RECONSTRUCTION_ERRORS.items())
        line += f" (published for {RECONSTRUCTION_CODE_SIZE}-d codes, {RECONSTRUCTION_SOURCE}: {anchors})"
    run_logger().info(line)
    return {"test_sq_error": unrolled["test_sq_error"], "test_sq_error_stacked": unrolled["test_sq_error_stacked"],
            "pca_test_sq_error": pca["pca_test_sq_error"], "unroll_run_id": unrolled["run_id"],
            "unroll_trained_by": unrolled["trained_by"], "pca_run_id": pca["pca_run_id"], "codes": unrolled["codes"],
            "figures": pca["figures"]}
