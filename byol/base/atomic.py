"""Atomic file writes: every file this project writes appears whole or not at all.

The one owner of the pattern: a file is written under a hidden temp name in its own folder
(`.NAME.tmp-<pid>`: same filesystem, so the rename is atomic), flushed to disk (fsync), then
`os.replace`d over the final name, and the folder is fsynced so the rename survives a power cut.
A crash or a full disk at any moment leaves the previous file (or none) under the final name.

    atomic_write_text(path, text)            a whole file in one go (atomic_savefig: a matplotlib figure)
    atomic_write_bytes(path, data)           the same for bytes: what libraries serialize in memory when
                                             their own file writers fail without an OSError (safetensors,
                                             TorchScript), so a full disk is still one WriteError
    with atomic_path(path) as tmp: ...       written by any means that raises OSError (torch.save to a
                                             file object, h5py, ONNX ...)
    PendingFile(path)                        streamed over a long run (shards, .npy, .csv), then
                                             commit() renames it into place, discard() drops it
    stale_temp_files(folder, "shard-*.h5")   temp files a killed run left behind, for cleanup
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator

from byol.base.errors import WriteError

TEMP_MARK = ".tmp-"


def temp_path(path: str | Path) -> Path:
    """The temp name `path` is written under: hidden, beside it, unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def stale_temp_files(folder: str | Path, name: str = "*") -> list[Path]:
    """Temp files of finals matching the glob `name` in `folder` (any process's: a killed run's leftovers)."""
    return sorted(Path(folder).glob(f".{name}{TEMP_MARK}*"))


def fsync_path(path: str | Path) -> None:
    """Flush a file's bytes to disk, so a rename never exposes data still only in the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory so a rename in it survives a power cut; where the OS refuses, there is nothing more to do."""
    with contextlib.suppress(OSError):
        fsync_path(path)


def write_error(path: Path, error: OSError) -> WriteError:
    kept = "the previous file is unchanged" if Path(path).exists() else "nothing was written"
    return WriteError(f"could not write '{path}': {error.strerror or error} (errno {error.errno}); {kept}. "
                      f"Free some space (or choose another directory) and run the command again")


class PendingFile:
    """`path` while it is being written: the bytes go to `tmp`; commit() puts them under `path`.

    For outputs written over a long run (a shard, a memory-mapped .npy, a .csv row by row): until
    commit() nothing exists under the final name, and discard() (on an error or a stop) leaves
    nothing behind."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path(self.path)

    @contextlib.contextmanager
    def guarded(self, cleanup: Callable[[], None] | None = None) -> Iterator[Path]:
        """Around writes to `tmp`: on any error run `cleanup` (default: discard the temp file) and
        re-raise, an OSError (ENOSPC, EDQUOT, EFBIG, EACCES ...) as a WriteError naming `path`."""
        try:
            yield self.tmp
        except OSError as e:
            (cleanup or self.discard)()
            raise write_error(self.path, e) from e
        except BaseException:
            (cleanup or self.discard)()
            raise

    def commit(self) -> Path:
        """fsync the (closed) temp file, rename it over `path`, fsync the folder. WriteError on a failed write."""
        with self.guarded():
            fsync_path(self.tmp)
            os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write by any means (h5py, torch.save ...); renamed over `path` on success."""
    pending = PendingFile(path)
    with pending.guarded():
        yield pending.tmp
    pending.commit()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` whole under `path`, or leave the old file. Libraries that fail a write with their own
    error instead of an OSError (safetensors' writer raises SafetensorError on a full disk) serialize
    to bytes and write through here, so a full disk is one WriteError naming `path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig, path: str | Path, **kwargs) -> Path:
    """A matplotlib figure saved whole or not at all; its format from `path`'s suffix (the temp name has none)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path


def file_sha256(path: str | Path, block: int = 2**20) -> str:
    """SHA-256 hex digest of a file read in 1 MB blocks, so any file hashes in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
