"""Why the batched MLP costs twice the scorer over unary gRPC on one core: the batches it gets.

One tensorgate per ``--delays`` value (the MLP's ``max_queue_delay_ms``: ``auto`` or a fixed
number of ms), all pinned to ``--server-cpu``; the driver of loadtests/grpc.py (its own process
on ``--client-cpu``, calls spread over 4 HTTP/2 connections) sends the MLP, one row a request,
as unary ``ModelInfer`` calls and as ``ModelStreamInfer`` streams (``--modes``; ``rest``: wrk
with the binary tensor extension), at each ``--concurrency``, in alternating rounds. For
each: req/s, the server's CPU per request, and the mean batch the MLP ran (from
``tensorgate_batch_size`` in ``/metrics``, before and after each run).

    python loadtests/grpc_batching.py --delays auto 0.5 2 --rounds 2 --duration 4

``--baseline DIR`` also runs "auto" from another checkout (``auto@DIR``: ``python -m gateway``
from there imports that checkout's code), for a change of the "auto" policy side by side.

Bounded: servers x modes x rounds runs of ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from common import free_port, run_wrk, stop_group, wait_ready

# loadtests/grpc.py shares its name with the grpc package: load it by path (it imports the real one).
_spec = importlib.util.spec_from_file_location("grpc_bench", Path(__file__).with_name("grpc.py"))
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def batch_totals(port: int) -> tuple[float, float]:
    """Rows and batches the MLP has run so far (``tensorgate_batch_size`` sum and count)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    rows = batches = 0.0
    for line in text.splitlines():
        if 'model="mlp"' not in line:
            continue
        if line.startswith("tensorgate_batch_size_sum"):
            rows += float(line.split()[-1])
        elif line.startswith("tensorgate_batch_size_count"):
            batches += float(line.split()[-1])
    return rows, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delays", nargs="+", default=["auto", "0.5", "2"])
    parser.add_argument("--modes", nargs="+", default=["unary", "stream"], choices=["unary", "stream", "rest"],
                        help="gRPC unary calls, gRPC streams, REST with binary tensors (wrk)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64])
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--baseline", type=Path, help="also run auto from this checkout")
    args = parser.parse_args()
    labels = list(args.delays) + ([f"auto@{args.baseline.name}"] if args.baseline else [])

    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-grpc-batching-"))
    servers: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for label in labels:
            delay, _, _ = label.partition("@")
            cwd = args.baseline.resolve() if "@" in label else bench.ROOT
            repo = bench.write_repository(workdir / f"d{label}")
            value = '"auto"' if delay == "auto" else delay
            config = repo / "mlp" / "config.toml"
            text = config.read_text().replace('max_queue_delay_ms = "auto"', f"max_queue_delay_ms = {value}")
            config.write_text(text)
            port, grpc_port, scratch = free_port(), free_port(), workdir / f"s{label}"
            process = subprocess.Popen(
                ["taskset", "-c", str(args.server_cpu), sys.executable, "-m", "gateway", "serve", "--repository",
                 str(repo), "--port", str(port), "--grpc-port", str(grpc_port), "--log-level", "warning",
                 "--state-dir", str(scratch / "state"), "--log-dir", str(scratch / "log")],
                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            servers[label] = (process, port, grpc_port)
        body, header_length, request = bench.write_requests(workdir, "mlp", "x", bench.LAYERS[0])
        for process, port, _ in servers.values():
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", 120, process)

        def measure(delay: str, mode: str, concurrency: int, seconds: int) -> dict[str, float]:
            process, port, grpc_port = servers[delay]
            rows0, batches0 = batch_totals(port)
            before = bench.tree_cpu_seconds(process.pid)
            if mode == "rest":
                url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
                sample = run_wrk(url, concurrency, seconds, args.client_cpu, body, header_length=header_length)
                calls = sample.rps * seconds
                doc = {"rps": sample.rps, "p50_ms": sample.p50_ms, "calls": calls, "errors": sample.non2xx}
            else:
                doc = bench.driver_run(f"127.0.0.1:{grpc_port}", mode, request, concurrency, seconds,
                                       args.client_cpu, 4)  # fmt: skip
            doc["server_us"] = (bench.tree_cpu_seconds(process.pid) - before) / max(1.0, doc["calls"]) * 1e6
            rows1, batches1 = batch_totals(port)
            doc["batch"] = (rows1 - rows0) / max(1.0, batches1 - batches0)
            return doc

        for delay in servers:  # warm every path once
            for mode in args.modes:
                measure(delay, mode, 8, 1)
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                for mode in args.modes:
                    for delay in servers:
                        doc = measure(delay, mode, concurrency, args.duration)
                        runs.setdefault((mode, concurrency, delay), []).append(doc)
                        print(f"round {round_ + 1} {mode:6} c{concurrency:<3} {delay:12} {doc['rps']:>7,.0f} req/s "
                              f"{doc['server_us']:5.0f} us/req  mean batch {doc['batch']:.1f}", flush=True)  # fmt: skip
    finally:
        for process, _, _ in servers.values():
            stop_group(process)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nMLP, server on cpu {args.server_cpu}, client on cpu {args.client_cpu}; "
          f"medians of {args.rounds} rounds of {args.duration} s\n")  # fmt: skip
    print("| client | concurrency | max_queue_delay_ms | req/s | vs auto | p50 ms | server CPU us/req | mean batch |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for mode in args.modes:
        for concurrency in args.concurrency:
            first = runs.get((mode, concurrency, "auto"), runs[(mode, concurrency, labels[0])])
            base = statistics.median(d["rps"] for d in first)
            for delay in labels:
                docs = runs[(mode, concurrency, delay)]

                def mid(field: str, docs: list[dict[str, float]] = docs) -> float:
                    return statistics.median(d[field] for d in docs)

                print(f"| {mode} | {concurrency} | {delay} | {mid('rps'):,.0f} | {mid('rps') / base:.2f} "
                      f"| {mid('p50_ms'):.2f} | {mid('server_us'):.0f} | {mid('batch'):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
