"""An engine process's metrics: the batch-level families of the versions it runs, and its process's.

An engine (gateway/engine/) owns the batchers and sessions of its device; the workers count
the requests. Its families carry the same names and labels as a worker's, so the host's merge
(gateway/host/merge.py) sums them: queue time, compute time and batch sizes come from the
engine's ``VersionStats``; ``tensorgate_queue_depth`` from its batchers when it reports them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gateway.host.control import ControlServer, snapshot_dir
from gateway.host.roles import HostRole, control_endpoint
from gateway.stats import VersionStats
from gateway.telemetry.collector import BatchFamilies

#: ``(model, version label)`` -> what the engine holds for it.
Versions = Callable[[], Mapping[tuple[str, str], VersionStats]]
Depths = Callable[[], Mapping[tuple[str, str], int]]


class EngineCollector(Collector):
    """``tensorgate_queue_duration_seconds``, ``_compute_``, ``_batch_size`` (and ``_queue_depth``) of an engine."""

    def __init__(self, versions: Versions, queued: Depths | None = None) -> None:
        self._versions = versions
        self._queued = queued

    def collect(self) -> Iterator[Metric]:
        """Build the families from the engine's statistics."""
        families = BatchFamilies()
        for (model, version), stats in sorted(self._versions().items(), key=lambda item: str(item[0])):
            families.add([model, str(version)], stats)
        yield from (families.queue, families.compute, families.batch)
        if self._queued is not None:
            for (model, version), count in sorted(self._queued().items(), key=lambda item: str(item[0])):
                families.depth.add_metric([model, str(version)], count)
            yield families.depth


def engine_control(role: HostRole, versions: Versions, queued: Depths | None = None) -> ControlServer:
    """The engine's control socket (``await start()`` once serving, ``await close()`` at exit).

    ``versions`` names the engine's ``VersionStats`` (batch-level counts: executions, queue,
    compute); ``queued``, when given, the requests waiting in each version's batch queue.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(versions, queued))
    ProcessCollector(registry=registry)

    def stats() -> Iterator[tuple[str, str, VersionStats]]:
        for (model, version), each in versions().items():
            yield model, str(version), each

    endpoint = control_endpoint(role.run_dir, role.process)
    return ControlServer(role.process, endpoint, registry.collect, stats, snapshots=snapshot_dir(role.run_dir))
