"""What the tasks and flows return: typed results, so the flows and the CLI's summary read fields
instead of probing dict keys. Each kind of run says its own headline."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Union


@dataclass
class CellResult:
    """One fine-tune (a single run's, or an ablation cell's)."""
    run_id: str
    trained_by: str  # run_id, or the earlier run whose identical cell was reused
    n_labels: int
    best_epoch: float
    train_seconds: float
    test_accuracy: Optional[float] = None  # None: a sweep's trial, which never reads the test split
    test_error: Optional[float] = None
    kept_val_accuracy: Optional[float] = None  # the kept epoch's (None without validation images)

    @property
    def reused(self) -> bool:
        return self.trained_by != self.run_id

    def metrics(self) -> dict[str, float]:
        values = {"test_accuracy": self.test_accuracy, "test_error": self.test_error, "best_epoch": self.best_epoch,
                  "train_seconds": self.train_seconds, "kept_val_accuracy": self.kept_val_accuracy}
        return {key: value for key, value in values.items() if value is not None}

    def parent_metrics(self) -> dict[str, float]:
        """What the pipeline's parent run records of it."""
        return {key: value for key, value in (("test_accuracy", self.test_accuracy), ("test_error", self.test_error),
                                              ("kept_val_accuracy", self.kept_val_accuracy)) if value is not None}

    def headline(self) -> str:
        if self.test_error is None:
            return f"validation accuracy {100 * (self.kept_val_accuracy or 0):.2f}% ({self.n_labels} labels)"
        return (f"test error {self.test_error:.2f}% (accuracy {100 * self.test_accuracy:.2f}%, "
                f"{self.n_labels} labels)")


@dataclass
class AblationResult:
    cells: list[dict]    # one row per cell: labels, seed, init, test_error, ..., run_id, trained_by
    summary: list[dict]  # per label count: mean and spread per init, gains
    markdown: str

    def parent_metrics(self) -> dict[str, float]:
        return {}  # the summary's metrics are logged by summarize_ablation

    def details(self) -> str:
        return f"\n{self.markdown}"

    def headline(self) -> str:
        reused = sum(cell["run_id"] != cell["trained_by"] for cell in self.cells)
        return f"{len(self.cells)} cells ({reused} reused)"


@dataclass
class UnrollResult:
    test_sq_error: float
    test_sq_error_stacked: float  # the greedy stack before fine-tuning
    pca_test_sq_error: float
    unroll_run_id: str
    unroll_trained_by: str
    pca_run_id: str
    codes: str  # the unrolled model's middle codes of every split (a scratch file)
    figures: list[str] = field(default_factory=list)

    def parent_metrics(self) -> dict[str, float]:
        return {"test_sq_error": self.test_sq_error, "test_sq_error_stacked": self.test_sq_error_stacked,
                "pca_test_sq_error": self.pca_test_sq_error}

    def headline(self) -> str:
        return (f"test squared error per image {self.test_sq_error:.2f} (greedy stack before unrolling "
                f"{self.test_sq_error_stacked:.2f}), PCA {self.pca_test_sq_error:.2f}")


Outcome = Union[CellResult, AblationResult, UnrollResult]


@dataclass
class RunResult:
    """One pipeline execution: its parent run, what it measured, retrieval by code space."""
    pipeline: str
    parent_run_id: str
    experiment_id: str
    outcome: Outcome
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def headline(self) -> str:
        details = self.outcome.details() if isinstance(self.outcome, AblationResult) else ""
        return f"{details}\n=== {self.pipeline}: {self.outcome.headline()}, wall {self.wall_seconds:.0f} s"

    def as_dict(self) -> dict:
        return asdict(self)
