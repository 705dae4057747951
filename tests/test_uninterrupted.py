"""Interrupts that land inside a sqlite store call are delivered after it, so the store is never
left locked. The interrupts are real signals, sent to this process from inside the write (its row
sent, not yet committed) and from SQLAlchemy's clean-up of it, where the handler used to run: a
lock kept that way made ending the run KILLED wait out sqlite's 20 s timeout and fail."""
import os
import signal
import threading
import time

import pytest
from mlflow.entities import Metric
from sqlalchemy.orm import Session

from flows import interrupts
from flows.cli import _interrupt
from tasks.tracking import client, run_status, start_run
from tasks.uninterrupted import interrupts_held


class Signalled(BaseException):  # as Prefect's TerminationSignal: not an error, an interrupt
    pass


@pytest.fixture
def handlers():
    """The run's own handlers, as the CLI installs them; the test's are restored after."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _interrupt)
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)
    interrupts.reset()  # the interrupts it took stop no training of the tests after it


def signal_inside_the_write(monkeypatch, signum: int) -> None:
    """The next write sends signum to this process once its row is sent (the write lock held) and
    again while its session is closed: each handler runs right there."""
    commit, close, armed = Session.commit, Session.close, []

    def commit_signalled(self):
        self.flush()
        armed.append(True)
        os.kill(os.getpid(), signum)
        return commit(self)

    def close_signalled(self):
        if armed:
            armed.clear()
            os.kill(os.getpid(), signum)
        return close(self)
    monkeypatch.setattr(Session, "commit", commit_signalled)
    monkeypatch.setattr(Session, "close", close_signalled)


def terminate(signum, frame):
    """As Prefect's handler during a flow: raises on every SIGTERM, the second one too."""
    raise Signalled(signum)


@pytest.mark.parametrize("signum,raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Signalled)],
                         ids=["ctrl-c", "sigterm-in-a-flow"])
def test_an_interrupt_inside_a_store_write_waits_for_it(tracking, handlers, monkeypatch, signum, raised):
    """Unheld, Ctrl-C loses the write; two SIGTERMs under Prefect's handler also leave the store
    locked, so that ending the run KILLED fails after sqlite's 20 s timeout."""
    signal.signal(signal.SIGTERM, terminate)
    mlf = client()
    run_id = start_run(mlf, mlf.create_experiment("interrupted"), "run", {})
    signal_inside_the_write(monkeypatch, signum)
    started = time.monotonic()
    with pytest.raises(raised):
        with run_status(mlf, run_id):  # ends the run KILLED while the interrupt unwinds
            mlf.log_batch(run_id, metrics=[Metric("loss", 1.0, int(time.time() * 1000), 0)])
    assert time.monotonic() - started < 10
    monkeypatch.undo()
    run = mlf.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.metrics == {"loss": 1.0}  # the write completed first


def test_sigterm_goes_to_the_handler_that_was_installed(handlers):
    signal.signal(signal.SIGTERM, terminate)
    reached = False
    with pytest.raises(Signalled):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            reached = True
    assert reached  # the block ran to its end first
    assert signal.getsignal(signal.SIGTERM) is terminate and signal.getsignal(signal.SIGINT) is _interrupt


def test_two_ctrl_c_inside_are_one_interrupt_after(handlers):
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            reached = True
    assert reached
    assert signal.getsignal(signal.SIGINT) is _interrupt


def test_outside_the_main_thread_nothing_is_held():
    done = []

    def work():
        with interrupts_held():  # signal.signal would raise here: handlers are the main thread's
            done.append(True)
    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=10)
    assert done
