"""The index store (DESIGN §4, schema version 2): versioned immutable segments, one-rename commits."""

from indexer.store.atomic import atomic_path, atomic_write_bytes
from indexer.store.layout import FAISS_NAMES, SCHEMA_VERSION, IndexPaths

__all__ = ["FAISS_NAMES", "SCHEMA_VERSION", "IndexPaths", "atomic_path", "atomic_write_bytes"]
