"""Every Prometheus metric cirelay exports, defined in one place on its own registry.

Labels are low-cardinality by construction: never a job id, bucket or free text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from service import __version__


class Metrics:
    """One instance per app, so tests and embedded emulators never share counters."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.build_info = Info("cirelay_build", "Build information.", registry=r)
        self.build_info.info({"version": __version__})

        self.jobs_enqueued = Counter(
            "cirelay_jobs_enqueued_total",
            "Jobs accepted into the queue.",
            ["tag", "via"],
            registry=r,
        )
        self.jobs_submitted = Counter(
            "cirelay_jobs_submitted_total",
            "Submission attempts by outcome (created, adopted, retry, dead, cancelled).",
            ["outcome"],
            registry=r,
        )
        self.jobs_finished = Counter(
            "cirelay_jobs_finished_total",
            "Batch jobs that reached an end state.",
            ["tag", "state"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "cirelay_queue_depth", "Jobs in the queue by state.", ["state"], registry=r
        )
        self.queue_oldest_age = Gauge(
            "cirelay_queue_oldest_age_seconds", "Age of the oldest queued job.", registry=r
        )
        self.ci_requests = Counter(
            "cirelay_ci_requests_total",
            "Calls to CI by operation and HTTP status (or 'error').",
            ["operation", "status"],
            registry=r,
        )
        self.ci_request_duration = Histogram(
            "cirelay_ci_request_duration_seconds",
            "Latency of calls to CI.",
            ["operation"],
            registry=r,
        )
        self.ci_throttled = Counter(
            "cirelay_ci_throttled_total",
            "Throttling answers from CI (429, 503, SlowDown).",
            registry=r,
        )
        self.events_received = Counter(
            "cirelay_events_received_total",
            "New canonical events stored.",
            ["source", "format", "event_type"],
            registry=r,
        )
        self.events_rejected = Counter(
            "cirelay_events_rejected_total",
            "Callbacks or messages refused, by reason.",
            ["source", "reason"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "cirelay_events_duplicate_total",
            "Events dropped as already stored.",
            ["source"],
            registry=r,
        )
        self.retention_pruned = Counter(
            "cirelay_retention_pruned_total",
            "Rows deleted by retention, by table.",
            ["table"],
            registry=r,
        )
        self.reconcile_pass = Histogram(
            "cirelay_reconcile_pass_seconds",
            "One reconcile pass over every unfinished batch this replica took.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300),
            registry=r,
        )
        self.events_reconciled = Counter(
            "cirelay_events_reconciled_total",
            "Events created by polling CI for a missed callback.",
            registry=r,
        )
        self.job_duration = Histogram(
            "cirelay_job_duration_seconds",
            "CI batch job duration, creation to end.",
            ["tag"],
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400),
            registry=r,
        )
        self.event_lag = Histogram(
            "cirelay_event_lag_seconds",
            "From a media job's end at CI to its event being stored.",
            buckets=(0.1, 0.5, 1, 2, 5, 15, 60, 300, 900, 3600),
            registry=r,
        )
        self.pulsar_connected = Gauge(
            "cirelay_pulsar_connected", "1 when the Pulsar client is connected, else 0.", registry=r
        )
        self.pulsar_messages = Counter(
            "cirelay_pulsar_messages_total",
            "Pulsar deliveries consumed, by component (events, intake) and outcome: acked"
            " (stored or queued), retried (transient failure, negatively acknowledged), refused"
            " (cannot parse, negatively acknowledged until the redelivery limit), dead_lettered.",
            ["component", "outcome"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "cirelay_outbox_pending", "Events stored but not yet published.", registry=r
        )
        self.webhook_deliveries = Counter(
            "cirelay_webhook_deliveries_total",
            "Webhook delivery attempts by outcome: delivered, retried (failed, another attempt is"
            " scheduled), dead (failed for good: a refused destination, a 4xx, or the schedule"
            " ran out).",
            ["outcome"],
            registry=r,
        )
        self.webhook_attempt_duration = Histogram(
            "cirelay_webhook_attempt_duration_seconds",
            "Duration of one webhook delivery attempt, connect to answer.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.webhook_pending = Gauge(
            "cirelay_webhook_pending", "Webhook deliveries waiting to be delivered.", registry=r
        )
        self.webhook_dead = Gauge(
            "cirelay_webhook_dead", "Webhook deliveries given up on (kept for retry).", registry=r
        )
        self.webhook_oldest_pending_age = Gauge(
            "cirelay_webhook_oldest_pending_age_seconds",
            "Age of the oldest pending webhook delivery (0 when none).",
            registry=r,
        )
        self.http_requests = Counter(
            "cirelay_http_requests_total",
            "HTTP requests served by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_duration = Histogram(
            "cirelay_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            registry=r,
        )
