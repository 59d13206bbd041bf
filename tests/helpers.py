"""Builders shared by the test suites."""

from __future__ import annotations

import datetime as dt
import os
import uuid

from sessionstore import Answer, Attachment, StudentSession

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)


def make_session(
    *, revision: int = 0, attachment_bytes: int = 0, **fields: object
) -> StudentSession:
    """A realistic session; ``attachment_bytes`` adds an image-like attachment of that size."""
    attachments: tuple[Attachment, ...] = ()
    if attachment_bytes:
        attachments = (
            Attachment(
                content_type="image/png", filename="drawing.png", data=os.urandom(attachment_bytes)
            ),
        )
    values: dict[str, object] = {
        "session_id": uuid.uuid4(),
        "student_id": "student-1",
        "assessment_id": "assessment-9",
        "started_at": T0,
        "updated_at": T0,
        "answers": (
            Answer(question_id="q1", response="42", answered_at=T0),
            Answer(question_id="q2", response="see drawing", attachments=attachments),
        ),
        "metadata": {"client": "ios", "locale": "fr-FR"},
        "revision": revision,
    }
    values.update(fields)
    return StudentSession(**values)  # type: ignore[arg-type]
