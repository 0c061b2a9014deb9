"""The HDF5 feature store: one split = shards + manifest.json (layout: `reader.py`'s docstring).

    format.py   names, constants and the JSON encoding shared by reader and writer
    reader.py   FeatureStore: open, verify, read row blocks; check_compatible
    writer.py   ShardWriter (one shard, atomic) and write_manifest (marks a split complete)
    sink.py     ShardSink: extraction's background writer
    lock.py     exclusive_writer: one writer per store (flock)

Torch-free (enforced by tests/test_store.py): evaluation reads stores without importing torch.
"""
from byol.atomic import file_sha256
from byol.store.format import DTYPES, ENCODER_KEYS, FIELDS, FORMAT, MANIFEST, VERSION, shard_name, to_json
from byol.store.lock import exclusive_writer
from byol.store.reader import FeatureStore, check_compatible
from byol.store.sink import ShardSink
from byol.store.writer import MAX_CHUNK_BYTES, ShardWriter, write_manifest

__all__ = ["DTYPES", "ENCODER_KEYS", "FIELDS", "FORMAT", "MANIFEST", "MAX_CHUNK_BYTES", "VERSION", "FeatureStore",
           "ShardSink", "ShardWriter", "check_compatible", "exclusive_writer", "file_sha256", "shard_name",
           "to_json", "write_manifest"]
