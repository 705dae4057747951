"""Which images a run trained and was tested on, in MLflow's dataset terms (`log_inputs`): each
split a named dataset with its source (the folder or file the images came from) and a digest, so
the runs table's Dataset column tells runs on different data apart. The digest is the source's
fingerprint (its files' content) and the images the split takes (their identities), hashed: it
changes when the data or the split changes, and costs nothing to compute."""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException

CONTEXT_TAG = "mlflow.data.context"  # how MLflow labels a dataset's role on a run (train, eval, ...)


@dataclass(frozen=True)
class Split:
    context: str  # training, validation, test, unlabelled pool, labelled subset
    name: str     # e.g. "MNIST train (50,000 images: 50,000 labelled)"
    digest: str
    rows: int


def digest(fingerprint: str, part: str, ids: Sequence) -> str:
    text = json.dumps([fingerprint, part, [str(i) for i in ids]])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def split(context: str, dataset: str, fingerprint: str, ids: Sequence) -> Split:
    return Split(context, f"{dataset} {context} ({len(ids):,} images)", digest(fingerprint, context, ids), len(ids))


def log_datasets(mlf, run_id: str, source_uri: str, splits: Sequence[Split]) -> None:
    """The splits as the run's inputs (shown in the Dataset column and on the run page)."""
    if not splits:
        return
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both ways are a local path
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(source_uri)
    inputs = [DatasetInput(MetaDataset(source, s.name, s.digest)._to_mlflow_entity(), [InputTag(CONTEXT_TAG, s.context)])
              for s in splits]
    for attempt in range(3):
        try:
            mlf.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as exc:
            # cells running at once register the same dataset (validation, test): the store's insert
            # of one loses to the other's; the dataset then exists, and the next try links it.
            # SQLite says "UNIQUE constraint failed", PostgreSQL "violates unique constraint"
            if "unique constraint" not in str(exc).lower() or attempt == 2:
                raise
            time.sleep(0.1 * (attempt + 1))
