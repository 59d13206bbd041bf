"""Units of work of the backfill, verify and purge jobs: small, independent, serializable.

A job is planned as a list of :class:`WorkUnit`: either one key range of the scanned
store (a Murmur3 token range for Cassandra, an ``_id`` range for DocumentDB) or an
explicit batch of session ids. A unit is a frozen pydantic model with a JSON round
trip, so it can be checkpointed, sharded across processes, or sent as a queue message
to workers of another job engine (see docs/jobs.md).

Example::

    units = plan_ranges(KeyRange(0, 2**128), 4, job="bf-1", action=JobAction.BACKFILL,
                        source=Store.DOCUMENTDB)
    message = units[0].to_json()
    assert WorkUnit.from_json(message) == units[0]
    mine = shard(units, 0, 2)          # a deterministic half of the plan

Everything here validates before any store is touched and raises
:class:`~sessionstore.ConfigurationError` naming what is wrong (line numbers for id
files), never echoing session data.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import os
import re
import uuid
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sessionstore._errors import ConfigurationError
from sessionstore.backends.base import KeyRange
from sessionstore.phases import Store

__all__ = [
    "MAX_IDS_PER_UNIT",
    "STORE_KEY_SPACES",
    "JobAction",
    "UnitKind",
    "WorkUnit",
    "parse_range",
    "parse_shard",
    "plan_fingerprint",
    "plan_ids",
    "plan_ranges",
    "read_id_file",
    "shard",
]

#: At most this many ids per unit: 5000 canonical UUIDs keep a message under SQS's 256 KB.
MAX_IDS_PER_UNIT = 5000
# The widest bounds any store uses: Murmur3 tokens below, 128-bit UUID values above.
_LOWEST, _HIGHEST = -(2**63), 2**128
#: The key space of each real store, known without connecting: Murmur3 tokens for
#: Cassandra, 128-bit ``_id`` (UUID) values for DocumentDB.
STORE_KEY_SPACES: dict[Store, KeyRange] = {
    Store.CASSANDRA: KeyRange(-(2**63), 2**63),
    Store.DOCUMENTDB: KeyRange(0, 2**128),
}
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class JobAction(enum.StrEnum):
    """What a unit does."""

    #: Copy every record of the unit from the source to the target (revision rule).
    BACKFILL = "backfill"
    #: Compare the unit's records in both stores (and repair, if asked).
    VERIFY = "verify"
    #: Remove the old tombstones of the unit's range from both stores (range units only).
    PURGE = "purge"


class UnitKind(enum.StrEnum):
    """How a unit names its sessions."""

    #: A half-open key range ``[start, end)`` of the scanned store.
    RANGE = "range"
    #: An explicit batch of session ids.
    IDS = "ids"


def check_job_name(name: str) -> str:
    """Job names key checkpoints and messages: letters, digits and ``_.:-``, 1-128 long.

    >>> check_job_name("backfill-2026-01")
    'backfill-2026-01'
    """
    if not isinstance(name, str) or not _JOB_NAME.match(name):
        raise ConfigurationError(
            "job name must be 1-128 letters, digits or '_.:-', starting with a letter or digit"
        )
    return name


class WorkUnit(BaseModel):
    """One independent unit of a backfill, verify or purge job, as a JSON message.

    ``scan`` is the store whose key space a range unit covers: the source for a backfill
    and for the first pass of verify and purge; the target for their second pass, which
    finds keys (verify) or tombstones (purge) that only the target holds. ``repair``
    and ``sample`` are verify options.

    >>> unit = WorkUnit(job="j", unit_id="ids-0", action="backfill", source="cassandra",
    ...                 target="documentdb", kind="ids", ids=(uuid.UUID(int=1),))
    >>> WorkUnit.from_json(unit.to_json()) == unit
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: Message format version, so that workers can refuse messages they do not know.
    version: Literal[1] = 1
    job: str = Field(min_length=1, max_length=128)
    unit_id: str = Field(min_length=1, max_length=200)
    action: JobAction
    source: Store
    target: Store
    kind: UnitKind
    scan: Store | None = None
    start: int | None = None
    end: int | None = None
    ids: tuple[uuid.UUID, ...] = ()
    repair: bool = False
    sample: float = Field(default=1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        check_job_name(self.job)
        if self.source is self.target:
            raise ValueError("source and target must be different stores")
        if self.kind is UnitKind.RANGE:
            if self.start is None or self.end is None or self.ids:
                raise ValueError("a range unit needs start and end, and no ids")
            if not _LOWEST <= self.start < self.end <= _HIGHEST:
                raise ValueError("a range unit needs start < end within any store's key space")
            if self.scan is None:
                object.__setattr__(self, "scan", self.source)
        else:
            if self.start is not None or self.end is not None or self.scan is not None:
                raise ValueError("an ids unit has no start, end or scan")
            if not 0 < len(self.ids) <= MAX_IDS_PER_UNIT:
                raise ValueError(f"an ids unit holds 1 to {MAX_IDS_PER_UNIT} ids")
        if self.action is not JobAction.VERIFY and (self.repair or self.sample != 1.0):
            raise ValueError("repair and sample are verify options")
        if self.action is JobAction.BACKFILL and self.scan not in (None, self.source):
            raise ValueError("a backfill scans its source")
        if self.action is JobAction.PURGE and self.kind is not UnitKind.RANGE:
            raise ValueError("a purge unit is a key range")
        return self

    @property
    def key_range(self) -> KeyRange:
        """The range of a range unit (ConfigurationError for an ids unit)."""
        if self.start is None or self.end is None:
            raise ConfigurationError(f"unit {self.unit_id} is not a range unit")
        return KeyRange(self.start, self.end)

    @property
    def size_hint(self) -> int | None:
        """How many sessions the unit names, when known (ids units)."""
        return len(self.ids) if self.kind is UnitKind.IDS else None

    def to_json(self) -> str:
        """The unit as a compact JSON message."""
        return self.model_dump_json(exclude_defaults=False)

    @classmethod
    def from_json(cls, message: str | bytes) -> Self:
        """Parse a message; a malformed one raises ConfigurationError (names, no values)."""
        try:
            return cls.model_validate_json(message)
        except ValidationError as exc:
            raise _config_error("invalid work unit", exc) from None


def _config_error(what: str, exc: ValidationError) -> ConfigurationError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<message>'}: {err['msg']}"
        for err in exc.errors()
    )
    return ConfigurationError(f"{what}: {problems}")


def _unit(**fields: Any) -> WorkUnit:
    try:
        return WorkUnit(**fields)
    except ValidationError as exc:
        raise _config_error("cannot plan unit", exc) from None


def plan_ranges(
    key_space: KeyRange,
    parts: int,
    *,
    job: str,
    action: JobAction,
    source: Store,
    scan: Store | None = None,
    ranges: Sequence[KeyRange] | None = None,
    repair: bool = False,
    sample: float = 1.0,
) -> list[WorkUnit]:
    """Split ``key_space`` (or each of ``ranges``, which must lie inside it) into units.

    ``parts`` applies to each range. Unit ids name their bounds, so the same plan always
    yields the same ids (that is what checkpoints and shards key on); they also name the
    scanned store, so verify's two passes never share an id.

    >>> [u.unit_id for u in plan_ranges(KeyRange(0, 100), 2, job="j",
    ...                                 action=JobAction.BACKFILL, source=Store.CASSANDRA)]
    ['cassandra:0:50', 'cassandra:50:100']
    """
    check_job_name(job)
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ConfigurationError("parts must be a positive integer")
    scanned = scan or source
    chosen = list(ranges) if ranges else [key_space]
    for r in chosen:
        if r.start < key_space.start or r.end > key_space.end:
            raise ConfigurationError(
                f"range [{r.start}, {r.end}) is outside the {scanned} key space "
                f"[{key_space.start}, {key_space.end})"
            )
    ordered = sorted(chosen)
    for a, b in itertools.pairwise(ordered):
        if b.start < a.end:
            raise ConfigurationError(
                f"ranges [{a.start}, {a.end}) and [{b.start}, {b.end}) overlap"
            )
    return [
        _unit(
            job=job,
            unit_id=f"{scanned}:{part.start}:{part.end}",
            action=action,
            source=source,
            target=source.other,
            kind=UnitKind.RANGE,
            scan=scanned,
            start=part.start,
            end=part.end,
            repair=repair,
            sample=sample,
        )
        for r in ordered
        for part in r.split(parts)
    ]


def plan_ids(
    ids: Sequence[uuid.UUID],
    batch: int,
    *,
    job: str,
    action: JobAction,
    source: Store,
    repair: bool = False,
    sample: float = 1.0,
) -> list[WorkUnit]:
    """Batch explicit session ids into units of at most ``batch`` ids.

    >>> units = plan_ids([uuid.UUID(int=i) for i in range(5)], 2, job="j",
    ...                  action=JobAction.BACKFILL, source=Store.CASSANDRA)
    >>> [len(u.ids) for u in units]
    [2, 2, 1]
    """
    check_job_name(job)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 0 < batch <= MAX_IDS_PER_UNIT:
        raise ConfigurationError(f"batch must be between 1 and {MAX_IDS_PER_UNIT}")
    if not ids:
        raise ConfigurationError("no session ids to plan")
    units = []
    for index, start in enumerate(range(0, len(ids), batch)):
        chunk = tuple(ids[start : start + batch])
        digest = zlib.crc32(b"".join(i.bytes for i in chunk))
        units.append(
            _unit(
                job=job,
                unit_id=f"ids:{index:06d}:{digest:08x}",
                action=action,
                source=source,
                target=source.other,
                kind=UnitKind.IDS,
                ids=chunk,
                repair=repair,
                sample=sample,
            )
        )
    return units


def read_id_file(path: str | os.PathLike[str]) -> list[uuid.UUID]:
    """Read session ids, one per line; blank lines and ``#`` comments are skipped.

    Every line is checked before anything else happens: the first malformed one raises
    ConfigurationError naming its line number (not its content). Duplicates are dropped,
    keeping the first occurrence. Example file::

        # sessions reported by support
        0b7e8a5c-3f0e-4b7a-9a55-0c2f0f3f5d11
        9d0c3c1e-62a4-4f35-8f7e-3f2b9a1d2c44
    """
    try:
        with open(path, "rb") as handle:
            raw_lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read id file {os.fspath(path)!r}: {exc.strerror or type(exc).__name__}"
        ) from None
    seen: dict[uuid.UUID, None] = {}
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigurationError(f"id file line {number}: not UTF-8 text") from None
        if not line or line.startswith("#"):
            continue
        seen.setdefault(_parse_id(line, number), None)
    if not seen:
        raise ConfigurationError(f"id file {os.fspath(path)!r} holds no session ids")
    return list(seen)


def _parse_id(text: str, number: int) -> uuid.UUID:
    # Canonical 36-character form (any case) or 32 hex digits; nothing looser, so that a
    # truncated or pasted-together line is an error and not a different session.
    if len(text) not in (32, 36):
        raise ConfigurationError(f"id file line {number}: not a session id (UUID)")
    try:
        value = uuid.UUID(text)
    except ValueError:
        raise ConfigurationError(f"id file line {number}: not a session id (UUID)") from None
    if len(text) == 36 and str(value) != text.lower():
        raise ConfigurationError(f"id file line {number}: not a session id (UUID)")
    return value


def parse_range(text: str) -> KeyRange:
    """Parse ``START:END`` (integers, ``0x`` hex allowed) into a half-open KeyRange.

    >>> parse_range("-100:0x10")
    KeyRange(start=-100, end=16)
    """
    start_text, sep, end_text = text.partition(":")
    try:
        if not sep:
            raise ValueError
        start, end = int(start_text, 0), int(end_text, 0)
    except ValueError:
        raise ConfigurationError(f"range {text!r} is not START:END with integers") from None
    if not start < end:
        raise ConfigurationError(f"range {text!r} is empty (START must be below END)")
    return KeyRange(start, end)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``i/N`` (0 <= i < N) as given to ``--shard``.

    >>> parse_shard("2/8")
    (2, 8)
    """
    index_text, sep, count_text = text.partition("/")
    try:
        if not sep:
            raise ValueError
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigurationError(f"shard {text!r} is not i/N") from None
    if not 0 <= index < count:
        raise ConfigurationError(f"shard {text!r} needs 0 <= i < N")
    return index, count


def shard(units: Iterable[WorkUnit], index: int, count: int) -> list[WorkUnit]:
    """The units of shard ``index`` of ``count``: deterministic by CRC-32 of the unit id.

    Every unit lands in exactly one shard, whatever process computes it.

    >>> units = plan_ranges(KeyRange(0, 1000), 10, job="j", action=JobAction.BACKFILL,
    ...                     source=Store.CASSANDRA)
    >>> sum(len(shard(units, i, 3)) for i in range(3))
    10
    """
    if not 0 <= index < count:
        raise ConfigurationError("shard needs 0 <= index < count")
    return [u for u in units if zlib.crc32(u.unit_id.encode()) % count == index]


def plan_fingerprint(units: Iterable[WorkUnit]) -> str:
    """A digest of a whole plan; a checkpointed job refuses to resume a different plan.

    The job name is left out: two runs of the same plan under different names have the
    same fingerprint, which is how a resume finds the earlier runs of its plan.

    >>> a = plan_ranges(KeyRange(0, 100), 2, job="a", action=JobAction.BACKFILL,
    ...                 source=Store.CASSANDRA)
    >>> b = plan_ranges(KeyRange(0, 100), 2, job="b", action=JobAction.BACKFILL,
    ...                 source=Store.CASSANDRA)
    >>> plan_fingerprint(a) == plan_fingerprint(b) != plan_fingerprint(a[:1])
    True
    """
    digest = hashlib.sha256()
    for unit in units:
        digest.update(unit.model_dump_json(exclude={"job"}).encode())
        digest.update(b"\n")
    return digest.hexdigest()
