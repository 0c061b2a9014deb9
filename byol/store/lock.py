"""One writer per output directory: a second extraction into the same feature store refuses at once.

Two processes writing the same shards would each rename their own temp files over the other's,
and one would write a manifest listing shards the other replaced. So whoever writes a store holds
an exclusive `flock` on DIR/.lock for the whole run; the lock file records who holds it. The kernel
releases the lock when the holder exits, however it dies (SIGKILL included), so a stale lock
file never blocks a later run. Where `fcntl` is missing (Windows) no lock is taken.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from byol.errors import StoreError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def exclusive_writer(directory: str | Path, what: str = "extraction") -> Iterator[Path]:
    """Hold DIR/.lock while the body runs; StoreError naming the holder if another process holds it."""
    try:
        import fcntl
    except ImportError:      # no flock: one writer at a time is then up to the user
        yield Path(directory)
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise StoreError(f"'{directory}' is being written by another {what} ({holder}); wait for it "
                             f"to finish, or write to another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield directory
    finally:
        os.close(fd)       # closing releases the flock


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
