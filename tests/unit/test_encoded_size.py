"""encoded_size is an upper bound of every store's real encoding of a session.

The Cassandra row keeps the answers as JSON text, in which a control character takes
six bytes (``\\u0001``) and a quote or backslash two: counting UTF-8 bytes is not enough.
"""

from __future__ import annotations

import datetime as dt
import operator
import uuid

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sessionstore import (
    MAX_ENCODED_SIZE,
    Answer,
    Attachment,
    SessionStatus,
    SessionTooLargeError,
    StudentSession,
)
from sessionstore.model import encoded_size, ensure_session
from tests.encodings import measure
from tests.helpers import make_session

# Control characters (six bytes as JSON, or two for the short escapes), quote and
# backslash (two), 2-, 3- and 4-byte UTF-8, and characters JSON leaves alone.
WORST = '\x01\x08\x0b\x1f\t\n\r"\\é€\U0001f600\x7f\u2028a'

characters = st.one_of(
    st.sampled_from(WORST),
    st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
)
key_characters = characters.filter(lambda c: c not in ".$")


def short_text(alphabet: st.SearchStrategy[str] = characters) -> st.SearchStrategy[str]:
    """A ``Text`` field: 1 to 256 characters."""
    return st.text(alphabet, min_size=1, max_size=256)


def long_text() -> st.SearchStrategy[str]:
    """A ``LongText`` field: a short pattern, sometimes repeated into thousands of characters."""
    return st.builds(
        operator.mul, st.text(characters, max_size=30), st.sampled_from([1, 1, 2, 100, 3000])
    )


timestamps = st.datetimes(
    min_value=dt.datetime(1, 1, 1),
    max_value=dt.datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(dt.UTC),
)

attachments = st.builds(
    Attachment,
    content_type=short_text(),
    filename=st.none() | short_text(),
    data=st.binary(max_size=64),
)

answers = st.builds(
    Answer,
    question_id=short_text(),
    response=long_text(),
    attachments=st.lists(attachments, max_size=3).map(tuple),
    answered_at=st.none() | timestamps,
)

sessions = st.builds(
    StudentSession,
    session_id=st.uuids(),
    student_id=short_text(),
    assessment_id=short_text(),
    status=st.sampled_from(SessionStatus),
    started_at=timestamps,
    updated_at=timestamps,
    answers=st.lists(answers, max_size=4).map(tuple),
    metadata=st.dictionaries(short_text(key_characters), long_text(), max_size=4),
    revision=st.integers(1, 2**63 - 1),
)


@given(session=sessions)
@example(
    session=make_session(
        revision=1, answers=(Answer(question_id="q", response="\x01" * 100),), metadata={}
    )
)
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_encoded_size_bounds_every_store_encoding(session: StudentSession) -> None:
    real = measure(session)
    size = encoded_size(session)
    assert size >= real.bson_document
    assert size >= real.cql_request
    assert size >= real.cql_mutation


def test_answers_of_control_characters_are_too_large() -> None:
    # The case: 3 MB of text, but 18 MB of JSON in Cassandra's answers column,
    # which Cassandra refuses (after DocumentDB took it, in DOCDB_PRIMARY).
    session = make_session(
        revision=1,
        answers=tuple(Answer(question_id=f"q{i}", response="\x01" * 1_000_000) for i in range(3)),
    )
    assert measure(session).cql_request > MAX_ENCODED_SIZE
    with pytest.raises(SessionTooLargeError) as info:
        ensure_session(session)
    assert info.value.size >= measure(session).largest()


def test_plain_text_is_not_overcounted() -> None:
    # A bound far above the real size would refuse sessions that every store accepts.
    session = make_session(
        revision=1,
        session_id=uuid.UUID(int=7),
        answers=tuple(
            Answer(question_id=f"q{i}", response="An essay, line after line. " * 30_000)
            for i in range(10)
        ),
    )
    real = measure(session).largest()
    assert real <= encoded_size(session) <= real + 4096
