"""Search queries as rows comparable with a store's: store rows taken as they are, or images embedded
by the encoder the store was extracted with.

Queries (the order given is kept):
  row:N            row N of the searched store (its own row is never returned as its neighbour)
  image file       decoded as `byol latent` decodes it (EXIF-upright, RGB, shorter side to the
                   encoder's image size, centre crop); one that is not an image is skipped with its reason
  folder           every image file below it, sorted by relative path (as byol latent)
  LIST.txt         one path per line, relative to the list's folder
  split:NAME       every row of a split of the dataset in the checkpoint's config

Image queries need the store's encoder: the checkpoint the store records (attrs["checkpoint"]) or
`--checkpoint`. Its feature identity (byol.store.format.FEATURE_ATTRS: encoder, checkpoint sha256,
image size, normalisation, layer) must equal the store's, else one line says which differs:
rows of two feature spaces have no meaningful similarity.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from byol.base.errors import ConfigError, StoreError
from byol.store.format import FEATURE_ATTRS, to_json

ROW_PREFIX = "row:"


@dataclass
class QueryBatch:
    """Up to one batch of readable queries: names [n], embeddings [n, D], uint8 images [n, 3, S, S]
    (None for row queries: the sheet reads those from the store), own store rows [n] (-1: none)."""
    names: list[str]
    embeddings: np.ndarray
    own_rows: np.ndarray
    images: np.ndarray | None = None
    skipped: list[dict] = field(default_factory=list)


def split_queries(queries: list[str], n_rows: int) -> list:
    """Query arguments -> [int store row | str image input], in order; a bad row:N is a ConfigError."""
    out = []
    for query in map(str, queries):
        if not query.startswith(ROW_PREFIX):
            out.append(query)
            continue
        try:
            row = int(query[len(ROW_PREFIX):])
        except ValueError:
            raise ConfigError(f"query {query!r}: write row:N with N a store row number") from None
        if not 0 <= row < n_rows:
            raise ConfigError(f"query {query!r}: the store has rows 0..{n_rows - 1}")
        out.append(row)
    return out


def load_store_encoder(store, checkpoint: str | None, device: str, trust: bool = False):
    """The encoder that wrote `store`'s rows, checked against the store: an EncoderSource on `device`."""
    from byol.encoders.source import PIXELS, load_source
    recorded = store.attrs.get("checkpoint")
    path = checkpoint or recorded
    if not path:
        raise ConfigError(f"{store.split_dir}: the store records no checkpoint: pass --checkpoint (the one it "
                          "was extracted with) to embed image queries")
    if not Path(path).is_file() and path != PIXELS:
        raise ConfigError(f"checkpoint '{path}' (recorded by {store.split_dir}) is not a file here: "
                          "pass --checkpoint with the one the store was extracted with")
    from byol.base.distributed import resolve_device
    encoder, cfg = load_source(path, trust=trust)
    encoder.to(resolve_device(device), store.settings.get("precision", "fp32"))
    attrs, _ = encoder.provenance(cfg, "float32", 1)
    diffs = [f"{key} {_plain(attrs[key])!r} vs the store's {_plain(store.attrs[key])!r}"
             for key in FEATURE_ATTRS if key in store.attrs and _plain(attrs[key]) != _plain(store.attrs[key])]
    if diffs:
        raise StoreError(f"checkpoint '{path}' does not embed like {store.split_dir} ({'; '.join(diffs)}): "
                         "pass --checkpoint with the one the store was extracted with")
    return encoder, cfg


def _plain(value):
    """A value as its JSON form (tuples and lists, numpy and Python numbers compare equal)."""
    return json.loads(to_json(value, sort_keys=True))


def query_batches(store, queries: list, encoder=None, cfg=None, batch_size: int = 256) -> Iterator[QueryBatch]:
    """Embedded queries, in the order given, at most `batch_size` readable ones a batch."""
    for lo in range(0, len(queries), batch_size):
        chunk = queries[lo:lo + batch_size]
        rows = [q for q in chunk if isinstance(q, int)]
        images = [q for q in chunk if not isinstance(q, int)]
        if rows and not images:          # the common cases take the short ways
            yield QueryBatch([f"{ROW_PREFIX}{r}" for r in rows], store.take(rows), np.array(rows, np.int64))
        elif images and not rows:
            yield from _image_batches(images, encoder, cfg, batch_size)
        else:                            # mixed: in order, each kind in its own batch
            for q in chunk:
                yield from query_batches(store, [q], encoder, cfg, batch_size)


def _image_batches(inputs: list[str], encoder, cfg, batch_size: int) -> Iterator[QueryBatch]:
    from byol.data import build_dataset
    from byol.data.batches import iter_batches
    from byol.data.input_list import SPLIT_PREFIX, InputList, expand_inputs
    items = expand_inputs(inputs)
    dataset = InputList([(item, build_dataset(cfg.data, encoder.image_size, item[len(SPLIT_PREFIX):]))
                         if item.startswith(SPLIT_PREFIX) else item for item in items], encoder.image_size)
    ranges = [(a, min(a + batch_size, len(dataset))) for a in range(0, len(dataset), batch_size)]
    for rows in iter_batches(dataset, ranges, num_workers=0):
        embeddings = encoder.embed(rows.images) if len(rows.images) else np.zeros((0, encoder.dim), np.float32)
        yield QueryBatch(list(rows.paths), embeddings, np.full(len(rows.paths), -1, np.int64),
                         rows.images.numpy(), rows.skipped)
