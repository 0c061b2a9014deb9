"""The official dataset archives (STL-10, CIFAR): fetched once, MD5-checked, extracted safely.

The download streams to a temp file beside the archive (byol/base/atomic.py), hashed while written, and
is renamed into place only once the MD5 matches, so an interrupted or corrupted download never
passes for the archive. Several ranks starting together wait on one file lock (byol/base/file_lock.py)
and only the first fetches; the others find the files in place.
"""
from __future__ import annotations

import hashlib
import tarfile
import urllib.request
from pathlib import Path
from typing import Callable

from byol.base.atomic import PendingFile
from byol.base.errors import DataError
from byol.base.file_lock import held_lock


def download_once(root: Path, name: str, present: Callable[[], bool], fetch: Callable[[], object]) -> None:
    """fetch() under the lock ROOT/.NAME_download.lock unless present() holds once it is held:
    the ranks that waited while another downloaded find every file there and fetch nothing."""
    with held_lock(Path(root) / f".{name}_download.lock", wait=True):
        if not present():
            fetch()


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, md5: str, archive: Path, progress: bool) -> None:
    """Stream `url` to `archive` through a temp file, MD5 while writing; DataError on any failure."""
    from tqdm import tqdm
    part, digest = PendingFile(archive), hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part.tmp, "wb") as out, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B",
                     unit_scale=True, desc=f"downloading {archive.name}", disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    except OSError as e:   # URLError, timeouts and disk errors are all OSErrors
        part.discard()
        raise DataError(f"could not download {url} to '{archive}': {e}; download and extract it "
                        f"by hand into '{archive.parent}'") from None
    if digest.hexdigest() != md5:
        part.discard()
        raise DataError(f"download of {url} is corrupted: MD5 {digest.hexdigest()}, expected {md5}; "
                        f"try again")
    part.commit()


def download_archive(root, url: str, md5: str, archive_name: str, progress: bool = True) -> Path:
    """Fetch `url` to ROOT/ARCHIVE_NAME unless a file with that MD5 is already there, then extract
    it into ROOT (tar's "data" filter: no absolute paths, links out of ROOT or device files).
    Returns ROOT."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / archive_name
    if not (archive.is_file() and file_md5(archive) == md5):
        _fetch(url, md5, archive, progress)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"could not extract '{archive}': {e}") from None
    return root
