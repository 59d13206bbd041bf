"""The phase from a LaunchDarkly migration flag, with each operation reported back.

Example::

    import ldclient
    from ldclient.config import Config
    client = ldclient.LDClient(Config(sdk_key))
    phases = LaunchDarklyPhaseSource(client, flag_key="session-store-migration",
                                     default_phase=Phase.CASSANDRA_ONLY)

The flag is evaluated with a context keyed by the session id (kind ``session``), so a
percentage rollout keeps one session in one phase. When the flag cannot be evaluated
(client not initialized, flag missing, wrong type) the configured default phase applies
and ``sessionstore.phase.fallbacks`` is counted with the reason.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import TYPE_CHECKING, Any

from ldclient import Context
from ldclient.evaluation import EvaluationDetail
from ldclient.hook import EvaluationSeriesContext, Hook, Metadata
from ldclient.migrations import Operation as LDOperation
from ldclient.migrations import OpTracker, Origin, Stage

from sessionstore._errors import ConfigurationError
from sessionstore._telemetry import Telemetry
from sessionstore.phases import Operation, Phase, PhaseDecision, Store

if TYPE_CHECKING:
    from ldclient.client import LDClient

__all__ = ["LaunchDarklyPhaseSource"]

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

    Registers a small evaluation hook on ``client`` to learn whether the flag evaluated
    or fell back to the default.
    """

    def __init__(
        self,
        client: LDClient,
        *,
        flag_key: str,
        default_phase: Phase = Phase.CASSANDRA_ONLY,
        context_kind: str = "session",
        telemetry: Telemetry | None = None,
    ) -> None:
        if not flag_key:
            raise ConfigurationError("flag_key must not be empty")
        self._client = client
        self._flag_key = flag_key
        self._default_stage = Stage(Phase(default_phase).value)
        self._context_kind = context_kind
        self._telemetry = telemetry or Telemetry()
        self._hook = _DetailHook(flag_key)
        client.add_hook(self._hook)

    def bind_telemetry(self, telemetry: Telemetry) -> None:
        """Count fallbacks on the repository's telemetry (called by the repository)."""
        self._telemetry = telemetry

    def decide(self, session_id: uuid.UUID, operation: Operation) -> PhaseDecision:
        """Evaluate the flag for this session; fall back to the default phase on error."""
        context = Context.builder(str(session_id)).kind(self._context_kind).build()
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
