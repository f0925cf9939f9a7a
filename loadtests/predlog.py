"""Prediction-log benchmark: the gateway with the log on against the same gateway with it off.

Both serve the example scorer, pinned to the same core (``--server-cpu``); wrk runs on the
other; rounds alternate between the two at each concurrency and medians are compared. After
the runs, the logging server's /metrics must show no dropped record and exactly as many
records as the requests it answered (wrk's count).

    python loadtests/predlog.py --duration 5 --rounds 3

Then ``--drift-rows N`` writes a log of N rows (the example's 16 features) and times
``tensorgate drift`` over it against a reference.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import (
    ROOT,
    Sample,
    free_port,
    median,
    print_ratio_table,
    require_wrk,
    run_wrk,
    save_samples,
    scorer_body,
    wait_ready,
    wrk_parser,
)  # fmt: skip

MODELS = ROOT / "examples" / "models"


def serve(port: int, workdir: Path, cpu: int, logging: bool) -> subprocess.Popen[bytes]:
    flag = "--predlog" if logging else "--no-predlog"
    return subprocess.Popen(
        ["taskset", "-c", str(cpu), sys.executable, "-m", "gateway", "serve", "--repository", str(MODELS),
         "--port", str(port), "--log-level", "warning", "--state-dir", str(workdir / "state"),
         "--log-dir", str(workdir / "log"), flag],
        cwd=ROOT,
    )  # fmt: skip


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def total(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def drift_benchmark(rows: int, workdir: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    log_dir = workdir / "drift-log" / "fraud" / "2"
    log_dir.mkdir(parents=True)
    with (log_dir / "20261127T000000Z-1-0001.jsonl").open("wb") as sink:
        chunk = 100_000
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            features = rng.normal(size=(n, 16)).round(4)
            scores = rng.random(n).round(4)
            lines = [
                json.dumps({
                    "ts": f"2026-11-27T10:{(start + i) // 60000 % 60:02d}:{(start + i) // 1000 % 60:02d}.000000Z",
                    "request_id": f"r{start + i}", "model": "fraud", "version": "2", "role": "primary", "route_seq": 1,
                    "inputs": {"features": {"datatype": "FP32", "shape": [1, 16], "data": features[i].tolist()}},
                    "outputs": {"probability": {"datatype": "FP32", "shape": [1, 1], "data": [scores[i]]}},
                    "status": 200, "latency_ms": 0.2,
                })
                for i in range(n)
            ]  # fmt: skip
            sink.write(("\n".join(lines) + "\n").encode())
    reference = workdir / "reference.npy"
    np.save(reference, rng.normal(size=(50_000, 16)).astype(np.float32))
    command = [sys.executable, "-m", "gateway", "drift", "--log-dir", str(workdir / "drift-log"), "--model", "fraud",
               "--reference", str(reference), "--json", str(workdir / "drift.json")]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    print(f"\n`tensorgate drift` over {rows:,} logged rows: {seconds:.1f} s (exit {done.returncode})")


def main() -> None:
    parser = wrk_parser(__doc__, [64])
    parser.add_argument("--drift-rows", type=int, default=0, help="also time `tensorgate drift` over this many rows")
    args = parser.parse_args()
    require_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-predlog-"))
    body_file = scorer_body(workdir)
    ports = {"log off": free_port(), "log on": free_port()}
    processes = {
        name: serve(port, workdir / name.replace(" ", "-"), args.server_cpu, name == "log on")
        for name, port in ports.items()
    }
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    served = 0
    try:
        for url in urls.values():
            wait_ready(url + "/v2/health/ready")
        samples: dict[str, dict[int, list[Sample]]] = {name: {c: [] for c in args.concurrency} for name in urls}
        before = total(scrape(urls["log on"]), "tensorgate_requests_total")
        for connections in args.concurrency:
            for _ in range(args.rounds):
                for name, url in urls.items():
                    sample = run_wrk(
                        url + "/v2/models/fraud/infer", connections, args.duration, args.client_cpu, body_file
                    )
                    samples[name][connections].append(sample)
        time.sleep(1.0)  # the writer's last batch
        text = scrape(urls["log on"])
        served = int(total(text, "tensorgate_requests_total") - before)
        logged = int(total(text, "tensorgate_predlog_records_total"))
        dropped = int(total(text, "tensorgate_predlog_dropped_total"))
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=60)
    print_ratio_table(samples, "log off", "configuration")
    print(f"\nlog on: {served:,} requests answered during the runs; {logged:,} records written, {dropped:,} dropped")
    lines = sum(len(p.read_bytes().splitlines()) for p in (workdir / "log-on" / "log").rglob("*.jsonl"))
    print(f"lines in the log files after the drain: {lines:,}")
    for connections in args.concurrency:
        ratio = median(samples["log on"][connections], "rps") / median(samples["log off"][connections], "rps")
        print(f"concurrency {connections}: log on / log off = {ratio:.2f}")
    if args.save:
        save_samples(args.save, samples)
    if args.drift_rows:
        drift_benchmark(args.drift_rows, workdir)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
