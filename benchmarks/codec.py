"""CPU cost of the codecs and of validation, per session, without servers.

::

    .venv/bin/python -m benchmarks.codec

Times (median of 7 repeats, microseconds per call, one realistic ~4.7 KB session) what
the library adds to a driver call: encoding a session into a Cassandra row or a BSON
document, decoding one back into a validated session, and ``ensure_session``, the check
every ``repo.save`` makes (for a session pydantic validated, and for a copy changed with
``model_copy(update=...)``, which is validated in full), and ``encoded_size``, the
size check of every save and of the jobs' page budget, which reads all the text once
(also for a session of 4 MB of essay text, in ms). The rows are shaped as the
driver returns them (naive UTC datetimes, ``WRITETIME`` columns). Hot-cache figures:
right after a network wait the same work takes 1.5-2.5 times longer on the machine of
docs/performance.md.
"""

from __future__ import annotations

import datetime as dt
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import bson

from benchmarks._data import sessions
from sessionstore import Answer, SessionStatus, StudentSession
from sessionstore.backends._bson_codec import record_from_doc, to_doc
from sessionstore.backends._cql_codec import DATA_COLUMNS, record_from_row, to_row
from sessionstore.model import encoded_size, ensure_session, with_revision


def _per_call(fn: Callable[[], Any], number: int = 2000) -> float:
    times = timeit.repeat(fn, number=number, repeat=7)
    return statistics.median(times) / number * 1e6


def _driver_row(values: tuple[Any, ...], revision: int) -> tuple[Any, ...]:
    row = list(values)
    for i in (4, 5):  # started_at, updated_at: the driver returns naive UTC datetimes
        row[i] = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=row[i])
    return (*row, *(revision for _ in DATA_COLUMNS))


def _essays(megabytes: int) -> StudentSession:
    # Answers of 1 MB of text with the quotes and newlines that JSON escapes.
    line = 'She wrote "because", then explained why.\n'
    text = (line * (1_000_000 // len(line) + 1))[:1_000_000]
    answers = tuple(Answer(question_id=f"q{i}", response=text) for i in range(megabytes))
    return StudentSession.create(student_id="s", assessment_id="a", answers=answers)


def main() -> None:
    session = with_revision(sessions(1, seed=3)[0], 1_700_000_000_000_000)
    changed = session.model_copy(update={"status": SessionStatus.GRADED})
    row = _driver_row(to_row(session), session.revision)
    doc = bson.decode(bson.encode(to_doc(session)))
    cases: dict[str, Callable[[], Any]] = {
        "to_row (encode for Cassandra)": lambda: to_row(session),
        "record_from_row (decode and validate)": lambda: record_from_row(row),
        "to_doc (encode for DocumentDB)": lambda: to_doc(session),
        "record_from_doc (decode and validate)": lambda: record_from_doc(doc),
        "ensure_session, a validated session": lambda: ensure_session(session),
        "ensure_session, a model_copy(update=...)": lambda: ensure_session(changed),
        "encoded_size": lambda: encoded_size(session),
    }
    width = max(len(name) for name in cases)
    for name, fn in cases.items():
        print(f"{name.ljust(width)}  {_per_call(fn):7.1f} us")
    large = _essays(4)
    per_call = _per_call(lambda: encoded_size(large), number=20) / 1000
    print(f"{'encoded_size, 4 MB of answer text'.ljust(width)}  {per_call:7.2f} ms")


if __name__ == "__main__":
    main()
