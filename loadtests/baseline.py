"""Baseline benchmark: the gateway against the bare reference endpoint, side by side.

Both servers run the same ONNX model, pinned to one core (``--server-cpu``); wrk runs on the
other (``--client-cpu``), so the load generator never starves the server. Rounds alternate
between the two servers at each concurrency and the medians are compared, because this
machine is shared and noisy: only ratios from one run mean anything.

    python loadtests/baseline.py --duration 5 --rounds 3

Needs ``wrk`` (Debian: ``apt-get install wrk``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "examples" / "models"
LUA = ROOT / "loadtests" / "infer.lua"
FEATURES = [round(0.1 * i, 3) for i in range(1, 17)]


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {url} did not become ready")


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    number, unit = match.groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, connections: int, duration_s: int, cpu: int, body_file: str) -> Sample:
    command = [
        "taskset",
        "-c",
        str(cpu),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]
    env = dict(os.environ, BODY_FILE=body_file)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=duration_s + 30, check=True)
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = int(re.search(r"non2xx=(\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return Sample(rps, p50, p99, non2xx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-bench-"))
    body_file = workdir / "body.json"
    body_file.write_text(
        json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": FEATURES}]})
    )
    model = MODELS / "fraud" / "2" / "model.onnx"
    bare_port, gateway_port = free_port(), free_port()
    pin = ["taskset", "-c", str(args.server_cpu)]
    servers = {
        "bare": (
            subprocess.Popen(
                [*pin, sys.executable, str(ROOT / "loadtests" / "bare_endpoint.py"), str(model), str(bare_port)]
            ),
            f"http://127.0.0.1:{bare_port}",
        ),
        "gateway": (
            subprocess.Popen(
                [
                    *pin,
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--repository",
                    str(MODELS),
                    "--port",
                    str(gateway_port),
                    "--log-level",
                    "warning",
                    "--state-dir",
                    str(workdir / "state"),
                    "--log-dir",
                    str(workdir / "log"),
                ]
            ),
            f"http://127.0.0.1:{gateway_port}",
        ),
    }
    try:
        wait_ready(servers["gateway"][1] + "/v2/health/ready")
        for _, url in servers.values():
            deadline = time.monotonic() + 30
            while True:  # the bare app has no health route: wait until it answers an inference
                try:
                    run_wrk(url + "/v2/models/fraud/infer", 1, 1, args.client_cpu, str(body_file))
                    break
                except (subprocess.CalledProcessError, AttributeError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        samples: dict[str, dict[int, list[Sample]]] = {name: {c: [] for c in args.concurrency} for name in servers}
        for connections in args.concurrency:
            for _ in range(args.rounds):
                for name, (_, url) in servers.items():
                    sample = run_wrk(
                        url + "/v2/models/fraud/infer", connections, args.duration, args.client_cpu, str(body_file)
                    )
                    samples[name][connections].append(sample)
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in servers.values():
            process.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        "| concurrency | bare req/s | gateway req/s | ratio | bare p50 ms | gateway p50 ms | p50 ratio "
        "| bare p99 ms | gateway p99 ms | non-200 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        b, g = samples["bare"][c], samples["gateway"][c]
        med = lambda xs, f: statistics.median(f(x) for x in xs)  # noqa: E731
        b_rps, g_rps = med(b, lambda s: s.rps), med(g, lambda s: s.rps)
        b_p50, g_p50 = med(b, lambda s: s.p50_ms), med(g, lambda s: s.p50_ms)
        b_p99, g_p99 = med(b, lambda s: s.p99_ms), med(g, lambda s: s.p99_ms)
        errors = sum(s.non2xx for s in b + g)
        print(
            f"| {c} | {b_rps:,.0f} | {g_rps:,.0f} | {g_rps / b_rps:.2f} | {b_p50:.3f} | {g_p50:.3f} | "
            f"{g_p50 / b_p50:.2f} | {b_p99:.3f} | {g_p99:.3f} | {errors} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({n: {c: [s.__dict__ for s in v] for c, v in d.items()} for n, d in samples.items()}, indent=1)
        )


if __name__ == "__main__":
    main()
