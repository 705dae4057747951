"""What a process sends to an MLflow tracking server, written down as it is sent: the runs it
creates and every param, metric and tag it logs, one JSON line each in $LAYERWISE_SENT_DIR/<pid>.jsonl.
Only observes: MLflow's REST store (the layer every MlflowClient and fluent call goes through) is
wrapped, the request still goes out as before. A failed send is written down too.

    dask worker ... --preload tests/team/sent.py       # Dask's workers record what their cells send
    python tests/team/sent.py run NAME ...             # `layerwise run NAME ...`, recording
"""
import json
import os
import sys
import threading
from pathlib import Path

from mlflow.store.tracking.rest_store import RestStore

_lock = threading.Lock()
_out = Path(os.environ["LAYERWISE_SENT_DIR"]) / f"{os.getpid()}.jsonl"


def _write(record: dict) -> None:
    with _lock, open(_out, "a") as out:
        out.write(json.dumps(record) + "\n")


def _metric(m) -> list:
    return [m.key, m.value, m.timestamp, m.step]


def _recorded(name, describe):
    original = getattr(RestStore, name)

    def wrapper(self, *args, **kwargs):
        try:
            result = original(self, *args, **kwargs)
        except Exception as exc:
            _write({"call": name, "failed": f"{type(exc).__name__}: {exc}"[:500]})
            raise
        _write({"call": name, **describe(result, *args, **kwargs)})
        return result
    setattr(RestStore, name, wrapper)


_recorded("create_run", lambda run, *a, **k: {"run_id": run.info.run_id})
_recorded("log_batch", lambda _, run_id, metrics=(), params=(), tags=(): {
    "run_id": run_id, "metrics": [_metric(m) for m in metrics], "params": [[p.key, p.value] for p in params],
    "tags": [[t.key, t.value] for t in tags]})
_recorded("log_metric", lambda _, run_id, metric: {"run_id": run_id, "metrics": [_metric(metric)]})
_recorded("log_param", lambda _, run_id, param: {"run_id": run_id, "params": [[param.key, param.value]]})
_recorded("set_tag", lambda _, run_id, tag: {"run_id": run_id, "tags": [[tag.key, tag.value]]})


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's flows, not an installed copy
    from flows.cli import main

    sys.exit(main(sys.argv[1:]))
