"""Stores behind the repository: the protocol, and the in-memory implementation.

The real stores live in their own modules so that importing this package never imports
a database driver: ``sessionstore.backends.cassandra.CassandraBackend`` (extra
``cassandra``) and ``sessionstore.backends.documentdb.DocumentDBBackend`` (extra
``documentdb``).
"""

from sessionstore.backends.base import (
    UUID_KEY_SPACE,
    BackendState,
    KeyRange,
    RecordHead,
    ScanPage,
    SessionBackend,
    StoredRecord,
    WriteResult,
)
from sessionstore.backends.memory import InMemoryBackend

__all__ = [
    "UUID_KEY_SPACE",
    "BackendState",
    "InMemoryBackend",
    "KeyRange",
    "RecordHead",
    "ScanPage",
    "SessionBackend",
    "StoredRecord",
    "WriteResult",
]
