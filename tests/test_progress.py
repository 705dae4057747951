"""Progress that reads like a progress bar: a stage or cell says where it is at most every 10 s
(always at its first and last epoch) with epochs done / total and the time left, while every
epoch's metrics still reach MLflow; a grid or sweep counts its cells or trials down."""
import logging

import pytest
from mlflow.tracking import MlflowClient

from layerwise.train.loop import EpochReport
from tasks import logs
from tasks.logs import Countdown, EpochProgress, epoch_progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(logs.time, "monotonic", fake)
    return fake


def test_a_stage_reports_at_most_every_10_s_and_mlflow_gets_every_epoch(tracking, clock, caplog):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("progress")).info.run_id
    progress = EpochProgress(client, run_id)
    printed = []
    with caplog.at_level(logging.INFO, logger="layerwise"):
        for epoch in range(1, 101):  # 3 s an epoch, 5 minutes in all
            clock.now += 3
            caplog.clear()
            progress(EpochReport("finetune pretrained-100-seed0", epoch, 100, {"train_loss": 1 / epoch}, 3.0))
            printed += [(epoch, clock.now, r.getMessage()) for r in caplog.records]
    epochs = [epoch for epoch, _, _ in printed]
    assert epochs[0] == 1 and epochs[-1] == 100
    times = [now for _, now, _ in printed[:-1]]  # every line but the last epoch's: 10 s apart at least
    assert all(later - earlier >= 10 for earlier, later in zip(times, times[1:])) and len(printed) <= 300 / 10 + 2
    assert printed[1][2] == ("[finetune pretrained-100-seed0] epoch 5/100 (5%)  train_loss 0.2  · "
                             "0:00:15 elapsed, 0:04:45 left")
    assert printed[-1][2].endswith("epoch 100/100 (100%)  train_loss 0.01  · done in 0:05:00")
    history = client.get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, 101))


def test_a_stage_that_fails_keeps_the_epochs_it_reported(tracking, clock):
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("failing")).info.run_id
    with pytest.raises(RuntimeError, match="diverged"):
        with epoch_progress(client, run_id) as progress:
            for epoch in (1, 2, 3):  # within FLUSH_EVERY_S: held back until the block ends
                progress(EpochReport("pretrain-1", epoch, 10, {"recon_loss": 5.0 - epoch}, 0.1))
            raise RuntimeError("diverged")
    assert [m.step for m in client.get_metric_history(run_id, "recon_loss")] == [1, 2, 3]


def test_a_countdown_paces_on_the_cells_this_process_trained(clock):
    grid = Countdown(4, "cells")
    assert grid.finished(timed=False) == "1/4 cells done · 0:00:00 elapsed, time left known after the first one trained"
    clock.now += 60
    assert grid.finished() == "2/4 cells done · 0:01:00 elapsed, 0:02:00 left"
    clock.now += 60
    assert grid.finished() == "3/4 cells done · 0:02:00 elapsed, 0:01:00 left"
    clock.now += 30
    assert grid.finished() == "4/4 cells done in 0:02:30"
    sweep = Countdown(20, "trials", done=5)  # a resumed sweep: 5 finished by an earlier process
    clock.now += 600
    assert sweep.finished() == "6/20 trials done · 0:10:00 elapsed, 2:20:00 left"
