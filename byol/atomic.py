"""Atomic file writes: every file this project writes appears whole or not at all.

Write to a hidden temp file in the same folder (same filesystem, so the rename is atomic), fsync,
then `os.replace` over the final name. A crash or a full disk at any moment leaves the previous
file (or none) under the final name and removes the temp file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator

from byol.errors import WriteError


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write by any means (h5py, torch.save ...); renamed over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:        # ENOSPC, EDQUOT, EFBIG, EACCES ...: say which file, and that the old one stands
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_error(path: Path, error: OSError) -> WriteError:
    kept = "the previous file is unchanged" if Path(path).exists() else "nothing was written"
    return WriteError(f"could not write '{path}': {error.strerror or error} (errno {error.errno}); {kept}. "
                      f"Free some space (or choose another directory) and run the command again")


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def file_sha256(path: str | Path, block: int = 2**20) -> str:
    """SHA-256 hex digest of a file read in 1 MB blocks, so any file hashes in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
