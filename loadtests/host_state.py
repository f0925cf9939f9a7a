"""Admin changes on a multi-worker host: how long read-your-writes makes a swap take, and that it holds.

Starts ``tensorgate serve --workers N`` (no state_store: the supervisor's host store) on a
repository of one model with two versions that answer differently, then ``--changes`` swaps
alternating between them. Each swap's time is from sending it until its 200 (which comes once
every worker applied it); after each, ``--requests`` inferences on fresh connections (spread over
the workers by the kernel) must all be served by the new version. Prints the median, p99 and max
swap time and the count of stale answers (must be 0; exit 1 otherwise).

    python loadtests/host_state.py --workers 2 --changes 50
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, free_port, wait_ready

sys.path.insert(0, str(ROOT))

from tests.onnx_models import add_sub, write_model

TOKEN = "loadtest-admin-token-0123456789abcdef"
BODY = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16},
        ]
    }
).encode()


def call(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
    """One request on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        connection.request(method, path, body, headers)
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read() or b"{}")
    finally:
        connection.close()


def main() -> int:
    """Run the swaps; 1 when any request after a swap's 200 was served by the old version."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tg-host-state-") as scratch:
        root = Path(scratch) / "models"
        for version in (1, 2):
            write_model(root, "m", version, add_sub(100 * version))
        port = free_port()
        env = {**os.environ, "TENSORGATE_ADMIN_TOKEN": TOKEN}
        command = [sys.executable, "-m", "gateway", "serve", "--repository", str(root), "--port", str(port),
                   "--workers", str(args.workers), "--state-dir", f"{scratch}/state", "--log-dir", f"{scratch}/log",
                   "--log-level", os.environ.get("LOG_LEVEL", "warning"), "--grpc-port", "0"]  # fmt: skip
        process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        try:
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=120, process=process)
            time.sleep(2)  # the other workers finish their start (a swap would wait for them: not what is timed)
            times, stale = [], 0
            for i in range(args.changes):
                version = 1 if i % 2 == 0 else 2
                started = time.perf_counter()
                status, doc = call(port, "POST", "/admin/models/m/swap", json.dumps({"version": str(version)}).encode())
                times.append((time.perf_counter() - started) * 1000)
                if status != 200:
                    print(f"swap {i}: {status} {doc}", file=sys.stderr)
                    return 1
                for _ in range(args.requests):
                    _, answer = call(port, "POST", "/v2/models/m/infer", BODY)
                    stale += answer.get("model_version") != str(version)
            times.sort()
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            print(
                f"{args.workers} workers, {args.changes} swaps: median {statistics.median(times):.1f} ms, "
                f"p99 {p99:.1f} ms, max {times[-1]:.1f} ms; {args.changes * args.requests} requests after "
                f"the 200s, {stale} served by the old version"
            )
            return 1 if stale else 0
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


if __name__ == "__main__":
    sys.exit(main())
