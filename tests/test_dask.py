"""The ablation's cells on a Dask LocalCluster through prefect-dask (the path past one machine)."""
from mlflow.tracking import MlflowClient

from conftest import mnist_root
from flows.pipeline import layerwise_pipeline


def test_ablation_cells_run_on_a_local_dask_cluster(prefect_harness, tracking):
    result = layerwise_pipeline("smoke-ablation", ["ablation.runner=dask", "ablation.seeds=[0]"],
                                mnist_root=str(mnist_root()))
    assert len(result["cells"]) == 4
    client = MlflowClient()
    for cell in result["cells"]:
        run = client.get_run(cell["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["layerwise.stage"] == "finetune"
        assert run.data.metrics["test_error"] == cell["test_error"]
