"""The ``StudentSession`` model: strict, validated once, before any store is touched.

Example::

    from sessionstore import StudentSession
    s = StudentSession.create(student_id="s-1", assessment_id="a-1")
    s = s.model_copy(update={"status": SessionStatus.SUBMITTED})
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import uuid
import weakref
from collections.abc import Mapping
from typing import Annotated, Any, Self

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from sessionstore._errors import InvalidSessionError, SessionTooLargeError
from sessionstore.revision import Revision, check_revision

__all__ = [
    "MAX_ENCODED_SIZE",
    "Answer",
    "Attachment",
    "SessionStatus",
    "StudentSession",
    "encoded_size",
    "validate_session_id",
]

#: The most bytes a session may take in any store's encoding: 16 MiB, the default limit
#: of every store. DocumentDB takes BSON documents of up to 16 MiB; Cassandra refuses a
#: mutation above ``max_mutation_size`` (half of ``commitlog_segment_size``, 32 MiB by
#: default) and a CQL request above ``native_transport_max_message_size``, both 16 MiB by
#: default. :func:`encoded_size` bounds all three, so each store accepts what it allows.
MAX_ENCODED_SIZE = 16 * 1024 * 1024

# What encoded_size adds for the fields every session has and for each store's framing,
# above the largest of: the BSON document's fixed fields (about 200 bytes), the CQL
# request's frame, statement ids and value lengths (about 110) and what a Cassandra
# mutation adds to the values (table id, key, row and cell headers: 162-168 bytes,
# measured on Cassandra 5.0, which names the size of a mutation it refuses).
_FIXED_OVERHEAD = 1024
# Per element: BSON spends a type byte, a NUL-terminated key and a length prefix; CQL a
# length prefix; the answers' JSON (Cassandra) its keys and punctuation. 64 bytes is
# above either; an answer gets three, for its fields and timestamp.
_ELEMENT_OVERHEAD = 64


def _utc_millis(value: dt.datetime) -> dt.datetime:
    """Timestamps are stored at millisecond precision in UTC by both stores."""
    if value.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    if value.tzinfo is not dt.UTC:  # the codecs' own values are UTC already
        value = value.astimezone(dt.UTC)
    if value.microsecond % 1000:
        value = value.replace(microsecond=(value.microsecond // 1000) * 1000)
    return value


def _portable_text(value: str) -> str:
    # NUL cannot be stored by the Mongo-wire engines' string type; lone surrogates are
    # not UTF-8, which both stores require.
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    if value.isascii():  # no surrogates possible; spares encoding a copy of the text
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _portable_key(key: str) -> str:
    # DocumentDB and FerretDB reject field names with '.' or a leading '$'.
    if not key or key.startswith("$") or "." in key:
        raise ValueError("metadata keys must be non-empty, not start with '$' nor contain '.'")
    return _portable_text(key)


UtcMillis = Annotated[dt.datetime, AfterValidator(_utc_millis)]
Text = Annotated[
    str, StringConstraints(min_length=1, max_length=256), AfterValidator(_portable_text)
]
LongText = Annotated[str, StringConstraints(max_length=1_000_000), AfterValidator(_portable_text)]


def _portable_keys(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        _portable_key(key)
    return value


#: The rules of StudentSession.metadata, in one type: the model and ensure_session's
#: re-check of a validated session's (mutable) dict both use it.
Metadata = Annotated[dict[str, LongText], AfterValidator(_portable_keys)]


class SessionStatus(enum.StrEnum):
    """Where a student is in a session."""

    STARTED = "started"
    IN_PROGRESS = "in_progress"
    SUBMITTED = "submitted"
    GRADED = "graded"
    ABANDONED = "abandoned"


class _Strict(BaseModel):
    # revalidate_instances: an instance given to validation is validated again (into a
    # new object), so that one made with model_construct() or model_copy(update=...)
    # cannot pass as validated, neither nested in a session nor as a session.
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        revalidate_instances="always",
        ser_json_bytes="base64",
        val_json_bytes="base64",
    )


class Attachment(_Strict):
    """Binary content attached to an answer, such as an image (possibly several MB)."""

    content_type: Text
    filename: Text | None = None
    data: bytes


class Answer(_Strict):
    """One answered question."""

    question_id: Text
    response: LongText
    attachments: tuple[Attachment, ...] = ()
    answered_at: UtcMillis | None = None


def _now() -> dt.datetime:
    return _utc_millis(dt.datetime.now(dt.UTC))


class StudentSession(_Strict):
    """A student's assessment session, as both stores hold it.

    ``revision`` is set by the repository on every save (a microsecond hybrid clock);
    0 means "never saved". Construct with :meth:`create` or :meth:`parse` to get the
    library's :class:`~sessionstore.InvalidSessionError` instead of pydantic's.
    """

    session_id: uuid.UUID
    student_id: Text
    assessment_id: Text
    status: SessionStatus = SessionStatus.STARTED
    started_at: UtcMillis = Field(default_factory=_now)
    updated_at: UtcMillis = Field(default_factory=_now)
    answers: tuple[Answer, ...] = ()
    metadata: Metadata = Field(default_factory=dict)
    revision: Revision = 0

    @model_validator(mode="after")
    def _remember_validated(self) -> Self:
        _remember(self)
        return self

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Self:
        """Validate a mapping of Python values, raising InvalidSessionError."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _to_invalid(exc) from exc

    @classmethod
    def parse_json(cls, text: str | bytes) -> Self:
        """Validate JSON (UUIDs and timestamps as strings, bytes as base64)."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise _to_invalid(exc) from exc

    @classmethod
    def create(cls, **fields: Any) -> Self:
        """Build a new session, generating ``session_id`` when absent.

        >>> StudentSession.create(student_id="s-1", assessment_id="a-1").revision
        0
        """
        fields.setdefault("session_id", uuid.uuid4())
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise _to_invalid(exc) from exc


def _to_invalid(exc: ValidationError, prefix: tuple[str, ...] = ()) -> InvalidSessionError:
    # Only field paths and error kinds: pydantic's default message would echo values.
    fields = tuple(".".join(str(p) for p in (*prefix, *err["loc"])) for err in exc.errors())
    kinds = sorted({err["type"] for err in exc.errors()})
    return InvalidSessionError(
        f"invalid session: {', '.join(fields) or '<root>'} ({', '.join(kinds)})", fields=fields
    )


# Sessions that pydantic validated, by id(), so that ensure_session() need not validate
# them again. model_construct() and model_copy() make new objects, which are not in here,
# so they are validated in full. A weak reference drops the entry when the session dies,
# before its id can be reused.
_VALIDATED: dict[int, weakref.ref[StudentSession]] = {}
_METADATA: TypeAdapter[dict[str, str]] = TypeAdapter(Metadata, config=ConfigDict(strict=True))


def _forget(key: int, ref: weakref.ref[StudentSession]) -> None:
    if _VALIDATED.get(key) is ref:
        del _VALIDATED[key]


def _remember(session: StudentSession) -> None:
    key = id(session)
    _VALIDATED[key] = weakref.ref(session, functools.partial(_forget, key))


def _is_validated(session: StudentSession) -> bool:
    ref = _VALIDATED.get(id(session))
    return ref is not None and ref() is session


def _check_metadata(metadata: object) -> None:
    # For a validated session's dict, which may have been changed in place since.
    try:
        _METADATA.validate_python(metadata)
    except ValidationError as exc:
        raise _to_invalid(exc, prefix=("metadata",)) from exc


def with_revision(session: StudentSession, revision: int) -> StudentSession:
    """A copy of ``session`` with another revision; trusted if ``session`` is.

    The copy gets its own metadata dict, so that changing the original's later does not
    change the copy.
    """
    check_revision(revision, allow_zero=True)
    copy = session.model_copy(update={"revision": revision, "metadata": dict(session.metadata)})
    if _is_validated(session):
        _remember(copy)
    return copy


def ensure_session(value: object) -> StudentSession:
    """Return ``value`` if it is a valid StudentSession, else raise InvalidSessionError.

    A session made by ``model_construct()`` or ``model_copy(update=...)`` skipped
    validation and is validated in full here. One that pydantic validated (``create``,
    ``parse``, the constructor, or a store's decoder) is not validated again, except
    its ``metadata``: the one field that stays mutable in a frozen model.
    """
    if not isinstance(value, StudentSession):
        raise InvalidSessionError(
            f"expected StudentSession, got {type(value).__name__}", fields=("<root>",)
        )
    if _is_validated(value):
        checked = value
        _check_metadata(value.metadata)
    else:
        try:
            checked = StudentSession.model_validate(value)
        except ValidationError as exc:
            raise _to_invalid(exc) from exc
    size = encoded_size(checked)
    if size > MAX_ENCODED_SIZE:
        raise SessionTooLargeError(size, MAX_ENCODED_SIZE)
    return checked


def validate_session_id(value: object) -> uuid.UUID:
    """Accept a UUID or its canonical string; anything else raises InvalidSessionError."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidSessionError("session id must be a UUID", fields=("session_id",))


def encoded_size(session: StudentSession) -> int:
    """Upper bound of the valid session's size in every store's encoding, in bytes.

    Each store sees every text and attachment once: the BSON document and the Cassandra
    row hold text as UTF-8, except that the row keeps the answers as JSON, in which a
    control character takes six bytes (``\\u0001``) and a quote or backslash two. So
    the answers' text is counted as JSON, the rest as UTF-8, attachments by their bytes,
    plus a fixed allowance above either store's framing (see ``MAX_ENCODED_SIZE``).

    >>> def session(response: str) -> StudentSession:
    ...     answer = Answer(question_id="q", response=response)
    ...     return StudentSession.create(student_id="s", assessment_id="a", answers=(answer,))
    >>> encoded_size(session("\\x01\\x01")) - encoded_size(session("ab"))  # JSON: "\\u0001\\u0001"
    10
    """
    size = _FIXED_OVERHEAD + _utf8_size(session.student_id) + _utf8_size(session.assessment_id)
    for key, val in session.metadata.items():
        size += _utf8_size(key) + _utf8_size(val) + _ELEMENT_OVERHEAD
    in_json: list[str] = []  # the answers' text, which Cassandra stores as JSON
    for answer in session.answers:
        in_json += (answer.question_id, answer.response)
        size += 3 * _ELEMENT_OVERHEAD
        for att in answer.attachments:
            size += len(att.data) + 3 * _ELEMENT_OVERHEAD
            in_json.append(att.content_type)
            if att.filename is not None:
                in_json.append(att.filename)
    return size + _json_size(in_json)


def _utf8_size(text: str) -> int:
    # isascii() is O(1) for CPython's compact strings: no copy for the common case.
    return len(text) if text.isascii() else len(text.encode())


def _json_size(texts: list[str]) -> int:
    # Exactly what the Cassandra codec writes for these strings, quotes included: the same
    # serializer, in one call (one per string cost as much as the rest of encoded_size),
    # so one pass over the text, about 1 ms per MB. Less the array's brackets and commas.
    return len(pydantic_core.to_json(texts)) - 2 - max(len(texts) - 1, 0)
