"""SIGTERM while a point runs (scancel, a scheduler's preemption or time limit, `kill`, or a
launcher stopping the other processes of a point): an interruption with a reason, like Ctrl-C.
The point lifecycle records its run KILLED with it and keeps the checkpoint; then the process
ends by SIGTERM, as the sender asked."""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from study.train.distributed import ALONE, World


class Terminated(BaseException):
    """SIGTERM arrived while a point ran."""


TERMINATED = "SIGTERM: cancelled (scancel), preempted or requeued by the scheduler, or killed"
PEER_ENDED = "another of the point's {} processes ended"
TERMINATED_IN_WORLD = "; or " + PEER_ENDED + ", and its launcher stopped the rest"


@contextmanager
def terminated_as_interrupt(world: World = ALONE):
    """While a point runs, SIGTERM raises Terminated (so its run is recorded KILLED with the
    reason, its checkpoint kept); after the point's files are released the process ends by
    SIGTERM. Under submitit this replaces its ignoring of SIGTERM for the point's duration:
    its own signal for time limits (USR2) still checkpoints and requeues the job."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(_signum, _frame):
        reason = TERMINATED + (TERMINATED_IN_WORLD.format(world.size) if world.size > 1 else "")
        if _waiting is not None:
            _waiting.append(reason)
            return
        raise Terminated(reason)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise  # not reached: SIGTERM ends the process
    finally:
        signal.signal(signal.SIGTERM, previous)


_waiting: list[str] | None = None  # while a point's end is recorded: the SIGTERMs that arrived


@contextmanager
def sigterm_waits():
    """While a point's end is recorded (FAILED or KILLED, with its reason), a SIGTERM waits: the
    launcher stopping the rest of a point's processes a moment after one died, or a second
    scancel, would otherwise cut the record off and leave the run RUNNING. Once it is written
    the SIGTERM is raised (Terminated) and ends the process as its sender asked."""
    global _waiting
    if _waiting is not None:
        yield
        return
    _waiting = []
    try:
        yield
    finally:
        arrived, _waiting = _waiting, None
        if arrived:
            raise Terminated(arrived[0])
