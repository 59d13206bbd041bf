"""The Cassandra codec's revision rule, on rows shaped as the driver returns them.

A record's revision is the newest of the ``revision`` cell and the WRITETIMEs of the
data columns: a column that another service updated after the library's write (with
the server's timestamp or a later ``USING TIMESTAMP``) makes the whole record newer, so
that backfill, verify and repair see the update.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sessionstore import SessionStatus, StoredRecord
from sessionstore.backends import _cql_codec as codec
from tests.helpers import make_session

R = 1_700_000_000_000_000

# The alias under which the SELECT returns each data column's WRITETIME.
WRITETIME_ALIAS = {
    expression.removeprefix("WRITETIME(").removesuffix(")"): name
    for expression, name in codec.SELECT_COLUMNS
    if expression.startswith("WRITETIME(")
}


def live_row(revision: int | None, writetime: int, **columns: Any) -> dict[str, Any]:
    """A row as a save at ``writetime`` leaves it, then ``columns`` changed in place."""
    session = make_session(revision=revision or 1)
    row = dict(zip(codec.INSERT_COLUMNS, codec.to_row(session), strict=True))
    # The driver returns timestamps as naive UTC datetimes.
    row["started_at"] = session.started_at.replace(tzinfo=None)
    row["updated_at"] = session.updated_at.replace(tzinfo=None)
    row["revision"] = revision
    row.update(columns)
    for column, alias in WRITETIME_ALIAS.items():
        row[alias] = None if row[column] is None else writetime
    return row


def tombstone_row(revision: int) -> dict[str, Any]:
    row = dict(zip(codec.INSERT_COLUMNS, codec.tombstone_row(uuid.uuid4(), revision), strict=True))
    row.update(dict.fromkeys(WRITETIME_ALIAS.values()))  # null cells have no WRITETIME
    return row


def test_a_row_as_saved_has_its_revision() -> None:
    row = live_row(R, R)
    record = codec.record_from_row(row)
    assert record.revision == R
    assert record.session is not None
    assert record.session.status is SessionStatus.STARTED


@pytest.mark.parametrize("column", codec.DATA_COLUMNS)
def test_a_later_cell_makes_the_record_newer(column: str) -> None:
    row = live_row(R, R)
    row[WRITETIME_ALIAS[column]] = R + 5_000
    assert codec.record_from_row(row).revision == R + 5_000


def test_an_out_of_band_update_is_read_with_its_revision() -> None:
    row = live_row(R, R, status="graded")
    row[WRITETIME_ALIAS["status"]] = R + 1
    record = codec.record_from_row(row)
    assert record.revision == R + 1
    assert record.session is not None
    assert record.session.status is SessionStatus.GRADED
    assert record.session.revision == R + 1


def test_older_cells_do_not_lower_the_revision() -> None:
    # A save at R leaves a column that was already null (none here) or older cells that
    # the save shadowed; neither can make the record older than its revision cell.
    assert codec.record_from_row(live_row(R, R - 10)).revision == R


def test_a_historical_row_takes_its_newest_writetime() -> None:
    row = live_row(None, 1_000, deleted=None)
    row[WRITETIME_ALIAS["status"]] = 5_000
    assert codec.record_from_row(row).revision == 5_000


def test_a_tombstone_row_has_its_revision() -> None:
    row = tombstone_row(R)
    assert codec.record_from_row(row) == StoredRecord.tombstone(row["session_id"], R)


def test_a_cell_written_after_a_tombstone_makes_it_newer() -> None:
    # A tombstone row whose status another service set afterwards: still deleted (the
    # deleted cell says so), but as of that later write.
    row = tombstone_row(R)
    row["status"] = "graded"
    row[WRITETIME_ALIAS["status"]] = R + 7
    assert codec.record_from_row(row) == StoredRecord.tombstone(row["session_id"], R + 7)


def test_rows_of_every_factory_decode_alike() -> None:
    row = live_row(R, R)
    row[WRITETIME_ALIAS["metadata"]] = R + 3
    as_tuple = tuple(row[name] for _, name in codec.SELECT_COLUMNS)
    assert codec.record_from_row(as_tuple) == codec.record_from_row(row)
    assert codec.record_from_row(as_tuple).revision == R + 3
