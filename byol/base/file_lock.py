"""One process at a time: an exclusive `flock` on a lock file, the project's one file lock.

Two uses. Whoever writes a feature store holds DIR/.lock for the whole run, and a second writer
refuses at once naming the holder (`exclusive_writer`): two processes writing the same shards
would rename their temp files over each other's, and one would write a manifest listing shards
the other replaced. Ranks that all need a dataset download (STL-10, CIFAR) wait for the one that fetches it
(`held_lock(path, wait=True)`). The lock file records who holds it. The kernel releases the lock
when the holder exits, however it dies (SIGKILL included), so a stale lock file never blocks a
later run. Where `fcntl` is missing (Windows) no lock is taken: one process at a time is then up
to the user.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from byol.base.errors import StoreError

LOCK_NAME = ".lock"


class LockHeld(Exception):
    """Another process holds the lock (only with wait=False); `holder` says who."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


@contextlib.contextmanager
def held_lock(path: str | Path, wait: bool) -> Iterator[Path]:
    """Hold an exclusive flock on the file `path` while the body runs: wait for it, or raise LockHeld."""
    try:
        import fcntl
    except ImportError:
        yield Path(path)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockHeld(_read_holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield path
    finally:
        os.close(fd)       # closing releases the flock


@contextlib.contextmanager
def exclusive_writer(directory: str | Path, what: str = "extraction") -> Iterator[Path]:
    """Hold DIR/.lock while the body runs; StoreError naming the holder if another process holds it."""
    directory = Path(directory)
    try:
        with held_lock(directory / LOCK_NAME, wait=False):
            yield directory
    except LockHeld as e:
        raise StoreError(f"'{directory}' is being written by another {what} ({e.holder}); wait for it "
                         f"to finish, or write to another --out") from None


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
