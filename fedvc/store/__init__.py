"""Object and ref stores: the protocols and their memory and disk backends."""

from fedvc.store.base import (
    CorruptObjectError,
    InvalidRefNameError,
    ObjectNotFoundError,
    ObjectStore,
    RefConflictError,
    RefStore,
    StoredObject,
    StoreError,
    validate_ref_name,
)
from fedvc.store.disk import DiskObjectStore, SqliteRefStore, create_store_dir, open_store_dir
from fedvc.store.memory import MemoryObjectStore, MemoryRefStore

__all__ = [
    "CorruptObjectError",
    "DiskObjectStore",
    "InvalidRefNameError",
    "MemoryObjectStore",
    "MemoryRefStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "RefConflictError",
    "RefStore",
    "SqliteRefStore",
    "StoreError",
    "StoredObject",
    "create_store_dir",
    "open_store_dir",
    "validate_ref_name",
]
