"""The Prometheus collector: reads the gateway's own counters when ``/metrics`` is scraped.

Nothing on the request path touches prometheus-client: requests, batches and shadows update
plain counters and accumulators (``gateway.telemetry.histogram``), and this collector builds
the metric families from them, and from the live state (models, routes, queues), per scrape.
Names and labels are part of the contract (PRODUCT.md section 5, docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.core import CoreSlot
from gateway.lifecycle import Lifecycle
from gateway.models import ModelManager, VersionState
from gateway.release.shadow import ShadowRunner
from gateway.stats import VersionStats
from gateway.telemetry.requests import RequestMetrics


class PredictionLogStats(Protocol):
    """What the prediction log reports to the collector."""

    def records(self) -> dict[str, int]:
        """Records written, per model."""
        ...

    def dropped(self) -> dict[tuple[str, str], int]:
        """Records dropped, per (model, reason)."""
        ...

    def queue_depth(self) -> int:
        """Records waiting to be written."""
        ...

    def queue_bytes(self) -> int:
        """Bytes of the records waiting to be written."""
        ...

    def reserve_timeouts(self) -> int:
        """``block`` policy: requests answered 503 because the log had no room in time."""
        ...


class DriftScores(Protocol):
    """What the online drift monitor reports to the collector."""

    def psi(self) -> dict[tuple[str, str, str], float]:
        """The latest PSI per (model, version, feature)."""
        ...

    def errors(self) -> dict[tuple[str, str], int]:
        """Failures per (model, stage): ``reference``, ``check``, ``webhook``."""
        ...

    def references(self) -> dict[str, bool]:
        """Per model naming a reference: whether it is loaded and watched."""
        ...


class BatchFamilies:
    """The batch-level families of versions: queue time, compute time, batch size, queue depth.

    A worker's collector and an engine's (gateway/telemetry/engine.py) build them alike, so the
    host's merge sums families of one name, help and label set.
    """

    def __init__(self) -> None:
        labels = ["model", "version"]
        self.queue = HistogramMetricFamily(
            "tensorgate_queue_duration_seconds", "Time requests waited in the batch queue", labels=labels
        )
        self.compute = HistogramMetricFamily(
            "tensorgate_compute_duration_seconds", "Time of runtime calls", labels=labels
        )
        self.batch = HistogramMetricFamily("tensorgate_batch_size", "Rows per runtime call", labels=labels)
        self.depth = GaugeMetricFamily("tensorgate_queue_depth", "Requests waiting in the batch queue", labels=labels)

    def add(self, labels: list[str], stats: VersionStats) -> None:
        """One version's queue, compute and batch-size histograms (calls run at once count as no wait, one row)."""
        direct = stats.direct_count
        buckets, total = stats.queue_seconds.cumulative((0.0, direct))
        self.queue.add_metric(labels, buckets, total)
        buckets, total = stats.compute_seconds.cumulative()
        self.compute.add_metric(labels, buckets, total)
        buckets, total = stats.batch_rows.cumulative((1, direct))
        self.batch.add_metric(labels, buckets, total)


class GatewayCollector(Collector):
    """Every ``tensorgate_*`` family; the state's families read the core in ``slot`` (empty before start-up)."""

    def __init__(self, requests: RequestMetrics, lifecycle: Lifecycle, slot: CoreSlot) -> None:
        self._requests = requests
        self._lifecycle = lifecycle
        self._slot = slot

    @property
    def _manager(self) -> ModelManager | None:
        core = self._slot.current
        return core.manager if core is not None else None

    @property
    def _shadows(self) -> ShadowRunner | None:
        core = self._slot.current
        return core.shadows if core is not None else None

    @property
    def _predlog(self) -> PredictionLogStats | None:
        core = self._slot.current
        return core.predlog if core is not None else None

    @property
    def _drift(self) -> DriftScores | None:
        core = self._slot.current
        return core.drift if core is not None else None

    def collect(self) -> Iterator[Metric]:
        """Build the families from the current counters and state."""
        yield from self._request_families()
        yield from self._version_families()
        yield from self._shadow_families()
        yield from self._predlog_families()
        drift = GaugeMetricFamily(
            "tensorgate_drift_psi", "Population stability index of a feature against its reference",
            labels=["model", "version", "feature"],
        )  # fmt: skip
        for labels, value in (self._drift.psi() if self._drift else {}).items():
            drift.add_metric(list(labels), value)
        yield drift
        yield from self._drift_health()
        # The release state store: a fleet's shared store may be away; the local directory is always up.
        core = self._slot.current
        fleet = core.fleet if core is not None else None
        up = GaugeMetricFamily(
            "tensorgate_state_store_up", "1 while the release state store answers (always 1 without state_store)"
        )
        up.add_metric([], 0.0 if fleet is not None and not fleet.up else 1.0)
        yield up

    def _drift_health(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "tensorgate_drift_errors_total",
            "Online drift failures by stage: reference (unreadable or malformed), check, webhook",
            labels=["model", "stage"],
        )
        loaded = GaugeMetricFamily(
            "tensorgate_drift_reference_loaded",
            "1 while a model's drift reference is loaded and watched, 0 while it is unusable (retried on change)",
            labels=["model"],
        )
        if self._drift is not None:
            for (model, stage), count in sorted(self._drift.errors().items()):
                errors.add_metric([model, stage], count)
            for model, ok in sorted(self._drift.references().items()):
                loaded.add_metric([model], 1 if ok else 0)
        yield from (errors, loaded)

    def _request_families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "tensorgate_requests_total", "Inference requests answered, by serving version, role and HTTP status",
            labels=["model", "version", "role", "code"],
        )  # fmt: skip
        duration = HistogramMetricFamily(
            "tensorgate_request_duration_seconds", "End-to-end inference request latency in the gateway",
            labels=["model", "version", "role"],
        )  # fmt: skip
        for key, series in list(self._requests.series.items()):
            for code, count in sorted(series.codes.items()):
                requests.add_metric([*key, str(code)], count)
            buckets, total = series.latency.cumulative()
            duration.add_metric(list(key), buckets, total)
        yield requests
        yield duration
        inflight = GaugeMetricFamily("tensorgate_inflight_requests", "Inference requests in progress")
        inflight.add_metric([], self._lifecycle.inflight)
        yield inflight
        body_bytes = GaugeMetricFamily(
            "tensorgate_inflight_body_bytes", "Bytes of inference request bodies held (max_inflight_body_bytes)"
        )
        body_bytes.add_metric([], self._lifecycle.body_bytes)
        yield body_bytes
        draining = GaugeMetricFamily("tensorgate_draining", "1 once a graceful drain has begun")
        draining.add_metric([], 1 if self._lifecycle.draining else 0)
        yield draining

    def _version_families(self) -> Iterator[Metric]:
        version_labels = ["model", "version"]
        batching = BatchFamilies()
        state = GaugeMetricFamily(
            "tensorgate_model_state", "1 for the state a loaded version is in", labels=["model", "version", "state"]
        )
        weight = GaugeMetricFamily("tensorgate_route_weight", "Percent of routed traffic", labels=version_labels)
        failures = CounterMetricFamily(
            "tensorgate_model_load_failures_total", "Version loads that failed", labels=["model", "reason"]
        )
        warmups = CounterMetricFamily(
            "tensorgate_model_warmup_failures_total",
            "Warm-ups on synthetic data that failed (the version serves anyway)",
            labels=version_labels,
        )
        circuit = GaugeMetricFamily(
            "tensorgate_remote_circuit_open", "1 while the circuit to a remote server is open", labels=version_labels
        )
        opens = CounterMetricFamily(
            "tensorgate_remote_circuit_opens_total",
            "Times the circuit to a remote server opened",
            labels=version_labels,
        )
        retries = CounterMetricFamily(
            "tensorgate_remote_retries_total", "Calls to a remote server tried again", labels=version_labels
        )
        remote_ready = GaugeMetricFamily(
            "tensorgate_remote_ready",
            "1 while the remote model is ready and its circuit not open",
            labels=version_labels,
        )
        manager = self._manager
        if manager is not None:
            for model in manager.models():
                for number, mv in sorted(model.versions.items()):
                    labels = [model.name, str(number)]
                    for each in VersionState:
                        state.add_metric([*labels, each.value], 1 if mv.state is each else 0)
                    batching.add(labels, mv.stats)
                    batching.depth.add_metric(labels, mv.batcher.queued if mv.batcher is not None else 0)
                    remote = mv.remote
                    if remote is not None:
                        circuit.add_metric(labels, 1 if remote.circuit == "open" else 0)
                        opens.add_metric(labels, remote.circuit_opens)
                        retries.add_metric(labels, remote.retries)
                        remote_ready.add_metric(labels, 1 if remote.ready else 0)
                if model.route is not None:
                    for number, percent in sorted(model.route.weights.items()):
                        weight.add_metric([model.name, str(number)], percent)
            for (name, reason), count in sorted(manager.load_failures.items()):
                failures.add_metric([name, reason], count)
            for (name, version), count in sorted(manager.warmup_failures.items()):
                warmups.add_metric([name, version], count)
        yield from (batching.queue, batching.compute, batching.batch, batching.depth, state, weight, failures, warmups)
        yield from (circuit, opens, retries, remote_ready)

    def _shadow_families(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        agreement = GaugeMetricFamily(
            "tensorgate_shadow_agreement_ratio", "Fraction of compared rows where the shadow agrees with the primary",
            labels=labels,
        )  # fmt: skip
        dropped = CounterMetricFamily(
            "tensorgate_shadow_dropped_total", "Shadow copies dropped because too many were in flight", labels=labels
        )
        outcomes = CounterMetricFamily(
            "tensorgate_shadow_requests_total", "Shadow copies by outcome", labels=[*labels, "outcome"]
        )
        held = GaugeMetricFamily(
            "tensorgate_shadow_inflight_bytes", "Bytes of inputs and answers held by shadow copies in flight"
        )
        held.add_metric([], self._shadows.inflight_bytes() if self._shadows is not None else 0)
        if self._shadows is not None:
            for (model, version), stats in sorted(self._shadows.stats.items()):
                view = stats.to_json()
                key = [model, str(version)]
                if view["agreement"] is not None:
                    agreement.add_metric(key, view["agreement"])
                dropped.add_metric(key, stats.dropped)
                for outcome in ("completed", "failed", "timed_out", "dropped"):
                    outcomes.add_metric([*key, outcome], view[outcome])
        yield from (agreement, dropped, outcomes, held)

    def _predlog_families(self) -> Iterator[Metric]:
        records = CounterMetricFamily(
            "tensorgate_predlog_records_total", "Prediction-log records written", labels=["model"]
        )
        dropped = CounterMetricFamily(
            "tensorgate_predlog_dropped_total", "Prediction-log records dropped", labels=["model", "reason"]
        )
        depth = GaugeMetricFamily("tensorgate_predlog_queue_depth", "Prediction-log records waiting to be written")
        queued_bytes = GaugeMetricFamily(
            "tensorgate_predlog_queue_bytes", "Bytes of the prediction-log records waiting to be written"
        )
        timeouts = CounterMetricFamily(
            "tensorgate_predlog_block_timeouts_total",
            "Requests answered 503 because the prediction log (policy block) had no room in time",
        )
        log = self._predlog
        if log is not None:
            for model, count in sorted(log.records().items()):
                records.add_metric([model], count)
            for (model, reason), count in sorted(log.dropped().items()):
                dropped.add_metric([model, reason], count)
        depth.add_metric([], log.queue_depth() if log is not None else 0)
        queued_bytes.add_metric([], log.queue_bytes() if log is not None else 0)
        timeouts.add_metric([], log.reserve_timeouts() if log is not None else 0)
        yield from (records, dropped, depth, queued_bytes, timeouts)
