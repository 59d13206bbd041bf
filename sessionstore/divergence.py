"""Comparing what two stores hold for one key, by field name only.

Example::

    d = compare_records(authoritative_record, secondary_record)
    if d.needs_repair: ...
    d.fields   # e.g. ("answers", "status"): names, never values
"""

from __future__ import annotations

import dataclasses
import enum

from sessionstore.backends.base import StoredRecord

__all__ = ["Divergence", "DivergenceKind", "compare_records"]


class DivergenceKind(enum.StrEnum):
    """How the secondary (or target) differs from the authoritative (or source) store."""

    #: Same newest revision and content (or both absent).
    CONSISTENT = "consistent"
    #: The key is in the authoritative store only.
    MISSING = "missing"
    #: The secondary holds an older revision.
    STALE = "stale"
    #: The secondary holds a newer revision (expected briefly while dual-writing).
    NEWER = "newer"
    #: Same revision, different content: a bug somewhere, never expected.
    CONTENT_MISMATCH = "content_mismatch"
    #: Same revision, deleted in one store only.
    DELETED_IN_ONE = "deleted_in_one"


@dataclasses.dataclass(frozen=True, slots=True)
class Divergence:
    """The result of one comparison: its kind and the names of the differing fields."""

    kind: DivergenceKind
    fields: tuple[str, ...] = ()

    @property
    def consistent(self) -> bool:
        """True when both stores agree."""
        return self.kind is DivergenceKind.CONSISTENT

    @property
    def needs_repair(self) -> bool:
        """True when copying the newer record to the other store would change something."""
        return not self.consistent


def compare_records(
    authoritative: StoredRecord | None, secondary: StoredRecord | None
) -> Divergence:
    """Compare two stores' records for the same key."""
    if authoritative is None and secondary is None:
        return Divergence(DivergenceKind.CONSISTENT)
    if secondary is None:
        return Divergence(DivergenceKind.MISSING, ("revision",))
    if authoritative is None:
        return Divergence(DivergenceKind.NEWER, ("revision",))
    if secondary.revision < authoritative.revision:
        return Divergence(DivergenceKind.STALE, _diff(authoritative, secondary))
    if secondary.revision > authoritative.revision:
        return Divergence(DivergenceKind.NEWER, _diff(authoritative, secondary))
    if authoritative.deleted != secondary.deleted:
        return Divergence(DivergenceKind.DELETED_IN_ONE, ("deleted",))
    fields = _diff(authoritative, secondary)
    if fields:
        return Divergence(DivergenceKind.CONTENT_MISMATCH, fields)
    return Divergence(DivergenceKind.CONSISTENT)


def _diff(a: StoredRecord, b: StoredRecord) -> tuple[str, ...]:
    """Names of the top-level fields that differ (``deleted`` if only one is a tombstone)."""
    if a.session is None or b.session is None:
        same_revision = a.revision == b.revision
        return ("deleted",) if a.deleted != b.deleted else (() if same_revision else ("revision",))
    left, right = a.session, b.session
    return tuple(
        name for name in type(left).model_fields if getattr(left, name) != getattr(right, name)
    )
