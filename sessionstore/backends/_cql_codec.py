"""Map a :class:`~sessionstore.StudentSession` to a Cassandra row and back, exactly.

The row layout (see docs/cassandra.md for the table)::

    session_id uuid, student_id text, assessment_id text, status text,
    started_at timestamp, updated_at timestamp,
    answers text,                      -- JSON of the answers, without binary data
    attachment_data frozen<list<blob>>, -- every attachment's bytes, in answer order
    metadata frozen<map<text,text>>, revision bigint, deleted boolean

Attachments stay raw blobs rather than base64 inside the JSON: base64 costs a third
more, and a 12 MiB drawing would then exceed Cassandra's 16 MiB mutation limit.

Example::

    values = to_row(session)            # INSERT_COLUMNS order, ready to bind
    record = record_from_row(row)       # a row of a SELECT of SELECT_COLUMNS
    assert record.session == session    # exact: ids, ms timestamps, bytes, nesting

``from_row(row)`` accepts any row factory's output: a mapping (``dict_factory``) or a
sequence in :data:`SELECT_COLUMNS` order (tuples, the default named tuples).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic_core
from pydantic import ValidationError

from sessionstore._errors import InvalidSessionError
from sessionstore.backends.base import RecordHead, StoredRecord
from sessionstore.model import Answer, SessionStatus, StudentSession

__all__ = [
    "DATA_COLUMNS",
    "HEAD_COLUMNS",
    "INSERT_COLUMNS",
    "SELECT_COLUMNS",
    "RowDecodeError",
    "from_row",
    "head_from_row",
    "record_from_row",
    "to_row",
    "tombstone_row",
]

#: Columns that hold session content. A save writes all of them; a tombstone nulls them.
DATA_COLUMNS: tuple[str, ...] = (
    "student_id",
    "assessment_id",
    "status",
    "started_at",
    "updated_at",
    "answers",
    "attachment_data",
    "metadata",
)

#: Column order of :func:`to_row` and :func:`tombstone_row`.
INSERT_COLUMNS: tuple[str, ...] = ("session_id", *DATA_COLUMNS, "revision", "deleted")

# WRITETIME of every data column, aliased so that every row factory sees plain names.
# A record's revision is the newest of them and of the revision cell. The library writes
# every cell at its revision, so they agree, except where something else wrote since: a
# column updated by another service (later, with the server's timestamp or its own),
# which makes the stored session newer than the revision cell says, or a historical row
# written before the revision column existed. The newest, not one column's: Cassandra
# resolves conflicts per cell, so a later save must be newer than *every* cell to replace
# the whole row, and a copy elsewhere must know that the row changed.
_WRITETIME_ALIASES: tuple[str, ...] = tuple(f"wt_{c}" for c in DATA_COLUMNS)

#: ``(expression, name)`` pairs of the SELECT list that :func:`from_row` decodes.
SELECT_COLUMNS: tuple[tuple[str, str], ...] = (
    *((c, c) for c in INSERT_COLUMNS),
    *((f"WRITETIME({c})", a) for c, a in zip(DATA_COLUMNS, _WRITETIME_ALIASES, strict=True)),
)

_SELECT_NAMES: tuple[str, ...] = tuple(name for _, name in SELECT_COLUMNS)

#: The SELECT list of :func:`head_from_row`: the revision cells without session content.
HEAD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("revision", "revision"),
    ("deleted", "deleted"),
    *((f"WRITETIME({c})", a) for c, a in zip(DATA_COLUMNS, _WRITETIME_ALIASES, strict=True)),
)

_HEAD_NAMES: tuple[str, ...] = tuple(name for _, name in HEAD_COLUMNS)

# Version of the JSON layout in the ``answers`` column, so it can evolve.
_ANSWERS_FORMAT = 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


class RowDecodeError(ValueError):
    """A stored row is not a valid session. ``fields`` names the columns, never values."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        super().__init__(f"stored row cannot be decoded: {', '.join(fields)}")
        self.fields = fields


# --------------------------------------------------------------------------- encoding


def _millis(value: dt.datetime) -> int:
    # Integer milliseconds: the driver's datetime serializer goes through a float.
    return (value - _EPOCH) // _MS


def _check_utf8(text: str, field: str) -> None:
    # Cassandra's text type is UTF-8; a lone surrogate (valid in a Python str, accepted
    # by the model) would otherwise fail deep inside the driver with a UnicodeError.
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidSessionError("text must be encodable as UTF-8", fields=(field,)) from None


def _encode_answers(answers: Sequence[Answer]) -> tuple[str, list[bytes]]:
    blobs: list[bytes] = []
    items: list[dict[str, Any]] = []
    for answer in answers:
        refs: list[dict[str, Any]] = []
        for att in answer.attachments:
            refs.append({"content_type": att.content_type, "filename": att.filename})
            blobs.append(att.data)
        items.append(
            {
                "question_id": answer.question_id,
                "response": answer.response,
                "answered_at": None if answer.answered_at is None else _millis(answer.answered_at),
                "attachments": refs,
            }
        )
    try:
        # pydantic-core's serializer: the same compact UTF-8 JSON as json.dumps with
        # ensure_ascii=False, in a quarter of the time. It refuses lone surrogates.
        text = pydantic_core.to_json({"v": _ANSWERS_FORMAT, "answers": items}).decode()
    except pydantic_core.PydanticSerializationError:
        raise InvalidSessionError("text must be encodable as UTF-8", fields=("answers",)) from None
    return text, blobs


def to_row(session: StudentSession) -> tuple[Any, ...]:
    """The values of a live row, in :data:`INSERT_COLUMNS` order (``deleted`` is False).

    ``deleted=False`` is written explicitly so that a save after a delete overwrites the
    tombstone's ``deleted=True`` cell.
    """
    _check_utf8(session.student_id, "student_id")
    _check_utf8(session.assessment_id, "assessment_id")
    for key, value in session.metadata.items():
        _check_utf8(key, "metadata")
        _check_utf8(value, "metadata")
    try:
        # SessionStatus(): model_copy(update=...) may have put a plain string here.
        status = SessionStatus(session.status).value
    except ValueError:
        raise InvalidSessionError("unknown session status", fields=("status",)) from None
    answers, blobs = _encode_answers(session.answers)
    return (
        session.session_id,
        session.student_id,
        session.assessment_id,
        status,
        _millis(session.started_at),
        _millis(session.updated_at),
        answers,
        blobs,
        dict(session.metadata),
        session.revision,
        False,
    )


def tombstone_row(session_id: uuid.UUID, revision: int) -> tuple[Any, ...]:
    """The values of a tombstone row: every data column null, ``deleted`` True.

    Binding null (not "unset") writes a cell tombstone per column at the write's
    timestamp, which shadows older cells exactly like a CQL DELETE would.
    """
    return (session_id, *(None for _ in DATA_COLUMNS), revision, True)


# --------------------------------------------------------------------------- decoding


def _as_mapping(row: Any) -> Mapping[str, Any]:
    if isinstance(row, Mapping):
        return row
    if isinstance(row, Sequence) and len(row) == len(_SELECT_NAMES):
        return dict(zip(_SELECT_NAMES, row, strict=True))
    raise RowDecodeError(("<row>",))


def _timestamp(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise RowDecodeError((field,))
    if not value.microsecond % 1000:
        return value.replace(tzinfo=dt.UTC)
    # The driver returns naive UTC datetimes computed through a float of seconds, which
    # is off by up to some tens of microseconds far from 1970. Values are stored at
    # millisecond precision, so rounding to the nearest millisecond is exact.
    micros = (value.replace(tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
    return _EPOCH + dt.timedelta(milliseconds=(micros + 500) // 1000)


def _decode_answers(text: Any, blobs: Any) -> tuple[Any, ...]:
    if text is None:
        # A historical row without answers; nothing else may be attached then.
        if blobs:
            raise RowDecodeError(("attachment_data",))
        return ()
    try:
        doc = pydantic_core.from_json(text)
        if not isinstance(doc, dict) or doc.get("v") != _ANSWERS_FORMAT:
            raise RowDecodeError(("answers",))
        data = list(blobs or ())
        used = 0
        # Plain dicts: StudentSession validates them all in one call (one model call per
        # answer and per attachment cost about a quarter of the decode).
        answers: list[dict[str, Any]] = []
        for item in doc["answers"]:
            attachments: list[dict[str, Any]] = []
            for ref in item["attachments"]:
                attachments.append(
                    {
                        "content_type": ref["content_type"],
                        "filename": ref["filename"],
                        "data": bytes(data[used]),
                    }
                )
                used += 1
            at = item["answered_at"]
            answers.append(
                {
                    "question_id": item["question_id"],
                    "response": item["response"],
                    "attachments": tuple(attachments),
                    "answered_at": None if at is None else _EPOCH + dt.timedelta(milliseconds=at),
                }
            )
    except (ValueError, KeyError, TypeError, IndexError, OverflowError) as exc:
        if isinstance(exc, RowDecodeError):
            raise
        raise RowDecodeError(("answers",)) from None
    if used != len(data):
        raise RowDecodeError(("attachment_data",))
    return tuple(answers)


def _revision(row: Mapping[str, Any]) -> int:
    # The newest of the revision cell and the data cells' WRITETIMEs (null for null cells).
    stamps = [row.get("revision"), *(row.get(alias) for alias in _WRITETIME_ALIASES)]
    if not all(s is None or isinstance(s, int) for s in stamps):
        raise RowDecodeError(("revision",))
    revision = max((s for s in stamps if s is not None), default=0)
    if revision <= 0:
        raise RowDecodeError(("revision",))
    return int(revision)


def from_row(row: Any) -> StudentSession:
    """Decode a live row (a mapping, or a sequence in :data:`SELECT_COLUMNS` order).

    The revision is the newest of the ``revision`` cell (null in a historical row) and the
    WRITETIMEs of the data columns, so a column updated by another writer after the
    library's save makes the record that much newer. Null collections decode as empty ones.
    """
    values = _as_mapping(row)
    revision = _revision(values)
    session_id = values.get("session_id")
    if not isinstance(session_id, uuid.UUID):
        raise RowDecodeError(("session_id",))
    try:
        status = SessionStatus(str(values.get("status")))
    except ValueError:
        raise RowDecodeError(("status",)) from None
    started_at = _timestamp(values.get("started_at"), "started_at")
    updated_at = _timestamp(values.get("updated_at"), "updated_at")
    answers = _decode_answers(values.get("answers"), values.get("attachment_data"))
    metadata = values.get("metadata")
    try:
        return StudentSession(
            session_id=session_id,
            student_id=values.get("student_id"),  # type: ignore[arg-type]
            assessment_id=values.get("assessment_id"),  # type: ignore[arg-type]
            status=status,
            started_at=started_at,
            updated_at=updated_at,
            answers=answers,
            # Cassandra may hand back null for an empty frozen map (always for a
            # non-frozen one), and its own OrderedMapSerializedKey otherwise.
            metadata={} if metadata is None else dict(metadata),
            revision=revision,
        )
    except ValidationError as exc:
        fields = tuple(sorted({str(err["loc"][0]) for err in exc.errors() if err["loc"]}))
        raise RowDecodeError(fields or ("<row>",)) from None


def record_from_row(row: Any) -> StoredRecord:
    """Decode a row into a live record or, when ``deleted`` is true, a tombstone.

    Either way the revision is the newest of the ``revision`` cell and the data columns'
    WRITETIMEs (see :func:`from_row`).
    """
    values = _as_mapping(row)
    if values.get("deleted"):
        session_id = values.get("session_id")
        if not isinstance(session_id, uuid.UUID):
            raise RowDecodeError(("session_id",))
        return StoredRecord.tombstone(session_id, _revision(values))
    return StoredRecord.of(from_row(values))


def head_from_row(row: Any) -> RecordHead:
    """Decode a row of a SELECT of :data:`HEAD_COLUMNS` (a mapping or a sequence)."""
    if isinstance(row, Mapping):
        values = row
    elif isinstance(row, Sequence) and len(row) == len(_HEAD_NAMES):
        values = dict(zip(_HEAD_NAMES, row, strict=True))
    else:
        raise RowDecodeError(("<row>",))
    return RecordHead(_revision(values), bool(values.get("deleted")))
