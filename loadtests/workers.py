"""Scaling over HTTP workers: ``tensorgate serve --workers N`` for several N, side by side in one run.

One server per N runs at once (N = 1 is today's single process; N >= 2 a supervisor, the CPU
engine, one per GPU, and N workers), all pinned to ``--server-cpus`` (a taskset list), wrk to
``--client-cpus`` with ``--wrk-threads`` threads; rounds alternate between the servers and
medians are reported, each N's throughput as a ratio of N = 1's. Models:

- ``mlp``: the batched MLP (loadtests/mlp.py, ``max_batch_size = 64``, "auto" delay), one row per
  request as binary tensors; its mean batch (rows per runtime call, from /metrics) is printed;
  ``--device cuda:0`` runs it on the GPU (issue 15's target: 8 workers >= 6x one process, mean
  GPU batch >= 32, at concurrency 256 on a 16-core machine);
- ``scorer``: the example fraud scorer (examples/models), one row of JSON.
- ``mlp-worker``: the same MLP with ``placement = "worker"`` (a copy and a batcher in each worker,
  no engine hop): what the engine buys on the CPU, measured in the same rounds.

    python loadtests/workers.py --workers 1 2 4 8 --concurrency 256 --server-cpus 0-11 \\
        --client-cpus 12-15 --wrk-threads 4 --device cuda:0
    python loadtests/workers.py --workers 1 2 --concurrency 64 --server-cpus 0-1 --client-cpus 0-1  # 2 cores

Needs ``wrk``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import onnx
from common import (
    ROOT,
    Sample,
    binary_body,
    free_port,
    median,
    require_wrk,
    run_wrk,
    scorer_body,
    stop_group,
    wait_ready,
)
from mlp import LAYERS, mlp


def _config(device: str, placement: str = "engine") -> str:
    threads = "intra_op_threads = 1\n" if device == "cpu" else ""
    head = f'max_batch_size = 64\nplacement = "{placement}"\n'
    return head + f'[batching]\nmax_queue_delay_ms = "auto"\n[onnx]\ndevice = "{device}"\n{threads}'


def batch_totals(port: int, model: str) -> tuple[float, float]:
    """(rows, runtime calls) of ``model`` so far, from the host's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    rows = calls = 0.0
    for kind, value in re.findall(
        rf'^tensorgate_batch_size_(sum|count)\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', text, re.M
    ):
        if kind == "sum":
            rows += float(value)
        else:
            calls += float(value)
    return rows, calls


def main() -> None:
    """Start one server per N, measure in alternating rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[256])
    parser.add_argument("--duration", type=int, default=5, help="seconds a wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server-cpus", default="0-11", help="taskset list for every server")
    parser.add_argument("--client-cpus", default="12-15", help="taskset list for wrk")
    parser.add_argument("--wrk-threads", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="the MLP's device: cpu or cuda:N")
    parser.add_argument("--models", nargs="+", default=["mlp", "scorer"], choices=["mlp", "mlp-worker", "scorer"])
    args = parser.parse_args()
    require_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-workers-"))
    repo = workdir / "models"
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "scorer")
    (repo / "mlp" / "1").mkdir(parents=True)
    onnx.save(mlp(), repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.toml").write_text(_config(args.device))
    # The same MLP kept in each worker (placement = "worker"): what the engine's hop and its
    # batches across workers buy, against a copy and a batcher per worker (CPU only).
    shutil.copytree(repo / "mlp" / "1", repo / "mlp-worker" / "1")
    (repo / "mlp-worker" / "config.toml").write_text(_config(args.device, "worker"))
    row = np.random.default_rng(1).random((1, LAYERS[0]), dtype=np.float32)
    bodies = {
        "mlp": (workdir / "mlp.bin", binary_body(workdir / "mlp.bin", "x", row)),
        "mlp-worker": (workdir / "mlp.bin", binary_body(workdir / "mlp.bin", "x", row)),
        "scorer": (scorer_body(workdir), None),
    }
    servers, ports = {}, {}
    for n in args.workers:
        port = free_port()
        scratch = workdir / f"w{n}"
        command = ["taskset", "-c", args.server_cpus, sys.executable, "-m", "gateway", "serve"]
        command += ["--repository", str(repo), "--port", str(port), "--grpc-port", "0", "--log-level", "warning"]
        command += ["--no-predlog", "--workers", str(n)]
        command += ["--state-dir", str(scratch / "state"), "--log-dir", str(scratch / "log")]
        servers[n] = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)  # fmt: skip
        ports[n] = port
    samples: dict[tuple[str, int, int], list[Sample]] = {}
    batches: dict[tuple[str, int, int], list[float]] = {}
    try:
        for n, port in ports.items():
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", timeout_s=300, process=servers[n])
        for model in args.models:  # warm every path once
            body, header = bodies[model]
            for port in ports.values():
                url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                run_wrk(url, 8, 1, args.client_cpus, body, header_length=header)
        for connections in args.concurrency:
            for _ in range(args.rounds):
                for model in args.models:
                    body, header = bodies[model]
                    for n, port in ports.items():
                        url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                        before = batch_totals(port, model)
                        sample = run_wrk(url, connections, args.duration, args.client_cpus, body,
                                         header_length=header, threads=args.wrk_threads)  # fmt: skip
                        samples.setdefault((model, n, connections), []).append(sample)
                        rows, calls = (a - b for a, b in zip(batch_totals(port, model), before, strict=True))
                        if model.startswith("mlp") and calls:
                            batches.setdefault((model, n, connections), []).append(rows / calls)
    finally:
        for process in servers.values():
            stop_group(process)
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"server CPUs {args.server_cpus}, wrk on {args.client_cpus} ({args.wrk_threads} threads), MLP on {args.device}"
    )
    print(f"medians of {args.rounds} rounds of {args.duration} s\n")
    print("| model | workers | concurrency | req/s | vs 1 worker | p50 ms | p99 ms | mean batch | non-200 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        for connections in args.concurrency:
            base = median(samples[(model, args.workers[0], connections)], "rps")
            for n in args.workers:
                runs = samples[(model, n, connections)]
                rps = median(runs, "rps")
                mean_batch = batches.get((model, n, connections))
                batch = f"{sorted(mean_batch)[len(mean_batch) // 2]:.1f}" if mean_batch else "-"
                print(
                    f"| {model} | {n} | {connections} | {rps:,.0f} | {rps / base:.2f} | {median(runs, 'p50_ms'):.2f} | "
                    f"{median(runs, 'p99_ms'):.2f} | {batch} | {sum(s.non2xx + s.socket_errors for s in runs)} |"
                )


if __name__ == "__main__":
    main()
