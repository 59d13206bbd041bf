"""Map a :class:`~sessionstore.StudentSession` to a BSON document and back, exactly.

``from_doc(to_doc(s)) == s`` for every valid session. The layout (one document per
session, keyed by the session UUID)::

    {
      "_id":           Binary(session_id, subtype 4),   # standard UUID representation
      "revision":      Int64,                           # the last-write-wins revision
      "deleted":       false,
      "student_id":    str,
      "assessment_id": str,
      "status":        str,                             # SessionStatus value
      "started_at":    datetime (UTC, ms),
      "updated_at":    datetime (UTC, ms),
      "answers": [
        {"question_id": str, "response": str,
         "answered_at": datetime (UTC, ms),             # omitted when None
         "attachments": [
           {"content_type": str, "filename": str,       # filename omitted when None
            "data": Binary (subtype 0)}]}],
      "metadata":      {str: str},
    }

A tombstone (a deletion that still blocks older writes) is
``{"_id", "revision", "deleted": true}``; it is kept until the purge job removes it from
both stores.

Example::

    doc = to_doc(session)
    assert from_doc(doc) == session
    assert record_from_doc(tombstone_doc(session.session_id, 7)).deleted

The codec does not depend on the collection's codec options: UUIDs are written as
explicit ``Binary`` subtype 4 and read back from either ``uuid.UUID`` or ``Binary``, and
naive datetimes (a client without ``tz_aware=True``) are read as UTC. That is what lets a
collection from a user-built client (or Motor) work unchanged.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from bson.binary import Binary, UuidRepresentation
from bson.int64 import Int64
from pydantic import ValidationError

from sessionstore._errors import InvalidSessionError
from sessionstore.backends.base import StoredRecord
from sessionstore.model import Answer, Attachment, SessionStatus, StudentSession

__all__ = [
    "from_doc",
    "record_from_doc",
    "to_doc",
    "tombstone_doc",
    "uuid_from_bson",
    "uuid_to_bson",
]


def uuid_to_bson(value: uuid.UUID) -> Binary:
    """The ``_id`` of a session: its UUID as BSON binary subtype 4 (big-endian bytes).

    Subtype 4 compares byte-wise, so ``_id`` order equals ``uuid.int`` order, which is
    what range scans rely on.

    >>> uuid_to_bson(uuid.UUID(int=1)).subtype
    4
    """
    return Binary.from_uuid(value, UuidRepresentation.STANDARD)


def uuid_from_bson(value: object) -> uuid.UUID:
    """Read an ``_id`` back, whether the client decoded it to ``uuid.UUID`` or not.

    >>> uuid_from_bson(uuid_to_bson(uuid.UUID(int=1))) == uuid.UUID(int=1)
    True
    """
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, Binary) and value.subtype == 4:
        return value.as_uuid(UuidRepresentation.STANDARD)
    raise InvalidSessionError("stored _id is not a standard UUID", fields=("_id",))


def to_doc(session: StudentSession) -> dict[str, Any]:
    """The BSON document of a live session (see the module docstring for the layout).

    >>> to_doc(StudentSession.create(student_id="s", assessment_id="a"))["deleted"]
    False
    """
    try:
        # model_copy(update=...) skips validation and can leave a plain str here.
        status = SessionStatus(session.status).value
    except ValueError:
        raise InvalidSessionError("unknown session status", fields=("status",)) from None
    return {
        "_id": uuid_to_bson(session.session_id),
        "revision": Int64(session.revision),
        "deleted": False,
        "student_id": session.student_id,
        "assessment_id": session.assessment_id,
        "status": status,
        "started_at": session.started_at,
        "updated_at": session.updated_at,
        "answers": [_answer_doc(a) for a in session.answers],
        "metadata": dict(session.metadata),
    }


def _answer_doc(answer: Answer) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "question_id": answer.question_id,
        "response": answer.response,
        "attachments": [_attachment_doc(att) for att in answer.attachments],
    }
    if answer.answered_at is not None:
        doc["answered_at"] = answer.answered_at
    return doc


def _attachment_doc(att: Attachment) -> dict[str, Any]:
    # ``bytes`` is encoded as BSON binary subtype 0, exactly like ``Binary(data)``;
    # wrapping it in Binary would copy a possibly multi-MB buffer for nothing.
    doc: dict[str, Any] = {"content_type": att.content_type, "data": att.data}
    if att.filename is not None:
        doc["filename"] = att.filename
    return doc


def tombstone_doc(session_id: uuid.UUID, revision: int) -> dict[str, Any]:
    """The document of a deletion at ``revision``.

    >>> sorted(tombstone_doc(uuid.UUID(int=1), 5))
    ['_id', 'deleted', 'revision']
    """
    return {"_id": uuid_to_bson(session_id), "revision": Int64(revision), "deleted": True}


def from_doc(doc: Mapping[str, Any]) -> StudentSession:
    """The session stored in a live-session document; raises InvalidSessionError otherwise.

    The result is validated by the model, so a corrupted or foreign document is reported
    (by field name) instead of being returned half-read.

    >>> s = StudentSession.create(student_id="s", assessment_id="a", revision=3)
    >>> from_doc(to_doc(s)) == s
    True
    """
    if doc.get("deleted"):
        raise InvalidSessionError("document is a tombstone, not a session", fields=("deleted",))
    try:
        answers = tuple(
            {
                "question_id": a["question_id"],
                "response": a["response"],
                "answered_at": _utc(a.get("answered_at")),
                "attachments": tuple(
                    {
                        "content_type": att["content_type"],
                        "filename": att.get("filename"),
                        "data": bytes(att["data"]),
                    }
                    for att in a.get("attachments", ())
                ),
            }
            for a in doc.get("answers", ())
        )
        # The model is strict (no str -> enum, list -> tuple coercion), so convert here.
        data = {
            "session_id": uuid_from_bson(doc["_id"]),
            "student_id": doc["student_id"],
            "assessment_id": doc["assessment_id"],
            "status": SessionStatus(doc["status"]),
            "started_at": _utc(doc["started_at"]),
            "updated_at": _utc(doc["updated_at"]),
            "answers": answers,
            "metadata": dict(doc.get("metadata", {})),
            "revision": int(doc["revision"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        # Name the problem, never the stored values (student data stays out of errors).
        raise InvalidSessionError(
            f"stored document is not a session ({type(exc).__name__})", fields=("<root>",)
        ) from None
    try:
        return StudentSession.model_validate(data)
    except ValidationError as exc:
        fields = tuple(".".join(str(p) for p in err["loc"]) for err in exc.errors())
    # Outside the except block: pydantic's error text echoes the stored values, and
    # neither __cause__ nor __context__ may keep it.
    raise InvalidSessionError(
        f"stored document is not a valid session: {', '.join(fields)}", fields=fields
    )


def record_from_doc(doc: Mapping[str, Any]) -> StoredRecord:
    """A :class:`StoredRecord` for a session document or a tombstone.

    >>> record_from_doc(tombstone_doc(uuid.UUID(int=1), 5)).revision
    5
    """
    if doc.get("deleted"):
        try:
            return StoredRecord.tombstone(uuid_from_bson(doc["_id"]), int(doc["revision"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidSessionError(
                "stored tombstone is malformed", fields=("revision",)
            ) from None
    return StoredRecord.of(from_doc(doc))


def _utc(value: object) -> object:
    # A client without tz_aware=True (e.g. a user's Motor client) decodes BSON datetimes
    # as naive UTC; the model requires aware timestamps.
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
