"""What a session really costs in each store, measured with the stores' own encoders.

- DocumentDB: the BSON document of ``to_doc``, encoded by PyMongo's ``bson``.
- Cassandra: the EXECUTE request of the save (the row of ``to_row`` serialized by
  cassandra-driver's CQL types, framed by its protocol encoder, as v5 sends it), and the
  mutation the server builds from it, which Cassandra caps at ``max_mutation_size``.

The mutation is serialized inside the server; what it adds to the values (table id,
partition key, row and cell headers) was measured on Cassandra 5.0.6, which names the
size of a mutation it refuses ("Rejected an oversized mutation (N/16777216)"): 162 to
168 bytes over the serialized values, whatever the shape of the session.
"""

from __future__ import annotations

import dataclasses

import bson
from cassandra import ConsistencyLevel, cqltypes
from cassandra.protocol import ExecuteMessage, ProtocolHandler

from sessionstore import StudentSession
from sessionstore.backends import _cql_codec
from sessionstore.backends._bson_codec import to_doc
from sessionstore.backends.cassandra import schema_cql

#: Above what a Cassandra 5.0 mutation adds to the serialized values (measured 162-168).
MUTATION_OVERHEAD = 256

# The driver's type for each type the library's schema uses.
_DRIVER_TYPES: dict[str, type[cqltypes._CassandraType]] = {
    "uuid": cqltypes.UUIDType,
    "text": cqltypes.UTF8Type,
    "timestamp": cqltypes.DateType,
    "bigint": cqltypes.LongType,
    "boolean": cqltypes.BooleanType,
    "frozen<list<blob>>": cqltypes.ListType.apply_parameters([cqltypes.BytesType]),
    "frozen<map<text, text>>": cqltypes.MapType.apply_parameters(
        [cqltypes.UTF8Type, cqltypes.UTF8Type]
    ),
}


def _column_types() -> tuple[type[cqltypes._CassandraType], ...]:
    # Read from the library's own CREATE TABLE, so that a schema change shows up here.
    declared: dict[str, str] = {}
    for line in schema_cql("ks", "t").splitlines()[1:-1]:
        name, _, cql_type = line.strip().rstrip(",").removesuffix(" PRIMARY KEY").partition(" ")
        declared[name] = cql_type
    return tuple(_DRIVER_TYPES[declared[c]] for c in _cql_codec.INSERT_COLUMNS)


_COLUMN_TYPES = _column_types()


@dataclasses.dataclass(frozen=True)
class Encodings:
    """Bytes of one session in each encoding a store is asked to accept."""

    bson_document: int
    cql_request: int
    cql_mutation: int

    def largest(self) -> int:
        return max(self.bson_document, self.cql_request, self.cql_mutation)


def measure(session: StudentSession) -> Encodings:
    """The real sizes of ``session`` (its revision must be above 0 for Cassandra)."""
    # The save binds the row and then USING TIMESTAMP's value.
    values = [
        cql_type.serialize(value, 5)
        for cql_type, value in zip(_COLUMN_TYPES, _cql_codec.to_row(session), strict=True)
    ]
    values.append(cqltypes.LongType.serialize(session.revision, 5))
    message = ExecuteMessage(
        b"\xab" * 16,  # prepared statement id: an MD5
        values,
        ConsistencyLevel.LOCAL_QUORUM,
        timestamp=2**62,  # the driver's client-side timestamp
        result_metadata_id=b"\xcd" * 16,
    )
    request = len(ProtocolHandler.encode_message(message, 0, 5, None, False))
    return Encodings(
        bson_document=len(bson.encode(to_doc(session))),
        cql_request=request,
        cql_mutation=sum(len(v) for v in values) + MUTATION_OVERHEAD,
    )
