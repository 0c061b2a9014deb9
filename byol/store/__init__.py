"""The HDF5 feature store: one split = shards + manifest.json (layout: `reader.py`'s docstring).

    format.py   names, constants (feature-space keys, chunk sizes) and the JSON encoding shared by all
    reader.py   FeatureStore: open, verify, read row blocks; check_compatible
    writer.py   ShardWriter (one shard, atomic; extra per-row datasets) and write_manifest (marks a split complete)
    sink.py     ShardSink: the background writer (extraction, latent vectors)
    resume.py   a split dir ready for a (re)run; which finished shards a rerun keeps (extraction's, latent's)

The only code that opens shards or manifests. Torch-free (enforced by tests/test_store_api.py):
evaluation reads stores without importing torch.
"""
from byol.base.file_lock import exclusive_writer     # one writer per store (flock): byol/base/file_lock.py
from byol.store.format import (DTYPES, FEATURE_ATTRS, FEATURE_SETTINGS, FIELDS, FORMAT, MANIFEST, MAX_CHUNK_BYTES,
                               VERSION, chunk_rows, shard_name, to_json)
from byol.store.reader import FeatureStore, check_compatible
from byol.store.sink import ShardSink
from byol.store.writer import ShardWriter, write_manifest

__all__ = ["DTYPES", "FEATURE_ATTRS", "FEATURE_SETTINGS", "FIELDS", "FORMAT", "MANIFEST", "MAX_CHUNK_BYTES",
           "VERSION", "FeatureStore", "ShardSink", "ShardWriter", "check_compatible", "chunk_rows",
           "exclusive_writer", "shard_name", "to_json", "write_manifest"]
