"""The daemon's own counters and histograms, in a registry of Corral's (never prometheus_client's global default one,
which would also collect whatever else the process imports).

These are updated where things happen (the API middleware, the QMP monitor, the operations journal); the per-VM and
per-host figures are not here: :mod:`corral.metrics.collector` renders them from the sampler's cache at each scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Every daemon-wide metric; the scrape renders it beside the VM collector (corral.metrics.route).
REGISTRY = CollectorRegistry(auto_describe=False)

#: Seconds buckets for API requests: most answer in milliseconds, a launch waits for a boot (seconds to minutes).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Seconds buckets for journaled operations (snapshots, clones, backups, exports...): seconds to many minutes.
OPERATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

API_REQUESTS = Counter(
    "corral_api_requests", "HTTP requests answered by the API, by method, route template (never the raw path: "
    "bounded label values) and status code",
    ["method", "route", "status"], registry=REGISTRY)

API_REQUEST_DURATION = Histogram(
    "corral_api_request_duration_seconds", "Time from a request's arrival to the end of its response, by method "
    "and route template (a streamed response counts until its end)",
    ["method", "route"], buckets=REQUEST_BUCKETS, registry=REGISTRY)

OPERATION_DURATION = Histogram(
    "corral_operation_duration_seconds", "Duration of the operations of the operations journal (corral.operations: "
    "snapshot, revert, clone, template, backup, restore, export, import, disk, disk-resize, mount, cp, sandbox), "
    "by kind and result (ok or error), whoever started them (a request, a schedule)",
    ["operation", "result"], buckets=OPERATION_BUCKETS, registry=REGISTRY)

QMP_ERRORS = Counter(
    "corral_qmp_errors", "QMP commands that failed: QEMU answered with an error (error = its class, GenericError, "
    "DeviceNotFound...) or gave no answer in time or lost the connection (error = NoAnswer)",
    ["command", "error"], registry=REGISTRY)

MIGRATIONS = Counter(
    "corral_migrations", "Live migrations of VMs between hosts, by result (ok or error). Corral has no "
    "migration between hosts yet: this counter exists, at 0, so dashboards and alerts can be written now; the "
    "cluster work increments it (MIGRATIONS.labels(result=...).inc()) when a migration ends",
    ["result"], registry=REGISTRY)
for _result in ("ok", "error"):
    MIGRATIONS.labels(result=_result)  # both series exist from the start, at 0

DAEMON_START_TIME = Gauge(
    "corral_daemon_start_time_seconds", "When this corrald started, seconds since the Unix epoch", registry=REGISTRY)

INCOMPLETE_SAMPLES = Counter(
    "corral_metrics_incomplete_samples", "Per-VM samples in which a QMP or guest agent question failed or did not "
    "answer within the sampler's per-VM timeout (those figures of that VM are then from its previous sample)",
    registry=REGISTRY)

SAMPLE_DURATION = Gauge(
    "corral_metrics_sample_duration_seconds", "How long the last pass of the metrics sampler took (all VMs, "
    "concurrently)", registry=REGISTRY)

SAMPLE_TIME = Gauge(
    "corral_metrics_sample_timestamp_seconds", "When the metrics sampler last finished a pass, seconds since the "
    "Unix epoch (the per-VM and per-host figures are as of then)", registry=REGISTRY)


def qmp_error(command: str, error: str) -> None:
    """Count one failed QMP command (called by corral.engine.monitor)."""
    QMP_ERRORS.labels(command=command, error=error).inc()


def operation_ended(kind: str, seconds: float, ok: bool) -> None:
    """Observe one journaled operation's duration (called by corral.operations.journal)."""
    OPERATION_DURATION.labels(operation=kind, result="ok" if ok else "error").observe(max(0.0, seconds))
