"""Migration jobs that work on whole stores: reconcile and the rehearsal."""

from sessionstore.jobs.reconcile import ReconcileReport, reconcile
from sessionstore.jobs.rehearsal import RehearsalConfig, RehearsalReport, run_rehearsal

__all__ = ["ReconcileReport", "RehearsalConfig", "RehearsalReport", "reconcile", "run_rehearsal"]
