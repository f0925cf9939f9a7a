"""How evenly do N worker processes share one port: one inherited socket, or SO_REUSEPORT?

The supervisor (gateway/host/supervisor.py) binds the port and hands it to its workers; this
measures the two ways it could: ``shared``, one listening socket inherited by every worker (one
accept queue; whichever worker is free accepts), and ``reuseport``, one ``SO_REUSEPORT`` socket
per worker (the kernel hashes each new connection to one worker's queue). Each worker is a
minimal uvicorn app (uvloop, httptools, as the gateway runs) that burns ``--work-us`` of CPU per
request, standing in for the gateway's request work, and reports how many requests it answered.
wrk drives it with keep-alive connections, and with ``Connection: close`` (one connection per
request, as a client without pooling sends). For each run: total req/s and each worker's share;
"spread" is the busiest worker's share over the idlest's (1.00: perfectly even).

    python loadtests/accept_balance.py --workers 2 --duration 3 --rounds 3

Bounded: modes x concurrencies x {keep-alive, close} runs of ``--duration`` seconds each.
Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, require_wrk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gateway.host.listeners import bind_listener  # noqa: E402


def worker(fd: int, work_us: float, out: Path) -> None:
    """One worker: serve on the inherited socket ``fd`` until SIGTERM, then write the count to ``out``."""
    import uvicorn

    count = 0
    budget = work_us / 1e6

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        nonlocal count
        if scope["type"] != "http":
            return
        end = time.perf_counter() + budget
        while time.perf_counter() < end:  # the request's CPU work, on the event loop as the gateway's is
            pass
        count += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it stopped on to the previous handler: make that one harmless.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[socket.socket(fileno=fd)])
    finally:
        out.write_text(str(count))


def run_mode(
    mode: str, workers: int, concurrency: int, close: bool, duration: float, work_us: float
) -> dict[str, float]:
    """One measurement: start the workers, load them with wrk, stop them and read their counts."""
    port = free_port()
    sockets = [
        bind_listener("127.0.0.1", port, reuse_port=mode == "reuseport")
        for _ in range(workers if mode == "reuseport" else 1)
    ]
    scratch = Path(tempfile.mkdtemp(prefix="tg-balance-"))
    procs = []
    for i in range(workers):
        sock = sockets[i if mode == "reuseport" else 0]
        cmd = [
            sys.executable,
            __file__,
            "--worker-fd",
            str(sock.fileno()),
            "--work-us",
            str(work_us),
            "--out",
            str(scratch / f"w{i}"),
        ]
        procs.append(subprocess.Popen(cmd, pass_fds=(sock.fileno(),)))
    try:
        _wait_listening(port)
        time.sleep(0.5)  # every worker up: the first one answering the probe is not enough
        wrk = [
            "wrk",
            "-t",
            "1",
            "-c",
            str(concurrency),
            "-d",
            f"{max(1, round(duration))}s",
            f"http://127.0.0.1:{port}/",
        ]
        if close:
            wrk[1:1] = ["-H", "Connection: close"]
        started = time.monotonic()
        subprocess.run(wrk, check=True, capture_output=True)
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        for sock in sockets:
            sock.close()
    counts = [int((scratch / f"w{i}").read_text() or 0) for i in range(workers)]
    shutil.rmtree(scratch, ignore_errors=True)
    total = sum(counts)
    shares = sorted((c / total if total else 0.0) for c in counts)
    return {
        "rps": total / elapsed,
        "min": shares[0],
        "max": shares[-1],
        "spread": shares[-1] / shares[0] if shares[0] else float("inf"),
    }


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("the workers never listened")


def main() -> None:
    """Parse the arguments; run the worker, or every measurement and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=3, help="seconds a run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-us", type=float, default=100.0, help="CPU burnt per request, in microseconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_fd is not None:
        worker(args.worker_fd, args.work_us, args.out)
        return
    require_wrk()
    cpus = len(os.sched_getaffinity(0))
    print(
        f"{args.workers} workers, {args.work_us:.0f} us of CPU per request, {cpus} CPUs, {args.duration:.0f} s a run\n"
    )
    print(f"medians of {args.rounds} rounds (the modes alternate within each round)\n")
    print("| connections | concurrency | mode | req/s | idlest worker | busiest worker | spread |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for close in (False, True):
        for concurrency in args.concurrency:
            runs: dict[str, list[dict[str, float]]] = {"shared": [], "reuseport": []}
            for _ in range(args.rounds):
                for mode, results in runs.items():
                    results.append(run_mode(mode, args.workers, concurrency, close, args.duration, args.work_us))
            for mode, results in runs.items():
                r = {key: statistics.median(run[key] for run in results) for key in results[0]}
                kind = "close" if close else "keep-alive"
                shares = f"{r['min']:.0%} | {r['max']:.0%} | {r['spread']:.2f}"
                print(f"| {kind} | {concurrency} | {mode} | {r['rps']:,.0f} | {shares} |", flush=True)


if __name__ == "__main__":
    main()
