"""Work units: planning, JSON messages, id files, shards. All checked before any I/O."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path

import pytest

from sessionstore import ConfigurationError, KeyRange, Store
from sessionstore.jobs import (
    JobAction,
    UnitKind,
    WorkUnit,
    parse_range,
    parse_shard,
    plan_fingerprint,
    plan_ids,
    plan_ranges,
    read_id_file,
    shard,
)
from sessionstore.jobs.units import MAX_IDS_PER_UNIT, STORE_KEY_SPACES

TOKENS = STORE_KEY_SPACES[Store.CASSANDRA]
UUIDS = STORE_KEY_SPACES[Store.DOCUMENTDB]


def _ranges(space: KeyRange, parts: int, **kw: object) -> list[WorkUnit]:
    return plan_ranges(
        space,
        parts,
        job="j",
        action=JobAction.BACKFILL,
        source=Store.CASSANDRA,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("space", [TOKENS, UUIDS])
@pytest.mark.parametrize("parts", [1, 7, 256])
def test_range_plan_covers_the_key_space_exactly_once(space: KeyRange, parts: int) -> None:
    units = _ranges(space, parts)
    assert len(units) == parts
    assert units[0].start == space.start
    assert units[-1].end == space.end
    for a, b in itertools.pairwise(units):
        assert a.end == b.start
    assert len({u.unit_id for u in units}) == parts
    assert _ranges(space, parts) == units  # deterministic


def test_unit_ids_name_the_scanned_store() -> None:
    forward = _ranges(UUIDS, 2)
    backward = plan_ranges(
        UUIDS, 2, job="j", action=JobAction.VERIFY, source=Store.CASSANDRA, scan=Store.DOCUMENTDB
    )
    assert {u.unit_id for u in forward}.isdisjoint(u.unit_id for u in backward)
    assert all(u.scan is Store.DOCUMENTDB for u in backward)
    assert all(u.scan is Store.CASSANDRA for u in forward)


def test_explicit_ranges_are_split_and_checked() -> None:
    units = _ranges(TOKENS, 2, ranges=[KeyRange(0, 100), KeyRange(-50, 0)])
    assert [(u.start, u.end) for u in units] == [(-50, -25), (-25, 0), (0, 50), (50, 100)]
    with pytest.raises(ConfigurationError, match="outside the cassandra key space"):
        _ranges(TOKENS, 2, ranges=[KeyRange(0, 2**64)])
    with pytest.raises(ConfigurationError, match="overlap"):
        _ranges(TOKENS, 2, ranges=[KeyRange(0, 100), KeyRange(50, 150)])
    with pytest.raises(ConfigurationError, match="parts"):
        _ranges(TOKENS, 0)


def test_id_plan_batches_and_limits() -> None:
    ids = [uuid.UUID(int=i) for i in range(11)]
    units = plan_ids(ids, 5, job="j", action=JobAction.BACKFILL, source=Store.DOCUMENTDB)
    assert [len(u.ids) for u in units] == [5, 5, 1]
    assert [i for u in units for i in u.ids] == ids
    assert all(u.kind is UnitKind.IDS and u.target is Store.CASSANDRA for u in units)
    with pytest.raises(ConfigurationError):
        plan_ids(
            ids, MAX_IDS_PER_UNIT + 1, job="j", action=JobAction.BACKFILL, source=Store.CASSANDRA
        )
    with pytest.raises(ConfigurationError, match="no session ids"):
        plan_ids([], 5, job="j", action=JobAction.BACKFILL, source=Store.CASSANDRA)


def test_units_round_trip_through_json_with_128_bit_bounds() -> None:
    units = [
        *_ranges(UUIDS, 3),
        *_ranges(TOKENS, 3),
        *plan_ids(
            [uuid.uuid4() for _ in range(3)],
            2,
            job="v",
            action=JobAction.VERIFY,
            source=Store.CASSANDRA,
            repair=True,
            sample=0.25,
        ),
    ]
    for unit in units:
        message = unit.to_json()
        json.loads(message)  # plain JSON
        assert WorkUnit.from_json(message) == unit
        assert WorkUnit.from_json(message.encode()) == unit


@pytest.mark.parametrize(
    "change",
    [
        {"source": "documentdb"},  # same as target
        {"kind": "ids"},  # a range unit's fields on an ids unit
        {"start": 5, "end": 5},
        {"end": 2**129},
        {"version": 2},
        {"repair": True},  # a verify option on a backfill
        {"job": "bad name with spaces"},
        {"surprise": 1},
        {"ids": ["not-a-uuid"]},
    ],
)
def test_malformed_messages_are_refused_without_echoing_them(change: dict[str, object]) -> None:
    data = json.loads(_ranges(UUIDS, 2)[0].to_json()) | change
    with pytest.raises(ConfigurationError) as info:
        WorkUnit.from_json(json.dumps(data))
    assert "not-a-uuid" not in str(info.value)
    assert "spaces" not in str(info.value)


def test_garbage_message_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="invalid work unit"):
        WorkUnit.from_json("{not json")


def test_read_id_file_accepts_comments_blank_lines_and_drops_duplicates(tmp_path: Path) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    path = tmp_path / "ids.txt"
    path.write_text(f"# ids from support\n\n{a}\n  {str(b).upper()}  \n{a.hex}\n{b}\n")
    assert read_id_file(path) == [a, b]


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ("{a}\nnot-a-uuid\n", 2),
        ("{a}\n{a}{a}\n", 2),  # two ids pasted together
        ("\n\n{a}x\n", 3),
        ("{a}\n0b7e8a5c3f0e4b7a9a550c2f0f3f5d1\n", 2),  # truncated
        ("{{{a}}}\n", 1),  # braces: a form uuid.UUID accepts, but not ours
        ("{a}\n' OR 1=1 --\n", 2),
    ],
)
def test_read_id_file_names_the_bad_line_not_its_content(
    tmp_path: Path, content: str, line: int
) -> None:
    path = tmp_path / "ids.txt"
    path.write_text(content.format(a=uuid.uuid4()))
    with pytest.raises(ConfigurationError, match=f"line {line}:") as info:
        read_id_file(path)
    assert "OR 1=1" not in str(info.value)


def test_read_id_file_rejects_binary_missing_and_empty_files(tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(ConfigurationError, match="line 1: not UTF-8"):
        read_id_file(binary)
    with pytest.raises(ConfigurationError, match="cannot read id file"):
        read_id_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigurationError, match="no session ids"):
        read_id_file(empty)


def test_shards_partition_the_plan_deterministically() -> None:
    units = _ranges(TOKENS, 100)
    shards = [shard(units, i, 7) for i in range(7)]
    assert sorted(u.unit_id for s in shards for u in s) == sorted(u.unit_id for u in units)
    assert all(s for s in shards)  # crc32 spreads 100 units over 7 shards
    assert shard(units, 3, 7) == shards[3]


@pytest.mark.parametrize("text", ["1", "3/3", "-1/2", "a/b", "1/0", ""])
def test_bad_shard_specs(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_shard(text)


@pytest.mark.parametrize("text", ["5", "5:5", "9:1", "a:b", "1:2:3", ":"])
def test_bad_ranges(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_range(text)


def test_fingerprint_changes_with_the_plan() -> None:
    assert plan_fingerprint(_ranges(TOKENS, 4)) == plan_fingerprint(_ranges(TOKENS, 4))
    assert plan_fingerprint(_ranges(TOKENS, 4)) != plan_fingerprint(_ranges(TOKENS, 5))
