"""The model registry: each registered classifier version says what it is (pipeline, labels, init,
its validation and test results), and the alias `champion` names the version to use: the best by
validation accuracy, never by test error. `models:/NAME-classifier@champion` loads it."""
from __future__ import annotations

from typing import Optional

from mlflow.exceptions import MlflowException

from tasks.logs import run_logger

CHAMPION = "champion"
VAL_TAG = "val_accuracy"  # the version's kept epoch's validation accuracy: what the champion is chosen by


def describe_version(mlf, name: str, version: str, tags: dict[str, object]) -> None:
    for key, value in tags.items():
        if value is not None:
            mlf.set_model_version_tag(name, version, key, str(value))


def champion(mlf, name: str):
    """The version the alias names now (None before the first)."""
    try:
        return mlf.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote_if_better(mlf, name: str, version: str, val_accuracy: Optional[float]) -> bool:
    """Moves `champion` to this version when its validation accuracy beats the champion's (or there
    is none yet). A version without validation accuracy (data.val_size 0) is never promoted."""
    if val_accuracy is None:
        run_logger().info(f"{name} v{version}: no validation accuracy (data.val_size is 0), not a champion")
        return False
    current = champion(mlf, name)
    held = float(current.tags.get(VAL_TAG, "-inf")) if current is not None else None
    if held is not None and not val_accuracy > held:
        run_logger().info(f"{name} v{version}: validation accuracy {val_accuracy:.4f} does not beat the champion "
                          f"v{current.version}'s {held:.4f}")
        return False
    mlf.set_registered_model_alias(name, CHAMPION, version)
    run_logger().info(f"{name}@{CHAMPION} is now v{version} (validation accuracy {val_accuracy:.4f}"
                      + (f", was v{current.version} at {held:.4f})" if current is not None else ")"))
    return True
