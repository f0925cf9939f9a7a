"""What a host-wide /metrics costs: the control-call fan-out against prometheus-client's multiprocess mode.

For P processes (2 and 8 by default), each holding the same request series (``--models`` models,
2 versions, 2 roles, 2 status codes: counters and 16-bucket histograms, as the gateway exports):

- fan-out (what tensorgate does, gateway/host/merge.py): P-1 child processes answer control
  calls; the scraped process asks them all, merges and encodes. Time per scrape, p50 and p99.
- multiprocess mode: P child processes write the same series through prometheus-client's
  ``Counter``/``Histogram`` into ``PROMETHEUS_MULTIPROC_DIR``; the scrape reads every file
  (``MultiProcessCollector``) and encodes. Time per scrape.
- the snapshot each process leaves every second (a killed process's counts stay in the sums);
- the request path: one request's counting, tensorgate's accumulators (``RequestMetrics.record``)
  against a multiprocess-mode counter and histogram (``labels().inc()`` + ``labels().observe()``).

Bounded: every child is killed at the end (and after ``--timeout-s`` at most).

    .venv/bin/python loadtests/metrics_scrape.py --processes 2 8 --scrapes 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, loadtests/ comes first on the path, and its routing.py hides the routing package.
sys.path[:] = [str(ROOT), *(entry for entry in sys.path if Path(entry).resolve() != ROOT / "loadtests")]

_SERIES = """
def keys(models):
    for m in range(models):
        for v in ("1", "2"):
            for role in ("primary", "canary"):
                for code in (200, 503):
                    yield f"model-{m}", v, role, code
"""

_BUILD = (
    _SERIES
    + """
from prometheus_client import CollectorRegistry, ProcessCollector
from gateway.core import CoreSlot
from gateway.exchange import Exchange
from gateway.lifecycle import Lifecycle
from gateway.telemetry.collector import GatewayCollector
from gateway.telemetry.requests import RequestMetrics

def build(models):
    requests = RequestMetrics()
    for model, version, role, code in keys(models):
        for i in range(10):
            e = Exchange("x"); e.model, e.version, e.role, e.status = model, version, role, code
            requests.record(e, 0.0001 * (i + 1))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(requests, Lifecycle(64), CoreSlot()))
    ProcessCollector(registry=registry)
    return registry
"""
)

_PEER = (
    _BUILD
    + """
import asyncio, sys
from pathlib import Path
from gateway.host.control import ControlServer
from gateway.host.roles import control_endpoint

async def main(name, run_dir, models):
    registry = build(models)
    server = ControlServer(name, control_endpoint(Path(run_dir), name), registry.collect, lambda: iter(()))
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""
)

_MULTIPROC_WRITER = (
    _SERIES
    + """
import sys
from prometheus_client import Counter, Histogram
from gateway.telemetry.histogram import LATENCY_BUCKETS
requests = Counter("tensorgate_requests", "x", ["model", "version", "role", "code"])
duration = Histogram("tensorgate_request_duration_seconds", "x", ["model", "version", "role"], buckets=LATENCY_BUCKETS)
for model, version, role, code in keys(int(sys.argv[1])):
    for i in range(10):
        requests.labels(model, version, role, str(code)).inc()
        duration.labels(model, version, role).observe(0.0001 * (i + 1))
print("ready", flush=True)
"""
)

_MULTIPROC_SCRAPE = """
import sys, time, statistics
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
registry = CollectorRegistry()
MultiProcessCollector(registry)
times = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter(); body = generate_latest(registry); times.append(time.perf_counter() - t)
print(statistics.median(times), sorted(times)[int(len(times) * 0.99) - 1 if len(times) > 1 else 0], len(body))
"""

_HOT_PATH = """
import time, os
n = 200_000
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import Counter, Histogram
    from gateway.telemetry.histogram import LATENCY_BUCKETS
    c = Counter("tensorgate_requests", "x", ["model", "version", "role", "code"])
    h = Histogram("tensorgate_request_duration_seconds", "x", ["model", "version", "role"], buckets=LATENCY_BUCKETS)
    t = time.perf_counter()
    for i in range(n):
        c.labels("m", "1", "primary", "200").inc()
        h.labels("m", "1", "primary").observe(0.001)
else:
    from gateway.exchange import Exchange
    from gateway.telemetry.requests import RequestMetrics
    r = RequestMetrics(); e = Exchange("x"); e.model, e.version, e.role, e.status = "m", "1", "primary", 200
    t = time.perf_counter()
    for i in range(n):
        r.record(e, 0.001)
print((time.perf_counter() - t) / n)
"""


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)


async def fan_out(processes: int, models: int, scrapes: int) -> tuple[float, float, int]:
    """Median and p99 seconds of one host scrape (gather + merge + encode) and the body's size."""
    from prometheus_client.exposition import generate_latest

    from gateway.host.merge import Families, HostView
    from gateway.host.roles import HostRole

    run_dir = Path(tempfile.mkdtemp(prefix="tg-"))
    children = [_python(_PEER, f"worker-{i}", str(run_dir), str(models)) for i in range(1, processes)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        built: dict[str, Any] = {}
        exec(_BUILD, built)  # the scraped worker holds the same series as its peers
        own = built["build"](models)
        view = HostView(HostRole("worker-0", run_dir, processes), own.collect, lambda: iter(()))
        times = []
        body = b""
        for _ in range(scrapes):
            started = time.perf_counter()
            body = generate_latest(Families(await view.metrics()))
            times.append(time.perf_counter() - started)
        found = body.count(b"tensorgate_requests_total{")
        assert found == models * 8, found  # every series once, summed over the processes
        return statistics.median(times), sorted(times)[max(0, int(len(times) * 0.99) - 1)], len(body)
    finally:
        _kill(children)
        shutil.rmtree(run_dir, ignore_errors=True)


def snapshot_cost(models: int, rounds: int = 50) -> float:
    """Seconds one process spends building the snapshot it leaves every second (gateway/host/control.py)."""
    from gateway.host.control import ControlServer

    built: dict[str, Any] = {}
    exec(_BUILD, built)
    registry = built["build"](models)
    server = ControlServer("worker-0", "ipc:///nonexistent", registry.collect, lambda: iter(()))
    started = time.perf_counter()
    for _ in range(rounds):
        server.snapshot()
    return (time.perf_counter() - started) / rounds


def multiprocess(processes: int, models: int, scrapes: int) -> tuple[float, float, int]:
    """The same with prometheus-client's multiprocess mode: P writers' files, one scrape reading them."""
    directory = tempfile.mkdtemp(prefix="tg-mp-")
    env = {"PROMETHEUS_MULTIPROC_DIR": directory}
    try:
        writers = [_python(_MULTIPROC_WRITER, str(models), env=env) for _ in range(processes)]
        try:
            for writer in writers:
                assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        finally:
            _kill(writers)
        scraper = _python(_MULTIPROC_SCRAPE, str(scrapes), env=env)
        out, _ = scraper.communicate(timeout=120)
        p50, p99, size = out.split()
        return float(p50), float(p99), int(size)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def hot_path() -> tuple[float, float]:
    """Seconds to count one request: tensorgate's accumulators, and multiprocess mode's counter + histogram."""
    ours = _python(_HOT_PATH)
    out, _ = ours.communicate(timeout=120)
    directory = tempfile.mkdtemp(prefix="tg-mp-")
    try:
        theirs = _python(_HOT_PATH, env={"PROMETHEUS_MULTIPROC_DIR": directory})
        out2, _ = theirs.communicate(timeout=120)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return float(out), float(out2)


def main() -> None:
    """Run the comparison and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--models", type=int, default=10, help="models (8 request series each, in every process)")
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    signal.alarm(int(args.timeout_s))  # bounded, whatever happens
    ours, theirs = hot_path()
    print(f"request path: accumulators {ours * 1e6:.2f} us/request, multiprocess mode {theirs * 1e6:.2f} us/request")
    cost = snapshot_cost(args.models)
    print(f"snapshot left every second: {cost * 1e3:.2f} ms per process ({cost * 100:.2f}% of a core)")
    for processes in args.processes:
        p50, p99, size = asyncio.run(fan_out(processes, args.models, args.scrapes))
        print(f"P={processes} fan-out:      scrape p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms  ({size} bytes)")
        p50, p99, size = multiprocess(processes, args.models, args.scrapes)
        print(f"P={processes} multiprocess: scrape p50 {p50 * 1e3:.2f} ms  p99 {p99 * 1e3:.2f} ms  ({size} bytes)")


if __name__ == "__main__":
    main()
