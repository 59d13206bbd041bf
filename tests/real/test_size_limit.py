"""MAX_ENCODED_SIZE at the edge, on the real Cassandra and FerretDB.

Every text field holds worst-case characters: a control character (six bytes in the
JSON of Cassandra's answers column), a quote, a backslash and a newline (two), and 2-,
3- and 4-byte UTF-8. A session whose ``encoded_size`` is exactly the limit is stored by
both stores in both dual-writing phases; one byte more is refused before any store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import pytest

from sessionstore import (
    MAX_ENCODED_SIZE,
    Answer,
    Attachment,
    Phase,
    SessionTooLargeError,
    StudentSession,
)
from sessionstore.model import encoded_size
from tests.encodings import Encodings, measure
from tests.helpers import T0
from tests.real.pair import real_repository

pytestmark = pytest.mark.real

WORST = '\x01"\\\né€\U0001f600'


def worst(n: int) -> str:
    """``n`` characters cycling through :data:`WORST`."""
    return (WORST * (n // len(WORST) + 1))[:n]


def escaped_answers() -> tuple[dict[str, str], list[Answer]]:
    # 2 MB of control characters: 12 MB of JSON in Cassandra, 2 MB of BSON.
    answers = [Answer(question_id=worst(256), response="\x01" * 1_000_000) for _ in range(2)]
    return {}, answers


def binary_and_metadata() -> tuple[dict[str, str], list[Answer]]:
    # About as large in BSON as in Cassandra: raw bytes, and text without escapes.
    metadata = {"emoji": "\U0001f600" * 1_000_000}  # 4 MB of 4-byte UTF-8
    attachment = Attachment(
        content_type=worst(7), filename=worst(7), data=os.urandom(6 * 1024 * 1024)
    )
    # Short texts in the answers: JSON makes them larger in Cassandra only.
    return metadata, [Answer(question_id=worst(7), response=worst(7), attachments=(attachment,))]


Bulk = Callable[[], tuple[dict[str, str], list[Answer]]]
SHAPES = [
    pytest.param(escaped_answers, id="escaped-answers"),
    pytest.param(binary_and_metadata, id="binary-and-metadata"),
]


def session_of_size(size: int, bulk: Bulk) -> StudentSession:
    """A session whose ``encoded_size`` is exactly ``size``: worst-case text in every
    text field, ``bulk``'s answers and metadata, and an attachment that makes up the rest
    (its bytes count one for one)."""
    metadata, answers = bulk()

    def build(padding: int) -> StudentSession:
        filler = Answer(
            question_id=worst(7),
            response=worst(7),
            answered_at=T0,
            attachments=(
                Attachment(content_type=worst(7), filename=worst(7), data=b"\xff" * padding),
            ),
        )
        return StudentSession.create(
            student_id=worst(256),
            assessment_id=worst(256),
            metadata={"k" + worst(255): worst(1_000), **metadata},
            answers=(*answers, filler),
        )

    session = build(size - encoded_size(build(0)))
    assert encoded_size(session) == size
    return session


def _near_the_limit(real: Encodings, bulk: Bulk) -> bool:
    # The test probes the stores' own limits only if the session really is that large.
    largest = real.cql_request if bulk is escaped_answers else real.bson_document
    return MAX_ENCODED_SIZE - 4096 <= largest <= MAX_ENCODED_SIZE


@pytest.mark.parametrize("bulk", SHAPES)
@pytest.mark.parametrize("phase", [Phase.DUAL_WRITE, Phase.DOCDB_PRIMARY])
async def test_a_session_at_the_limit_is_stored_by_both_stores(phase: Phase, bulk: Bulk) -> None:
    session = session_of_size(MAX_ENCODED_SIZE, bulk)
    async with real_repository(phase) as (repo, stores):
        saved = await repo.save(session)
        assert _near_the_limit(measure(saved), bulk)
        for store in (stores.cassandra, stores.documentdb):
            record = await store.inner.get(saved.session_id)
            assert record is not None
            assert record.session == saved


def _issue_case() -> StudentSession:
    # Three answers of a million control characters: 3 MB of UTF-8, 18 MB of JSON.
    return StudentSession.create(
        student_id=worst(256),
        assessment_id=worst(256),
        answers=tuple(
            Answer(question_id=worst(256), response="\x01" * 1_000_000) for _ in range(3)
        ),
    )


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            partial(session_of_size, MAX_ENCODED_SIZE + 1, escaped_answers), id="escaped-answers"
        ),
        pytest.param(
            partial(session_of_size, MAX_ENCODED_SIZE + 1, binary_and_metadata),
            id="binary-and-metadata",
        ),
        pytest.param(_issue_case, id="issue-9"),
    ],
)
@pytest.mark.parametrize("phase", [Phase.DUAL_WRITE, Phase.DOCDB_PRIMARY])
async def test_a_session_above_the_limit_touches_neither_store(
    phase: Phase, make: Callable[[], StudentSession]
) -> None:
    session = make()
    async with real_repository(phase) as (repo, stores):
        with pytest.raises(SessionTooLargeError) as info:
            await repo.save(session)
        assert info.value.size > MAX_ENCODED_SIZE
        assert stores.calls == []
        for store in (stores.cassandra, stores.documentdb):
            assert await store.inner.get(session.session_id) is None
