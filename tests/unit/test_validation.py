"""Bad input raises the library's typed errors and leaves both stores untouched."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from sessionstore import (
    MAX_ENCODED_SIZE,
    Attachment,
    InvalidRevisionError,
    InvalidSessionError,
    Phase,
    SessionTooLargeError,
    StudentSession,
)
from sessionstore.model import Answer, SessionStatus, ensure_session, with_revision
from sessionstore.testing import memory_repository
from tests.helpers import make_session


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"student_id": 123}, "student_id"),
        ({"student_id": ""}, "student_id"),
        ({"session_id": "not-a-uuid"}, "session_id"),
        ({"session_id": str(uuid.uuid4())}, "session_id"),  # strict: a str is not a UUID
        ({"started_at": dt.datetime(2026, 1, 1)}, "started_at"),  # naive timestamp
        ({"status": "bogus"}, "status"),
        ({"metadata": {"$where": "x"}}, "metadata"),
        ({"metadata": {"a.b": "x"}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"revision": -1}, "revision"),
        ({"revision": 2**63}, "revision"),
        ({"unexpected": 1}, "unexpected"),
        ({"student_id": "nul\x00byte"}, "student_id"),
        ({"student_id": "lone \ud800 surrogate"}, "student_id"),
    ],
)
def test_bad_fields_raise_invalid_session_error(fields: dict[str, Any], bad_field: str) -> None:
    values: dict[str, Any] = {"student_id": "s", "assessment_id": "a"} | fields
    with pytest.raises(InvalidSessionError) as info:
        StudentSession.create(**values)
    assert any(f.startswith(bad_field) for f in info.value.fields)


def test_missing_fields_are_named() -> None:
    with pytest.raises(InvalidSessionError) as info:
        StudentSession.create(student_id="s")
    assert "assessment_id" in info.value.fields


def test_error_messages_do_not_echo_values() -> None:
    secret = "very-private-answer-text"
    with pytest.raises(InvalidSessionError) as info:
        StudentSession.create(student_id="s", assessment_id="a", metadata={"$x": secret})
    assert secret not in str(info.value)


def test_timestamps_are_truncated_to_utc_milliseconds() -> None:
    t = dt.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    s = make_session(started_at=t)
    assert s.started_at == dt.datetime(2026, 5, 1, 10, 0, 0, 123000, tzinfo=dt.UTC)
    assert s.started_at.tzinfo is dt.UTC


def test_json_round_trip() -> None:
    s = make_session(revision=5, attachment_bytes=100)
    assert StudentSession.parse_json(s.model_dump_json()) == s


def oversize() -> StudentSession:
    blob = b"\x00" * (MAX_ENCODED_SIZE // 2)
    answer = Answer(
        question_id="q",
        response="r",
        attachments=(Attachment(content_type="image/png", data=blob),) * 2,
    )
    return make_session(answers=(answer,))


def sneaky_invalid() -> StudentSession:
    # model_copy(update=...) skips validation: the repository must validate again.
    return make_session().model_copy(update={"metadata": {"$gt": "1"}})


def constructed_invalid() -> StudentSession:
    # model_construct() validates nothing.
    return StudentSession.model_construct(session_id=uuid.uuid4(), student_id="", assessment_id="a")


def metadata_changed_after_validation() -> StudentSession:
    # A validated session is not validated again, except its metadata: a frozen model's
    # dict can still be changed in place.
    s = make_session()
    s.metadata["a.b"] = "x"
    return s


def answer_changed_after_validation() -> StudentSession:
    # The session was validated, then given an answer that skipped validation.
    s = make_session()
    bad = Answer(question_id="q", response="r").model_copy(update={"response": "nul\x00"})
    return s.model_copy(update={"answers": (bad,)})


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize(
    ("make", "error"),
    [
        (oversize, SessionTooLargeError),
        (sneaky_invalid, InvalidSessionError),
        (constructed_invalid, InvalidSessionError),
        (metadata_changed_after_validation, InvalidSessionError),
        (answer_changed_after_validation, InvalidSessionError),
        (lambda: {"student_id": "s"}, InvalidSessionError),
    ],
)
async def test_repository_rejects_before_touching_any_store(
    phase: Phase, make: Any, error: type[Exception]
) -> None:
    repo, stores = memory_repository(phase)
    async with repo:
        with pytest.raises(error):
            await repo.save(make())
        for bad_id in ("nope", 42, None, "'; DROP TABLE sessions; --"):
            with pytest.raises(InvalidSessionError):
                await repo.get(bad_id)  # type: ignore[arg-type]
            with pytest.raises(InvalidSessionError):
                await repo.delete(bad_id)  # type: ignore[arg-type]
        far = 2**62  # far beyond the clock's max skew: would pin the key forever
        for bad_revision in (-5, True, 2**63, far):
            with pytest.raises(InvalidRevisionError):
                await repo.delete(uuid.uuid4(), revision=bad_revision)
            with pytest.raises(InvalidRevisionError):
                await repo.delete(uuid.uuid4(), expected_revision=bad_revision)
        with pytest.raises(InvalidRevisionError):
            await repo.save(make_session().model_copy(update={"revision": far}))
    assert stores.calls == []
    assert stores.cassandra.inner.records() == {} == stores.documentdb.inner.records()


def test_a_session_just_under_the_limit_is_accepted() -> None:
    from sessionstore.model import encoded_size

    s = make_session(attachment_bytes=MAX_ENCODED_SIZE - 4096)
    assert encoded_size(s) <= MAX_ENCODED_SIZE
    assert ensure_session(s) == s


def test_unvalidated_parts_do_not_pass_as_validated() -> None:
    bad_answer = Answer.model_construct(question_id="", response="r", attachments=())
    with pytest.raises(InvalidSessionError) as info:
        StudentSession.create(student_id="s", assessment_id="a", answers=(bad_answer,))
    assert info.value.fields == ("answers.0.question_id",)
    constructed = constructed_invalid()
    with pytest.raises(ValidationError):
        StudentSession.model_validate(constructed)
    with pytest.raises(InvalidSessionError):  # still refused after that attempt
        ensure_session(constructed)


def test_a_validated_session_is_accepted_as_is() -> None:
    s = make_session()
    assert ensure_session(s) is s
    changed = s.model_copy(update={"status": SessionStatus.SUBMITTED})
    checked = ensure_session(changed)
    assert checked == changed
    assert ensure_session(checked) is checked


def test_with_revision_copies_metadata_and_keeps_validation() -> None:
    s = make_session(metadata={"k": "v"})
    copy = with_revision(s, 42)
    assert copy.revision == 42
    assert copy.model_copy(update={"revision": s.revision}) == s
    s.metadata["k"] = "changed"
    assert copy.metadata == {"k": "v"}
    assert ensure_session(copy) is copy
    with pytest.raises(ValueError, match="revision"):
        with_revision(s, -1)
