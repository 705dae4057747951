"""A Ctrl-C is never lost: where its KeyboardInterrupt is raised inside code whose exceptions
cannot propagate (a __del__, as pydantic's callbacks during the imports), Python prints 'Exception
ignored' and drops it, and the run went on to its end; the CLI delivers it again. And an interrupt
raised inside exec()'d source no longer turns the CLI's exit 130 into death by SIGINT (-2)."""
import os
import signal
import subprocess
import sys

import pytest

from flows import interrupts
from servers import default_sigint


@pytest.fixture
def installed(monkeypatch):
    """The CLI's handlers and hook, as `layerwise` installs them in a terminal; the test's are
    restored after. A suite started in the background (`make test &` in a script) ignores SIGINT,
    and install() leaves an ignored Ctrl-C ignored: here Python's own Ctrl-C handler comes first."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored by monkeypatch
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts.install()
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)
    interrupts.reset()


class Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):  # the handler runs in here, where its KeyboardInterrupt cannot propagate
            pass


def test_an_interrupt_dropped_inside_a_finaliser_is_delivered_again(installed, capsys):
    with pytest.raises(KeyboardInterrupt):
        Finalised()  # made and finalised at once
        for _ in range(10_000_000):
            pass
    assert "Exception ignored" not in capsys.readouterr().err


def test_an_interrupt_swallowed_on_its_way_still_stops_the_training(installed):
    """Code that catches everything and keeps it (as a Prefect call keeps a BaseException in a future
    nobody reads) swallows the KeyboardInterrupt; the training loop stops at its next batch anyway,
    with an interrupt, instead of training on to its end."""
    import torch

    from layerwise.train.loop import Batches, Phase, Progress, Stopped, fit

    model = torch.nn.Linear(4, 1)
    x = torch.randn(64, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    swallowed, epochs = [], []

    def step(idx):
        loss = model(x[idx]).pow(2).mean()
        return loss, loss

    def report(epoch_report):
        epochs.append(epoch_report.epoch)
        if epoch_report.epoch == 2:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1_000_000):  # the handler raises in here
                    pass
            except BaseException as exc:  # noqa: BLE001 - what the swallowing library does
                swallowed.append(exc)

    with pytest.raises(Stopped):
        fit(Batches(step, len(x), 16, torch.Generator().manual_seed(0)), [Phase(1000, lambda: (opt, None))],
            Progress("tiny", "", "loss"), callback=report)
    assert [type(exc) for exc in swallowed] == [KeyboardInterrupt]
    assert epochs == [1, 2]  # stopped in the epoch after the swallowed interrupt


SCRIPT = """
import os, signal, sys, threading
from flows import interrupts
interrupts.install()
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    exec("while True: pass")
except KeyboardInterrupt:
    interrupts.forget_exec_interrupt() if sys.argv[1] == "forget" else None
sys.exit(130)
"""


@pytest.mark.slow  # spawns processes
def test_an_interrupt_inside_exec_source_exits_130_not_by_sigint(tmp_path):
    (tmp_path / "interrupted_in_exec.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    codes = {how: subprocess.run([sys.executable, "-m", "interrupted_in_exec", how], env=env, timeout=120,
                                 preexec_fn=default_sigint).returncode
             for how in ("keep", "forget")}
    assert codes == {"keep": -signal.SIGINT, "forget": 130}  # the first: CPython's own behaviour
