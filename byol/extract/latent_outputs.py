"""Where latent vectors go (`--format`; layouts: byol/extract/latent_command.py), as sinks of extraction's core
(byol/extract/embed_loop.py): the store (byol.store's ShardSink, resumable), a .npy or a .csv (streamed)."""
from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import numpy as np

from byol.base.atomic import PendingFile, atomic_write_text
from byol.base.errors import ConfigError, StoreError
from byol.base.file_lock import exclusive_writer
from byol.store import MANIFEST, ShardSink, ShardWriter, write_manifest
from byol.store.resume import keep_leading_shards, prepare_split_dir, shard_count

HEAD_FIELDS = ("head_hidden", "head_probs", "head_pred")
NPY_FILES = ("npy", "paths.txt", "head_classes.json", *(f"{name}.npy" for name in HEAD_FIELDS))


def head_datasets(head) -> dict:
    """{field: (width, dtype)} of a head's outputs: hidden [N, h], probs [N, C] float32, pred [N] int64."""
    return dict(zip(HEAD_FIELDS, ((head.hidden_width, np.float32), (head.n_classes, np.float32), (None, np.int64))))


def out_base(out: Path, fmt: str) -> Path:
    return out.with_suffix("") if fmt != "store" and out.suffix.lower() in (".npy", ".csv") else out


def _refuse_existing(out: Path, found: list[Path], overwrite: bool) -> None:
    if found and not overwrite:
        raise ConfigError(f"--out '{out}' already holds output ({found[0].name}); choose another --out "
                          f"or pass --overwrite")


class StoreOut:
    """The store. A run stopped midway left finished shards (no manifest): a rerun with the same
    settings keeps them (`kept`, `kept_rows`) and starts at the input after theirs (`start`; the
    inputs skipped before it are read again for their reasons); a complete store is refused unless
    `overwrite`."""

    def __init__(self, out: Path, dim: int, attrs: dict, settings: dict, rows_per_shard: int, inputs,
                 head=None, overwrite: bool = False):
        self.out, self.dim, self.attrs, self.settings, self.outputs = out, dim, attrs, settings, [str(out)]
        with contextlib.ExitStack() as held:    # one writer per store: released on error, else by finish()/abort()
            held.enter_context(exclusive_writer(out, "latent-vector run"))
            _refuse_existing(out, [p for p in [out / MANIFEST] if p.is_file()], overwrite)
            prepare_split_dir(out, settings, shard_count(len(inputs), rows_per_shard), overwrite)
            self.kept, indices = keep_leading_shards(out, rows_per_shard, dim, "float32")
            self.start, self.kept_rows = int(indices[-1]) + 1 if len(indices) else 0, len(indices)
            missing = np.setdiff1d(np.arange(self.start), indices)
            self.skipped = [s for i in missing.tolist() for s in inputs.read_rows(i, i + 1).skipped]
            if len(self.skipped) < len(missing):
                raise StoreError(f"an input skipped by the stopped run at '{out}' is readable now: the inputs "
                                 f"changed; pass --overwrite to start again")
            self.lock = held.pop_all()
        extra = head_datasets(head) if head is not None else None
        shard_attrs = attrs if head is None else dict(attrs, head_classes=head.classes.tolist())
        self.sink = ShardSink(out, dim, "float32", True, shard_attrs, settings, extra=extra)
        self.put = self.sink.put

    def kept_message(self) -> str:
        return (f"{len(self.kept) + len(self.sink.entries)} finished shards are kept in {self.out} (no manifest): "
                f"run the same command again to complete the store")

    def finish(self) -> dict:
        entries = {**self.kept, **self.sink.finish()}
        if not entries:   # no readable input: still a valid (empty) store
            with ShardWriter(index=0, **self.sink.writer_args) as writer:
                pass
            entries[0] = writer.entry
        write_manifest(self.out, list(entries.values()), self.dim, "float32", self.settings, self.attrs)
        self.lock.close()
        return entries

    def abort(self) -> None:
        self.sink.abort()
        self.lock.close()


class _Streamed:
    """npy, csv: files written over the run under temp names, renamed into place by finish(), dropped
    by abort() (byol/base/atomic.py): a run that fails or is stopped leaves nothing under their names. An
    earlier output (any of `names`) is refused unless `overwrite`, which deletes it."""
    kept, kept_rows, start, skipped = {}, 0, 0, ()

    def __init__(self, out: Path, names: tuple, overwrite: bool):
        self.out, self.files = out, {}
        found = [p for p in (Path(f"{out}.{name}") for name in names) if p.is_file()]   # OUT.skipped.json: replaced
        _refuse_existing(out, found, overwrite)
        for p in found:
            p.unlink()

    def stream(self, name: str, binary: bool = False):
        pending = PendingFile(f"{self.out}.{name}")
        self.files[pending] = open(pending.tmp, "wb") if binary else open(pending.tmp, "w", encoding="utf-8",
                                                                          newline="")
        return self.files[pending]

    def kept_message(self) -> str:
        return "the partial output was removed (rerun the same command)"

    def finish(self) -> dict:
        for pending, file in self.files.items():
            file.close()
            pending.commit()
        return {}

    def abort(self) -> None:
        for pending, file in self.files.items():
            file.close()
            pending.discard()


class _NpyRows:
    """An .npy whose rows are appended as they come (memory stays bounded); close() writes their
    count into the header, in place: numpy pads the header so that the first axis can grow."""

    def __init__(self, file, shape: tuple, dtype):
        self.file, self.shape, self.dtype, self.rows = file, shape, np.dtype(dtype), 0
        self.header_size = self.write_header()

    def write_header(self) -> int:
        np.lib.format.write_array_header_1_0(self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                         "fortran_order": False, "shape": (self.rows, *self.shape)})
        return self.file.tell()

    def write(self, values) -> None:
        self.file.write(np.ascontiguousarray(values, self.dtype).tobytes())
        self.rows += len(values)

    def close(self) -> None:
        self.file.seek(0)
        if self.write_header() != self.header_size:    # a numpy without that padding: the rows would shift
            raise StoreError(f"the .npy header of {self.file.name} changed size; upgrade numpy")


class NpyOut(_Streamed):
    def __init__(self, out: Path, dim: int, head=None, overwrite: bool = False):
        super().__init__(out, NPY_FILES, overwrite)
        self.head = head
        self.arrays = [_NpyRows(self.stream("npy", binary=True), (dim,), np.float32)]
        self.paths = self.stream("paths.txt")
        for name, (width, dtype) in head_datasets(head).items() if head is not None else ():
            self.arrays.append(_NpyRows(self.stream(f"{name}.npy", binary=True), () if width is None else (width,),
                                        dtype))
        self.outputs = [str(p.path) for p in self.files] + ([f"{out}.head_classes.json"] if head else [])

    def put(self, shard, rows, labels, indices, paths, last, extra=None) -> None:
        for array, values in zip(self.arrays, [rows, *(extra[name] for name in HEAD_FIELDS if extra is not None)]):
            array.write(values)
        self.paths.writelines(p.replace("\n", " ") + "\n" for p in paths)

    def finish(self) -> dict:
        for array in self.arrays:
            array.close()
        super().finish()
        if self.head is not None:
            atomic_write_text(f"{self.out}.head_classes.json", json.dumps(self.head.classes.tolist()))
        return {}


class CsvOut(_Streamed):
    def __init__(self, out: Path, dim: int, head=None, overwrite: bool = False):
        super().__init__(out, ("csv",), overwrite)
        self.csv, self.outputs = csv.writer(self.stream("csv")), [f"{out}.csv"]
        header = ["path", "label"] + [f"f{i}" for i in range(dim)]
        if head is not None:
            header += [f"h{i}" for i in range(head.hidden_width)] + [f"p_{c}" for c in head.classes.tolist()] + ["pred"]
        self.csv.writerow(header)

    def put(self, shard, rows, labels, indices, paths, last, extra=None) -> None:
        for r in range(len(rows)):
            row = [paths[r], int(labels[r])] + [f"{v:.9g}" for v in rows[r]]
            if extra is not None:
                row += [f"{v:.9g}" for name in HEAD_FIELDS[:2] for v in extra[name][r]] + [int(extra["head_pred"][r])]
            self.csv.writerow(row)
