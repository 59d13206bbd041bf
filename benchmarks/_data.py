"""Realistic sessions: a few KB of answers, and a mix with 500 KB to 2 MB attachments.

Deterministic for a given seed, so every variant of a comparison handles the same data.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import bson

from sessionstore import Answer, Attachment, SessionStatus, StudentSession
from sessionstore.backends._bson_codec import to_doc

_STATUSES = (SessionStatus.IN_PROGRESS, SessionStatus.SUBMITTED, SessionStatus.GRADED)
_SENTENCE = (
    "the answer is because water evaporates when heated so the total mass stays the "
    "same and energy moves from the warmer body to the colder one until both are equal"
)
_WORDS = _SENTENCE.split()
KB = 1024
MB = 1024 * KB


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def small_session(rng: random.Random, *, questions: int = 12) -> StudentSession:
    """About 4 KB: a dozen text answers, a thumbnail, some metadata."""
    start = dt.datetime(2024, 9, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=rng.randrange(500_000))
    answers = []
    for q in range(questions):
        attachments: tuple[Attachment, ...] = ()
        if q == 0:
            attachments = (
                Attachment(
                    content_type="image/png", filename="sketch.png", data=rng.randbytes(512)
                ),
            )
        answers.append(
            Answer(
                question_id=f"q-{q:03d}",
                response=_text(rng, rng.randrange(150, 350)),
                attachments=attachments,
                answered_at=start + dt.timedelta(seconds=30 * (q + 1)),
            )
        )
    return StudentSession.create(
        session_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        student_id=f"student-{rng.randrange(10**7):07d}",
        assessment_id=f"assessment-{rng.randrange(500):03d}",
        status=rng.choice(_STATUSES),
        started_at=start,
        updated_at=start + dt.timedelta(minutes=40),
        answers=tuple(answers),
        metadata={
            "school": f"school-{rng.randrange(900)}",
            "grade": str(rng.randrange(1, 13)),
            "locale": "en-GB",
        },
    )


def large_session(rng: random.Random) -> StudentSession:
    """A small session plus one drawing of 500 KB to 2 MB (random bytes: incompressible)."""
    base = small_session(rng)
    drawing = Attachment(
        content_type="image/png",
        filename="drawing.png",
        data=rng.randbytes(rng.randrange(500 * KB, 2 * MB)),
    )
    first = base.answers[0].model_copy(
        update={"attachments": (*base.answers[0].attachments, drawing)}
    )
    return StudentSession.parse({**dict(base), "answers": (first, *base.answers[1:])})


def sessions(n: int, *, seed: int, large_every: int = 0) -> list[StudentSession]:
    """``n`` sessions; every ``large_every``-th one carries a large drawing (0: none)."""
    rng = random.Random(seed)
    return [
        large_session(rng)
        if large_every and i % large_every == large_every - 1
        else small_session(rng)
        for i in range(n)
    ]


def size(session: StudentSession) -> int:
    """Bytes of the session's BSON document: what a copy moves, for MB/s figures."""
    return len(bson.encode(to_doc(session)))


def describe(items: list[StudentSession]) -> dict[str, Any]:
    """Count and size of a data set, for the report."""
    sizes = sorted(size(s) for s in items)
    return {
        "sessions": len(items),
        "total_mb": round(sum(sizes) / MB, 2),
        "median_kb": round(sizes[len(sizes) // 2] / KB, 1),
        "max_kb": round(sizes[-1] / KB, 1),
    }
