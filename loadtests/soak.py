"""Soak: N minutes at 70% of the measured peak, with a canary shift every 30 s.

The gateway (example scorer, versions 1 and 2 loaded) is pinned to one core, wrk to the other.
First a 5 s run at concurrency 64 measures the peak; then paced wrk runs (each connection waits
``DELAY_MS`` between requests) hold about 70% of it, one minute at a time, while a thread moves
the canary through 90/10, 50/50, 10/90 and back to 100/0 every 30 s through the admin API.
After each minute the server's resident memory is read from /proc.

    python loadtests/soak.py --minutes 10 --chart docs/soak.svg

Prints a Markdown table (per minute: req/s, p50, p99, errors, RSS) and a verdict: errors must be
0 and memory flat (the last minute's RSS within 10% of the first's).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from common import ROOT, free_port, require_wrk, run_wrk, scorer_body, wait_ready, wrk_parser

DELAY_MS = 10
ROUTES = [{"1": 90, "2": 10}, {"1": 50, "2": 50}, {"1": 10, "2": 90}, {"2": 100}]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def admin_put(base: str, token: str, model: str, route: dict[str, int]) -> int:
    body = json.dumps({"weights": route, "sticky_header": "x-user-id", "reason": "soak"}).encode()
    request = urllib.request.Request(
        f"{base}/admin/models/{model}/route", data=body, method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", "x-actor": "soak"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def chart(rows: list[dict[str, float]], path: Path) -> None:
    """An SVG with two lines over the minutes: p99 (ms, left scale) and RSS (MB, right scale)."""
    width, height, pad = 640, 260, 40
    minutes = len(rows)

    def line(values: list[float], color: str) -> str:
        top = max(values) * 1.2 or 1.0
        points = " ".join(
            f"{pad + i * (width - 2 * pad) / max(1, minutes - 1):.1f},{height - pad - v / top * (height - 2 * pad):.1f}"
            for i, v in enumerate(values)
        )
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>', top

    p99, p99_top = line([r["p99_ms"] for r in rows], "#e8833a")
    rss, rss_top = line([r["rss_mb"] for r in rows], "#3a7be8")
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="12"><rect width="100%" height="100%" fill="white"/>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
        f"{p99}{rss}"
        f'<text x="{pad}" y="20" fill="#e8833a">p99 ms (top {p99_top:.2f})</text>'
        f'<text x="{width - pad}" y="20" fill="#3a7be8" text-anchor="end">RSS MB (top {rss_top:.0f})</text>'
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">minute 1 to {minutes}</text></svg>\n'
    )


def main() -> None:
    parser = wrk_parser(__doc__, [64])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--segment-s", type=int, default=60, help="seconds per reported segment")
    parser.add_argument("--load", type=float, default=0.7, help="fraction of the measured peak")
    parser.add_argument("--chart", type=Path, help="write an SVG chart of p99 and RSS here")
    args = parser.parse_args()
    require_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-soak-"))
    body = scorer_body(workdir)
    repo = workdir / "models" / "fraud"
    for version in ("1", "2"):
        (repo / version).mkdir(parents=True)
        (repo / version / "model.onnx").write_bytes(
            (ROOT / "examples/models/fraud" / version / "model.onnx").read_bytes()
        )
    (repo / "config.toml").write_text('version_policy = "all"\n')
    port, token = free_port(), "soak-admin-token-0123456789"
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        ["taskset", "-c", str(args.server_cpu), sys.executable, "-m", "gateway", "serve",
         "--repository", str(workdir / "models"), "--port", str(port), "--log-level", "warning",
         "--state-dir", str(workdir / "state"), "--log-dir", str(workdir / "log")],
        cwd=ROOT, env={**os.environ, "TENSORGATE_ADMIN_TOKEN": token},
    )  # fmt: skip
    url = f"{base}/v2/models/fraud/infer"
    stop = threading.Event()
    admin_failures: list[int] = []
    try:
        wait_ready(base + "/v2/health/ready")
        peak = run_wrk(url, 64, 5, args.client_cpu, body)
        target = peak.rps * args.load
        connections = max(1, round(target * (DELAY_MS + peak.p50_ms / 64) / 1000))
        probe = run_wrk(url, connections, 5, args.client_cpu, body, delay_ms=DELAY_MS)
        connections = max(1, round(connections * target / max(1.0, probe.rps)))  # one correction
        print(f"peak {peak.rps:,.0f} req/s; target {target:,.0f} req/s with {connections} paced connections")

        def shift() -> None:
            step = 0
            while not stop.wait(30):
                status = admin_put(base, token, "fraud", ROUTES[step % len(ROUTES)])
                if status != 200:
                    admin_failures.append(status)
                step += 1

        shifter = threading.Thread(target=shift, daemon=True)
        shifter.start()
        rows = []
        for minute in range(1, args.minutes + 1):
            sample = run_wrk(url, connections, args.segment_s, args.client_cpu, body, delay_ms=DELAY_MS)
            rows.append({
                "minute": minute, "rps": sample.rps, "p50_ms": sample.p50_ms, "p99_ms": sample.p99_ms,
                "errors": sample.non2xx + sample.socket_errors, "rss_mb": rss_mb(server.pid),
            })  # fmt: skip
            print(
                f"minute {minute}: {sample.rps:,.0f} req/s, p99 {sample.p99_ms:.2f} ms, rss {rows[-1]['rss_mb']:.1f} MB"
            )
    finally:
        stop.set()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    print("\n| minute | req/s | p50 ms | p99 ms | errors | RSS MB |\n|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r['minute']}", f"{r['rps']:,.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['errors']}"]
        print("| " + " | ".join([*cells, f"{r['rss_mb']:.1f}"]) + " |")
    errors = sum(int(r["errors"]) for r in rows) + len(admin_failures)
    growth = rows[-1]["rss_mb"] / rows[0]["rss_mb"] - 1
    print(f"\nerrors: {errors} (admin calls failed: {len(admin_failures)}); RSS {rows[0]['rss_mb']:.1f} -> "
          f"{rows[-1]['rss_mb']:.1f} MB ({growth:+.1%}); server exit {server.returncode}")  # fmt: skip
    print("verdict:", "PASS" if errors == 0 and growth < 0.10 and server.returncode == 0 else "FAIL")
    if args.chart:
        chart(rows, args.chart)


if __name__ == "__main__":
    main()
