"""Connection settings of the jobs, from the environment (and command-line flags).

One frozen model for both stores and LaunchDarkly, so the command line and a queue
worker (see :mod:`sessionstore.jobs.handler`) configure stores the same way. Secrets
(the Cassandra password, the MongoDB URI, the LaunchDarkly SDK key) are ``SecretStr``:
never in ``repr``, ``str``, messages or reports; :meth:`ConnectionSettings.describe`
prints where a store is with the URI's password masked.

Example::

    settings = ConnectionSettings.from_env()          # SESSIONSTORE_* variables
    cassandra = settings.backend(Store.CASSANDRA)     # unopened; connects on first use
    print(settings.describe(Store.DOCUMENTDB))        # mongodb://app:***@host/ ...
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from sessionstore._errors import ConfigurationError, SessionStoreError
from sessionstore.backends.base import SessionBackend
from sessionstore.phases import Store

__all__ = ["ENVIRONMENT", "ConnectionSettings", "mask_uri"]

#: Field name -> environment variable.
ENVIRONMENT: dict[str, str] = {
    "cassandra_hosts": "SESSIONSTORE_CASSANDRA_HOSTS",
    "cassandra_port": "SESSIONSTORE_CASSANDRA_PORT",
    "cassandra_keyspace": "SESSIONSTORE_CASSANDRA_KEYSPACE",
    "cassandra_table": "SESSIONSTORE_CASSANDRA_TABLE",
    "cassandra_local_dc": "SESSIONSTORE_CASSANDRA_LOCAL_DC",
    "cassandra_username": "SESSIONSTORE_CASSANDRA_USERNAME",
    "cassandra_password": "SESSIONSTORE_CASSANDRA_PASSWORD",
    "cassandra_consistency": "SESSIONSTORE_CASSANDRA_CONSISTENCY",
    "cassandra_protocol_version": "SESSIONSTORE_CASSANDRA_PROTOCOL_VERSION",
    "cassandra_tls_ca_file": "SESSIONSTORE_CASSANDRA_TLS_CA_FILE",
    "cassandra_allow_plaintext_credentials": "SESSIONSTORE_CASSANDRA_ALLOW_PLAINTEXT_CREDENTIALS",
    "mongodb_uri": "SESSIONSTORE_MONGODB_URI",
    "documentdb_database": "SESSIONSTORE_DOCUMENTDB_DATABASE",
    "documentdb_collection": "SESSIONSTORE_DOCUMENTDB_COLLECTION",
    "documentdb_tls": "SESSIONSTORE_DOCUMENTDB_TLS",
    "documentdb_tls_ca_file": "SESSIONSTORE_DOCUMENTDB_TLS_CA_FILE",
    "tls_ca_file": "SESSIONSTORE_TLS_CA_FILE",
    "request_timeout": "SESSIONSTORE_REQUEST_TIMEOUT",
    "launchdarkly_sdk_key": "LAUNCHDARKLY_SDK_KEY",
    "launchdarkly_flag": "SESSIONSTORE_LAUNCHDARKLY_FLAG",
}


class ConnectionSettings(BaseModel):
    """Where the two stores and LaunchDarkly are. Unset values fail when a store needs them.

    ``tls_ca_file`` is the CA bundle of both stores unless ``cassandra_tls_ca_file`` or
    ``documentdb_tls_ca_file`` says otherwise. DocumentDB uses TLS unless
    ``documentdb_tls`` is False (the explicit plaintext opt-out); Cassandra uses TLS when
    it has a CA file, and sends a username and password without TLS only with
    ``cassandra_allow_plaintext_credentials``.

    >>> s = ConnectionSettings(mongodb_uri="mongodb://app:pw@db:27017/", documentdb_database="x")
    >>> "pw" in repr(s) or "pw" in s.describe(Store.DOCUMENTDB)
    False
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    cassandra_hosts: tuple[str, ...] = ("127.0.0.1",)
    cassandra_port: int = Field(default=9042, ge=1, le=65535)
    cassandra_keyspace: str | None = None
    cassandra_table: str = "sessions"
    cassandra_local_dc: str | None = None
    cassandra_username: str | None = None
    cassandra_password: SecretStr | None = None
    cassandra_consistency: str = "LOCAL_QUORUM"
    cassandra_protocol_version: int | None = None
    cassandra_tls_ca_file: Path | None = None
    cassandra_allow_plaintext_credentials: bool = False
    mongodb_uri: SecretStr | None = None
    documentdb_database: str | None = None
    documentdb_collection: str = "sessions"
    documentdb_tls: bool = True
    documentdb_tls_ca_file: Path | None = None
    tls_ca_file: Path | None = None
    #: Seconds a request, a connection attempt or a server selection may take; None keeps
    #: each backend's defaults (Cassandra: 10 s requests; DocumentDB: 30 s socket reads).
    request_timeout: float | None = Field(default=None, gt=0)
    launchdarkly_sdk_key: SecretStr | None = None
    launchdarkly_flag: str = "session-store-migration"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Read the ``SESSIONSTORE_*`` variables; ``overrides`` (flags) win when not None.

        Errors name the variable or field, never the value.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, variable in ENVIRONMENT.items():
            raw = env.get(variable)
            if raw is not None and raw.strip() != "":
                values[field] = raw.strip()
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("cassandra_hosts"), str):
            values["cassandra_hosts"] = tuple(
                h.strip() for h in values["cassandra_hosts"].split(",") if h.strip()
            )
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _settings_error(exc) from None

    # -- per store -------------------------------------------------------------------

    def cassandra_settings(self, **overrides: Any) -> Any:
        """The ``CassandraSettings`` for ``CassandraBackend.connect`` (needs the extra)."""
        from sessionstore.backends.cassandra import CassandraSettings

        if not self.cassandra_keyspace:
            raise ConfigurationError(
                "Cassandra keyspace is not set (--cassandra-keyspace or "
                "SESSIONSTORE_CASSANDRA_KEYSPACE)"
            )
        values: dict[str, Any] = {
            "contact_points": self.cassandra_hosts,
            "port": self.cassandra_port,
            "keyspace": self.cassandra_keyspace,
            "table": self.cassandra_table,
            "local_dc": self.cassandra_local_dc,
            "username": self.cassandra_username,
            "password": self.cassandra_password,
            "consistency": self.cassandra_consistency,
            "protocol_version": self.cassandra_protocol_version,
            "ssl_ca_file": self.cassandra_tls_ca_file or self.tls_ca_file,
            "allow_plaintext_credentials": self.cassandra_allow_plaintext_credentials,
        }
        if self.request_timeout is not None:
            values.update(
                request_timeout=self.request_timeout, connect_timeout=self.request_timeout
            )
        values.update(overrides)
        ca_file = values["ssl_ca_file"]
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigurationError("Cassandra TLS CA file does not exist or is not a file")
        try:
            return CassandraSettings(**values)
        except ValidationError as exc:
            raise _settings_error(exc, aliases=_CASSANDRA_FIELDS) from None
        except ConfigurationError as exc:  # the credentials-need-TLS rule
            raise ConfigurationError(
                f"{exc} (SESSIONSTORE_CASSANDRA_TLS_CA_FILE or "
                "SESSIONSTORE_CASSANDRA_ALLOW_PLAINTEXT_CREDENTIALS=true)"
            ) from None

    def documentdb_settings(self, **overrides: Any) -> Any:
        """The ``DocumentDBSettings`` for ``DocumentDBBackend.connect`` (needs the extra)."""
        from sessionstore.backends.documentdb import DocumentDBSettings

        if self.mongodb_uri is None:
            raise ConfigurationError(
                "MongoDB URI is not set (--mongodb-uri or SESSIONSTORE_MONGODB_URI)"
            )
        if not self.documentdb_database:
            raise ConfigurationError(
                "DocumentDB database is not set (--documentdb-database or "
                "SESSIONSTORE_DOCUMENTDB_DATABASE)"
            )
        # The shared CA file is for a store that uses TLS; a DocumentDB-only one given
        # with the plaintext opt-out is a contradiction that the settings report.
        ca_file = self.documentdb_tls_ca_file or (self.tls_ca_file if self.documentdb_tls else None)
        values: dict[str, Any] = {
            "uri": self.mongodb_uri,
            "database": self.documentdb_database,
            "collection": self.documentdb_collection,
            "tls": self.documentdb_tls,
            "tls_ca_file": ca_file,
        }
        if self.request_timeout is not None:
            millis = int(self.request_timeout * 1000)
            values.update(
                socket_timeout_ms=millis,
                connect_timeout_ms=millis,
                server_selection_timeout_ms=millis,
            )
        values.update(overrides)
        try:
            settings: Any = DocumentDBSettings(**values)
        except ConfigurationError as exc:
            # The TLS rules name the tls=False opt-out: say what it is called here.
            named = "tls=False" in str(exc)
            hint = " (tls=False is SESSIONSTORE_DOCUMENTDB_TLS=false)" if named else ""
            raise ConfigurationError(f"{exc}{hint}") from None
        return settings

    def backend(
        self, store: Store, *, insert_first: bool = False, **overrides: Any
    ) -> SessionBackend:
        """An unopened backend for ``store``; nothing connects until it is used.

        ``insert_first`` is for a backfill's DocumentDB target (Cassandra ignores it).
        """
        if store is Store.CASSANDRA:
            from sessionstore.backends.cassandra import CassandraBackend

            return CassandraBackend.connect(self.cassandra_settings(**overrides))
        from sessionstore.backends.documentdb import DocumentDBBackend

        return DocumentDBBackend.connect(
            self.documentdb_settings(**overrides), insert_first=insert_first
        )

    def describe(self, store: Store) -> str:
        """Where ``store`` is, for humans: hosts and names, secrets masked."""
        if store is Store.CASSANDRA:
            hosts = ",".join(self.cassandra_hosts)
            extras = []
            if self.cassandra_tls_ca_file or self.tls_ca_file:
                extras.append("TLS")
            elif self.cassandra_allow_plaintext_credentials and self.cassandra_username:
                extras.append("plaintext credentials")
            if self.cassandra_username:
                extras.append(f"user {self.cassandra_username}")
            tail = f" ({', '.join(extras)})" if extras else ""
            table = f"{self.cassandra_keyspace or '?'}.{self.cassandra_table}"
            return f"cassandra {hosts}:{self.cassandra_port} table {table}{tail}"
        uri = mask_uri(self.mongodb_uri.get_secret_value()) if self.mongodb_uri else "?"
        tls = " (TLS)" if self.documentdb_tls else " (plaintext)"
        where = f"{self.documentdb_database or '?'}.{self.documentdb_collection}"
        return f"documentdb {uri} collection {where}{tls}"


def mask_uri(uri: str) -> str:
    """The URI with its password masked and its options (which may hold tokens) hidden.

    >>> mask_uri("mongodb://app:s3cret@db1:27017,db2:27017/?tls=true&replicaSet=rs0")
    'mongodb://app:***@db1:27017,db2:27017/ (options hidden)'
    """
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<unparsable URI, hidden>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"{user}@{hosts}"
    else:
        netloc = hosts
    options = " (options hidden)" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{options}"


# CassandraSettings field -> ConnectionSettings field, to name the variable in errors.
_CASSANDRA_FIELDS = {
    "contact_points": "cassandra_hosts",
    "port": "cassandra_port",
    "keyspace": "cassandra_keyspace",
    "table": "cassandra_table",
    "local_dc": "cassandra_local_dc",
    "username": "cassandra_username",
    "password": "cassandra_password",
    "consistency": "cassandra_consistency",
    "protocol_version": "cassandra_protocol_version",
    "ssl_ca_file": "cassandra_tls_ca_file",
    "allow_plaintext_credentials": "cassandra_allow_plaintext_credentials",
}


def _settings_error(
    exc: ValidationError, *, aliases: Mapping[str, str] | None = None
) -> SessionStoreError:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<settings>"
        field = (aliases or {}).get(field.split(".")[0], field)
        name = ENVIRONMENT.get(field)
        label = f"{field} ({name})" if name else field
        problems.append(f"{label}: {err['msg']}")
    return ConfigurationError("invalid connection settings: " + "; ".join(problems))
