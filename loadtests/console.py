"""What an open console costs the gateway: its polling against the inference throughput.

The console (docs/console.md) polls every 3 s: ``GET /admin/models``, ``GET /admin/stats`` and
``GET /admin/models/{m}/history`` per model. Two measurements, the gateway pinned to one core
(``--server-cpu``) and wrk and the pollers to the other (``--client-cpu``):

1. CPU per poll: ``--polls`` poll cycles back to back against the idle gateway, and the
   gateway's CPU time they took. One open page then uses ``cpu_per_poll / 3 s`` of the core
   that serves inference: the share of a saturated gateway's throughput it takes away.
2. Under load: wrk at ``--concurrency`` against the example model, alternating rounds without
   and with ``--consoles`` pages polling (each its own keep-alive connection), medians compared.
   This machine's noise is a few percent, so this only shows that nothing is far off; the CPU
   figure is the one to read.

    python loadtests/console.py --duration 10 --rounds 3 --consoles 1 10

Needs ``wrk`` (Debian: ``apt-get install wrk``). Prints Markdown tables.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, Sample, cpu_seconds, free_port, require_wrk, run_wrk, scorer_body, wait_ready, wrk_parser

MODELS = ROOT / "examples" / "models"
POLL_S = 3.0  # the page's interval (POLL_MS in gateway/console/static/console.js)


class Page:
    """One open console: the page's poll cycle over one keep-alive connection."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.models: list[str] = []
        self.bytes = 0

    def get(self, path: str) -> bytes:
        self.connection.request("GET", path, headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
        self.bytes += len(body)
        return body

    def poll(self) -> None:
        models = json.loads(self.get("/admin/models"))["models"]
        self.get("/admin/stats")
        for model in models:
            self.get(f"/admin/models/{model['name']}/history")

    def close(self) -> None:
        self.connection.close()


def polling(pages: list[Page], stop: threading.Event) -> threading.Thread:
    """A thread that runs every page's poll cycle every POLL_S, spread over the interval."""

    def run() -> None:
        offsets = [POLL_S * i / len(pages) for i in range(len(pages))]
        start = time.monotonic()
        due = [start + o for o in offsets]
        while not stop.is_set():
            index = min(range(len(pages)), key=due.__getitem__)
            if stop.wait(max(0.0, due[index] - time.monotonic())):
                break
            pages[index].poll()
            due[index] += POLL_S

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = wrk_parser(__doc__, [64])
    parser.add_argument("--consoles", type=int, nargs="+", default=[1, 10], help="open pages polling at once")
    parser.add_argument("--polls", type=int, default=300, help="poll cycles for the CPU-per-poll figure")
    args = parser.parse_args()
    require_wrk()
    os.sched_setaffinity(0, {args.client_cpu})  # the pollers run beside wrk, not on the server's core
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-console-"))
    body_file = scorer_body(workdir)
    port = free_port()
    token = secrets.token_hex(16)
    command = [
        "taskset", "-c", str(args.server_cpu), sys.executable, "-m", "gateway", "serve",
        "--repository", str(MODELS), "--port", str(port), "--log-level", "warning",
        "--state-dir", str(workdir / "state"), "--log-dir", str(workdir / "log"), "--no-predlog",
    ]  # fmt: skip
    server = subprocess.Popen(command, env=dict(os.environ, TENSORGATE_ADMIN_TOKEN=token))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/v2/health/ready", process=server)
        run_wrk(url + "/v2/models/fraud/infer", 8, 2, args.client_cpu, body_file)  # warm up, and figures to show

        page = Page(port, token)
        for _ in range(5):
            page.poll()
        page.bytes = 0
        cpu = cpu_seconds(server.pid)
        began = time.perf_counter()
        for _ in range(args.polls):
            page.poll()
        wall = time.perf_counter() - began
        cpu_per_poll = (cpu_seconds(server.pid) - cpu) / args.polls
        bytes_per_poll = page.bytes / args.polls
        page.close()

        samples: dict[int, dict[str, list[Sample]]] = {c: {"off": [], "on": []} for c in args.consoles}
        for consoles in args.consoles:
            for _ in range(args.rounds):
                for mode in ("off", "on"):
                    pages = [Page(port, token) for _ in range(consoles)] if mode == "on" else []
                    stop = threading.Event()
                    thread = polling(pages, stop) if pages else None
                    sample = run_wrk(
                        url + "/v2/models/fraud/infer", args.concurrency[0], args.duration, args.client_cpu, body_file
                    )
                    stop.set()
                    if thread is not None:
                        thread.join(timeout=30)
                    for p in pages:
                        p.close()
                    samples[consoles][mode].append(sample)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    print("CPU per poll cycle (GET /admin/models + /admin/stats + one history per model), idle gateway:\n")
    print("| polls | gateway CPU per poll | wall per poll | bytes per poll | share of one core at one poll per 3 s |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.polls} | {cpu_per_poll * 1e3:.2f} ms | {wall / args.polls * 1e3:.2f} ms | "
        f"{bytes_per_poll:,.0f} | {cpu_per_poll / POLL_S:.4%} |"
    )
    print(f"\nwrk c{args.concurrency[0]}, {args.duration} s runs, median of {args.rounds} alternating rounds:\n")
    print(
        "| open consoles | req/s without | req/s with | change | expected from CPU per poll "
        "| p99 ms without | p99 ms with |"
    )
    print("|---|---|---|---|---|---|---|")
    for consoles, by_mode in samples.items():
        off, on = by_mode["off"], by_mode["on"]
        rps_off, rps_on = statistics.median(s.rps for s in off), statistics.median(s.rps for s in on)
        print(
            f"| {consoles} | {rps_off:,.0f} | {rps_on:,.0f} | {rps_on / rps_off - 1:+.2%} | "
            f"{-consoles * cpu_per_poll / POLL_S:+.2%} | {statistics.median(s.p99_ms for s in off):.3f} | "
            f"{statistics.median(s.p99_ms for s in on):.3f} |"
        )


if __name__ == "__main__":
    main()
