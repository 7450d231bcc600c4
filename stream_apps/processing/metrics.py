"""The worker's metrics (one set per process, on the registry its entry point serves)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "iotmon_worker_records_total", "Records processed", ["kind"], registry=registry
        )
        self.readings = Counter(
            "iotmon_worker_readings_total", "Readings applied", registry=registry
        )
        self.late = Counter(
            "iotmon_worker_late_total", "Readings after their hour closed", registry=registry
        )
        self.finals = Counter(
            "iotmon_worker_final_aggregates_total",
            "Final hourly aggregates emitted",
            registry=registry,
        )
        self.alert_events = Counter(
            "iotmon_worker_alert_events_total",
            "Alert events emitted",
            ["transition"],
            registry=registry,
        )
        self.gaps = Counter(
            "iotmon_worker_state_gaps_total",
            "Records found missing from the restored state",
            registry=registry,
        )
        self.revoked = Counter(
            "iotmon_worker_revoked_skipped_total",
            "Records skipped because their partition was revoked before they were applied",
            registry=registry,
        )
        self.replayed = Counter(
            "iotmon_worker_replayed_total",
            "Sensor updates skipped because already applied",
            registry=registry,
        )
        self.chunks_missing = Counter(
            "iotmon_worker_seen_chunks_missing_total",
            "Sealed chunks of capture instants looked up and not found",
            registry=registry,
        )
        self.dead_letters = Counter(
            "iotmon_worker_dead_letters_total",
            "Records of the readings topic the worker failed on, sent to the dead-letter topic",
            ["reason"],
            registry=registry,
        )
        self.repair_rejects = Counter(
            "iotmon_worker_repair_rejects_total",
            "Records of a repaired range that failed again (dead-lettered when first handled)",
            registry=registry,
        )
        self.task_errors = Counter(
            "iotmon_worker_task_errors_total",
            "Failures of a periodic task, skipped until its next run",
            ["task"],
            registry=registry,
        )

    @classmethod
    def uncounted(cls) -> WorkerMetrics:
        """Metrics on a registry of their own that nobody reads: what re-applying records
        already counted once increments."""
        return cls(CollectorRegistry())
