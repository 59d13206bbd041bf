"""The library's exceptions: one root, every class says when it is raised.

::

    SessionStoreError
    ├── InvalidSessionError          bad input, raised before any store is touched
    │   ├── SessionTooLargeError     encoded session above MAX_ENCODED_SIZE
    │   └── InvalidRevisionError     a revision out of range, or too far in the future
    ├── ConflictError                a newer revision is stored: this write is not the newest
    ├── RepositoryClosedError        a call on a repository that is not open
    ├── ConfigurationError           a backend, phase source or job was set up wrongly
    └── BackendError                 a store failed; ``store`` names which one
        ├── BackendUnavailableError  the store could not be reached (connection, no replicas)
        ├── BackendTimeoutError      the store did not answer in time
        ├── BackendRejectedError     the store refused the request (bad query, too large, auth)
        └── RepairQueueError         the durable repair queue could not record or read an entry

Driver exceptions (cassandra-driver, PyMongo) never escape a backend: they are mapped
to one of the ``BackendError`` classes with ``raise ... from exc``, so the original is
kept as ``__cause__``. Messages never contain session contents or credentials.
"""

from __future__ import annotations

import uuid

__all__ = [
    "BackendError",
    "BackendRejectedError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "ConfigurationError",
    "ConflictError",
    "InvalidRevisionError",
    "InvalidSessionError",
    "RepairQueueError",
    "RepositoryClosedError",
    "SessionStoreError",
    "SessionTooLargeError",
]


class SessionStoreError(Exception):
    """Root of every exception this library raises on purpose."""


class InvalidSessionError(SessionStoreError, ValueError):
    """Input failed validation; raised before any store is touched.

    ``fields`` holds the dotted paths of the offending fields (names, never values).
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class SessionTooLargeError(InvalidSessionError):
    """The encoded session exceeds the 16 MiB limit of both stores."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"encoded session is {size} bytes; the limit is {limit} bytes", fields=("answers",)
        )
        self.size = size
        self.limit = limit


class InvalidRevisionError(InvalidSessionError):
    """A revision is not an int in ``[1, 2**63)`` (0 where "none" is allowed), or lies
    further ahead of this process's clock than its ``max_skew`` (see HybridClock).

    ``revision`` is the refused value when it was an int in range (else None).
    """

    def __init__(self, message: str, *, fields: tuple[str, ...], revision: int | None) -> None:
        super().__init__(message, fields=fields)
        self.revision = revision


class ConflictError(SessionStoreError):
    """A save or delete did not become the newest version of the session.

    Raised when the authoritative store already holds a newer revision (another writer
    got there first, possibly with a clock ahead of this one), or, with
    ``expected_revision``, when the stored revision is not the expected one. The stored
    version is not this call's (on Cassandra, this write may have landed and been
    replaced before it was read back; in the dual-write phases the session is queued
    for repair). ``current_revision`` is the stored revision when known; read the
    session again and retry on top of it.
    """

    def __init__(
        self,
        session_id: uuid.UUID,
        *,
        attempted_revision: int,
        current_revision: int | None,
        expected_revision: int | None = None,
    ) -> None:
        if expected_revision is not None:
            what = f"expected revision {expected_revision}, stored {current_revision}"
        else:
            what = f"revision {attempted_revision} lost to the stored {current_revision}"
        super().__init__(f"conflict on session {session_id}: {what}")
        self.session_id = session_id
        self.attempted_revision = attempted_revision
        self.current_revision = current_revision
        self.expected_revision = expected_revision


class RepositoryClosedError(SessionStoreError, RuntimeError):
    """A repository, backend or queue was used before it was opened or after it was closed."""


class ConfigurationError(SessionStoreError):
    """A backend, phase source, queue or job was configured with unusable settings."""


class BackendError(SessionStoreError):
    """A store failed to serve a request. ``store`` is the backend's name."""

    def __init__(self, message: str, *, store: str) -> None:
        super().__init__(f"[{store}] {message}")
        self.store = store


class BackendUnavailableError(BackendError):
    """The store could not be reached: connection refused, no live replicas, overloaded."""


class BackendTimeoutError(BackendError):
    """The store did not answer within the configured timeout."""


class BackendRejectedError(BackendError):
    """The store refused the request: invalid query, document too large, unauthorized."""


class RepairQueueError(BackendError):
    """The repair queue could not durably record or read an entry."""
