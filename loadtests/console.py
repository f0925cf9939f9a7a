"""What an open console costs the gateway: its polling against the inference throughput.

The console (docs/console.md) polls every 3 s: ``GET /admin/models`` and ``GET /admin/stats``,
and ``GET /admin/models/{m}/history`` and ``.../rollouts/current`` per model when that model
changed and every 10th poll (the rollout on every poll while one runs; none runs here).
The example model's history is first given ``--history`` route changes (the store keeps up to
1,000), so that its reads cost what they would in a long-lived deployment. Two measurements,
the gateway pinned to one core (``--server-cpu``) and wrk and the pollers to the other
(``--client-cpu``):

1. CPU per poll: ``--polls`` poll cycles back to back against the idle gateway (every 10th with
   the histories, as the page does), and the gateway's CPU time they took. One open page then
   uses ``cpu_per_poll / 3 s`` of the core that serves inference: the share of a saturated
   gateway's throughput it takes away.
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
HISTORY_EVERY = 10  # polls between full history reads (HISTORY_EVERY in console.js)


class Page:
    """One open console: the page's poll cycle over one keep-alive connection."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.bytes = 0
        self.polls = 0

    def get(self, path: str, method: str = "GET", body: bytes | None = None, ok: tuple[int, ...] = (200,)) -> bytes:
        headers = self.headers if body is None else {**self.headers, "Content-Type": "application/json"}
        self.connection.request(method, path, body, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        if response.status not in ok:
            raise SystemExit(f"{method} {path}: {response.status} {body[:200]!r}")
        self.bytes += len(body)
        return body

    def poll(self) -> None:
        """One tick of the page: the histories too on every HISTORY_EVERY-th (nothing changes here)."""
        models = json.loads(self.get("/admin/models"))["models"]
        self.get("/admin/stats")
        if self.polls % HISTORY_EVERY == 0:
            for model in models:
                self.get(f"/admin/models/{model['name']}/history")
                self.get(f"/admin/models/{model['name']}/rollouts/current", ok=(200, 404))  # 404: never had one
        self.polls += 1

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
    parser.add_argument("--history", type=int, default=200, help="route changes made first (history entries)")
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
        page.get("/admin/models/fraud/versions/1/load", "POST", b"{}")  # both versions in the route changes
        routes = [{"weights": {"1": 10, "2": 90}}, {"weights": {"2": 100}}]
        for change in range(args.history):
            page.get("/admin/models/fraud/route", "PUT", json.dumps({**routes[change % 2], "reason": "bench"}).encode())
        for _ in range(HISTORY_EVERY):
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

    print(f"CPU per poll (/admin/models + /admin/stats; every {HISTORY_EVERY}th also the history), idle gateway:\n")
    print(
        "| polls | history entries | gateway CPU per poll | wall per poll | bytes per poll | share of a core per page |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.polls} | {args.history} | {cpu_per_poll * 1e3:.2f} ms | {wall / args.polls * 1e3:.2f} ms | "
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
