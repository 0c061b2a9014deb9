"""Stop a long command at a safe point on SIGINT, SIGTERM or SIGUSR1, keeping its work.

Schedulers stop a job by signalling EVERY process of it: Slurm (SIGTERM at the time limit, or the
`--signal=USR1@120` warning), `timeout`, systemd, `docker stop`, and a terminal's Ctrl-C (SIGINT to
the foreground process group). So:

- the main process only records the signal (`StopSignals`); the command polls `stop.signum` and
  stops at its next safe point: training after the step in flight, at its next sync step, with a
  checkpoint written; extraction and latent vectors before the next batch, keeping finished shards;
- DataLoader workers ignore those signals (`ignore_stop_signals` as `worker_init_fn`) and keep
  serving batches until the main process shuts them down, instead of dying under it (which ended
  the run in "DataLoader worker (pid N) is killed by signal: Terminated" with nothing saved);
- `iterate(loader)` starts the workers with the signals blocked, so a signal that lands while a
  worker is being forked waits (pending) until the worker has set SIG_IGN, and reaches the main
  process right after the fork. (With the spawn/forkserver start methods the block does not carry
  over; the worker then ignores the signals from its first line of worker_init_fn on.)

A second signal does not hurry the stop (Slurm and torchrun may both deliver one); SIGKILL does,
and resuming from the last checkpoint is exact anyway. A stopped command raises
`byol.base.errors.Interrupted`; the entry points print its one-line message and exit with its
`exit_status`, 128 + the signal number (SIGINT 130, SIGTERM 143, SIGUSR1 138): what a shell
reports for a process killed by that signal, so scripts and schedulers read it the same way.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Iterable, Iterator

# SIGUSR1 does not exist on Windows; pthread_sigmask neither (the block below is then skipped)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))
CAN_BLOCK = hasattr(signal, "pthread_sigmask")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopSignals:
    """Context manager: while inside, SIGINT/SIGTERM/SIGUSR1 only record themselves in `signum`
    (the first one wins; 0 = none yet). The previous handlers come back on exit.

    Outside the main thread (where Python cannot install handlers) it installs nothing and
    `signum` stays 0: the caller's own handling applies.
    """

    def __init__(self, announce: bool = True):
        self.signum = 0
        self.announce = announce and int(os.environ.get("RANK", "0")) == 0
        self._previous: dict[int, object] = {}

    def _record(self, signum, frame) -> None:
        if self.signum:
            return
        self.signum = signum
        if self.announce:   # os.write: safe wherever the handler interrupts the main thread
            os.write(2, f"{signal_name(signum)} received: stopping at the next safe point "
                        f"(send SIGKILL to stop at once)\n".encode())

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)   # None: set outside Python
        self._previous.clear()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: leave SIGINT/SIGTERM/SIGUSR1 to the main process.

    The worker exits when the main process shuts the loader down, or by itself (torch's watchdog)
    within seconds of the main process dying."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if CAN_BLOCK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)   # blocked by iterate() across the fork


def iterate(loader: Iterable) -> Iterator:
    """Iterate `loader` (a DataLoader built with worker_init_fn=ignore_stop_signals) so that its
    worker processes never see a stop signal: they are forked with the signals blocked; signals
    that arrive meanwhile are delivered to this process once the workers exist. The workers are
    shut down when the iteration ends, breaks or raises."""
    workers = getattr(loader, "num_workers", 0) > 0
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if workers and CAN_BLOCK else None
    try:
        batches = iter(loader)          # forks the workers (they inherit the blocked mask)
    finally:
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    try:
        yield from batches
    finally:
        # Shut the workers down now, explicitly: an exception raised through the loader keeps its
        # iterator referenced from the traceback (pytest.raises, a caller's logging...), and at exit
        # multiprocessing would then stop the workers with SIGTERM, which they ignore: a hang.
        shutdown = getattr(batches, "_shutdown_workers", None)   # torch's multi-process iterator
        if shutdown is not None:
            shutdown()
        del batches
