"""The phase from a LaunchDarkly migration flag, with each operation reported back.

Example::

    import ldclient
    from ldclient.config import Config
    client = ldclient.LDClient(Config(sdk_key))
    phases = LaunchDarklyPhaseSource(
        client,
        flag_key="session-store-migration",
        context_key_secret=os.environ["SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET"],
        default_phase=Phase.CASSANDRA_ONLY,
    )

The flag is evaluated with a context of kind ``session`` whose key is a keyed hash of the
session id: ``HMAC-SHA256(context_key_secret, str(session_id))`` in hex. The same session
always gets the same key, in every process that has the same secret, so a percentage
rollout keeps one session in one phase; LaunchDarkly never receives a session id (nor
any student identifier). Without a secret the source refuses to start, unless
``raw_session_ids=True`` explicitly sends the session ids themselves. When the flag
cannot be evaluated (client not initialized, flag missing, wrong type) the configured
default phase applies and ``sessionstore.phase.fallbacks`` is counted with the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import threading
import uuid
from typing import TYPE_CHECKING, Any

from ldclient import Context
from ldclient.evaluation import EvaluationDetail
from ldclient.hook import EvaluationSeriesContext, Hook, Metadata
from ldclient.migrations import Operation as LDOperation
from ldclient.migrations import OpTracker, Origin, Stage
from pydantic import SecretStr

from sessionstore._errors import ConfigurationError
from sessionstore._telemetry import Telemetry
from sessionstore.model import validate_session_id
from sessionstore.phases import Operation, Phase, PhaseDecision, Store

if TYPE_CHECKING:
    from ldclient.client import LDClient

__all__ = ["CONTEXT_KEY_SECRET_VARIABLE", "MIN_CONTEXT_KEY_SECRET_BYTES", "LaunchDarklyPhaseSource"]

#: Where the command line (``sessionstore phase``) reads the context key secret; the
#: service should read the same variable, so that both compute the same context keys.
CONTEXT_KEY_SECRET_VARIABLE = "SESSIONSTORE_LAUNCHDARKLY_CONTEXT_SECRET"  # noqa: S105 (a name)
#: A shorter secret is refused: it could be guessed, and the session ids recovered.
MIN_CONTEXT_KEY_SECRET_BYTES = 16

_ORIGIN = {Store.CASSANDRA: Origin.OLD, Store.DOCUMENTDB: Origin.NEW}
_LD_OP = {Operation.READ: LDOperation.READ, Operation.WRITE: LDOperation.WRITE}


class _DetailHook(Hook):
    """Keeps the evaluation detail of our flag, which migration_variation does not return.

    Evaluation is synchronous on the calling thread, so a thread-local is exact.
    """

    def __init__(self, flag_key: str) -> None:
        self._flag_key = flag_key
        self.local = threading.local()

    @property
    def metadata(self) -> Metadata:
        return Metadata(name="sessionstore-phase-detail")

    def before_evaluation(
        self, series_context: EvaluationSeriesContext, data: dict[str, Any]
    ) -> dict[str, Any]:
        return data

    def after_evaluation(
        self,
        series_context: EvaluationSeriesContext,
        data: dict[str, Any],
        detail: EvaluationDetail,
    ) -> dict[str, Any]:
        if series_context.key == self._flag_key:
            self.local.detail = detail
        return data


class _LDDecision:
    __slots__ = ("_client", "_tracker", "phase")

    def __init__(self, client: LDClient, tracker: OpTracker, phase: Phase) -> None:
        self._client = client
        self._tracker = tracker
        self.phase = phase

    def record_invoked(self, store: Store) -> None:
        self._tracker.invoked(_ORIGIN[store])

    def record_latency(self, store: Store, seconds: float) -> None:
        self._tracker.latency(_ORIGIN[store], dt.timedelta(seconds=seconds))

    def record_error(self, store: Store) -> None:
        self._tracker.error(_ORIGIN[store])

    def record_consistent(self, consistent: bool) -> None:
        self._tracker.consistent(lambda: consistent)

    def finish(self) -> None:
        self._client.track_migration_op(self._tracker)


class LaunchDarklyPhaseSource:
    """Phase per session and operation from a LaunchDarkly migration flag.

    ``context_key_secret`` (at least 16 bytes, the same on every instance of the fleet,
    kept with the other secrets: it is never logged or shown) keys the hash that turns a
    session id into the context key LaunchDarkly sees; :meth:`context_key` gives that
    key, e.g. to target one session in the LaunchDarkly dashboard. ``raw_session_ids=True``
    instead of a secret sends the session ids as they are. Registers a small evaluation
    hook on ``client`` to learn whether the flag evaluated or fell back to the default.

    >>> from sessionstore.testing import launchdarkly_test_client
    >>> client, _ = launchdarkly_test_client()
    >>> source = LaunchDarklyPhaseSource(
    ...     client, flag_key="session-store-migration", context_key_secret="0123456789abcdef"
    ... )
    >>> sid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    >>> source.context_key(sid)  # hex HMAC-SHA256(secret, str(sid)): any language can compute it
    '7c50b6075808f4527fff19b1c153606b3ba5516b18bec14b3f61037bffed79cb'
    >>> client.close()
    """

    def __init__(
        self,
        client: LDClient,
        *,
        flag_key: str,
        context_key_secret: str | bytes | SecretStr | None = None,
        raw_session_ids: bool = False,
        default_phase: Phase = Phase.CASSANDRA_ONLY,
        context_kind: str = "session",
        telemetry: Telemetry | None = None,
    ) -> None:
        if not flag_key:
            raise ConfigurationError("flag_key must not be empty")
        self._keyed_hash = _keyed_hash(context_key_secret, raw_session_ids=raw_session_ids)
        self._client = client
        self._flag_key = flag_key
        self._default_stage = Stage(Phase(default_phase).value)
        self._context_kind = context_kind
        self._telemetry = telemetry or Telemetry()
        self._hook = _DetailHook(flag_key)
        client.add_hook(self._hook)

    @property
    def context_kind(self) -> str:
        """The kind of the contexts the flag is evaluated with (default ``"session"``)."""
        return self._context_kind

    def context_key(self, session_id: uuid.UUID) -> str:
        """The context key LaunchDarkly sees for ``session_id`` (the keyed hash by default).

        Stable: the same for every call, process and restart with the same secret.
        """
        return self._key(validate_session_id(session_id))

    def _key(self, session_id: uuid.UUID) -> str:
        if self._keyed_hash is None:
            return str(session_id)
        digest = self._keyed_hash.copy()
        digest.update(str(session_id).encode("ascii"))
        return digest.hexdigest()

    def bind_telemetry(self, telemetry: Telemetry) -> None:
        """Count fallbacks on the repository's telemetry (called by the repository)."""
        self._telemetry = telemetry

    def decide(self, session_id: uuid.UUID, operation: Operation) -> PhaseDecision:
        """Evaluate the flag for this session; fall back to the default phase on error."""
        context = Context.builder(self._key(session_id)).kind(self._context_kind).build()
        self._hook.local.detail = None
        stage, tracker = self._client.migration_variation(
            self._flag_key, context, self._default_stage
        )
        tracker.operation(_LD_OP[operation])
        detail: EvaluationDetail | None = self._hook.local.detail
        reason = detail.reason if detail is not None else None
        if reason is not None and reason.get("kind") == "ERROR":
            self._telemetry.phase_fallback(str(reason.get("errorKind", "UNKNOWN")))
        return _LDDecision(self._client, tracker, Phase(stage.value))


def _keyed_hash(
    secret: str | bytes | SecretStr | None, *, raw_session_ids: bool
) -> hmac.HMAC | None:
    # The HMAC state keyed once, copied per session; None means raw session ids.
    if secret is None:
        if raw_session_ids:
            return None
        raise ConfigurationError(
            "LaunchDarklyPhaseSource needs context_key_secret (the fleet-wide secret that "
            "hashes session ids into LaunchDarkly context keys, e.g. from "
            f"{CONTEXT_KEY_SECRET_VARIABLE}), or raw_session_ids=True to send the session "
            "ids themselves to LaunchDarkly"
        )
    if raw_session_ids:
        raise ConfigurationError("give context_key_secret or raw_session_ids=True, not both")
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not isinstance(key, bytes) or len(key) < MIN_CONTEXT_KEY_SECRET_BYTES:
        raise ConfigurationError(
            f"context_key_secret must be at least {MIN_CONTEXT_KEY_SECRET_BYTES} bytes"
        )
    return hmac.new(key, digestmod=hashlib.sha256)
