"""Shared pieces of the benchmarks: free ports, readiness, wrk runs and their parsing."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "loadtests" / "infer.lua"


@dataclass
class Sample:
    """One wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int = 0


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_group(command: list[str], cpu: int | None, workdir: Path) -> subprocess.Popen[bytes]:
    """A server in a session of its own (its helpers stop with it), pinned to ``cpu`` unless None or < 0."""
    if cpu is not None and cpu >= 0:
        command = ["taskset", "-c", str(cpu), *command]
    return subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left (Triton's model stubs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_ready(url: str, timeout_s: float = 120.0, process: subprocess.Popen[Any] | None = None) -> None:
    """Poll ``url`` until it answers 200; stop at once if ``process`` (the server) exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}) before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {url} did not become ready")


def cpu_seconds(pid: int, *, group: bool = False) -> float:
    """User + system CPU time of a process, or of every process in its group (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    entries = Path("/proc").iterdir() if group else [Path(f"/proc/{pid}")]
    total = 0.0
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if not group or int(fields[2]) == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    number, unit = match.groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    if match is None:
        raise ValueError(f"wrk output lacks {pattern!r}:\n{text}")
    return match.group(1)


def binary_body(path: Path, name: str, row: np.ndarray) -> int:
    """Write a binary V2 request of one FP32 tensor ``row`` to ``path``; the length of its JSON header."""
    tensor = {
        "name": name,
        "datatype": "FP32",
        "shape": list(row.shape),
        "parameters": {"binary_data_size": row.nbytes},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    path.write_bytes(header + row.tobytes())
    return len(header)


def run_wrk(
    url: str,
    connections: int,
    duration_s: int,
    cpu: int | str | None,
    body_file: Path,
    *,
    header_length: int | None = None,
    delay_ms: int | None = None,
    threads: int = 1,
) -> Sample:
    """Run wrk (``threads`` threads, pinned to ``cpu`` if given: a core or a taskset list) against
    ``url`` with the body in ``body_file``.

    ``header_length`` marks a binary body: the length of its JSON header. ``delay_ms`` paces
    each connection (a wait between its requests).
    """
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(LUA), url]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    env = dict(os.environ, BODY_FILE=str(body_file))
    if header_length is not None:
        env["HEADER_LENGTH"] = str(header_length)
    if delay_ms is not None:
        env["DELAY_MS"] = str(delay_ms)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=duration_s + 30, check=True)
    return Sample(
        rps=float(_find(r"Requests/sec:\s+([\d.]+)", done.stdout)),
        p50_ms=_ms(_find(r"^\s*50%\s+(\S+)", done.stdout)),
        p99_ms=_ms(_find(r"^\s*99%\s+(\S+)", done.stdout)),
        non2xx=int(_find(r"non2xx=(\d+)", done.stderr)),
        socket_errors=int(_find(r"socket_errors=(\d+)", done.stderr)),
    )


def median(samples: list[Sample], field: str) -> float:
    """The median of one field over runs."""
    return statistics.median(getattr(s, field) for s in samples)


def save_samples(path: Path, samples: dict[str, dict[int, list[Sample]]]) -> None:
    """Write every run, by configuration and concurrency, as JSON."""
    raw = {name: {c: [vars(s) for s in runs] for c, runs in by_c.items()} for name, by_c in samples.items()}
    path.write_text(json.dumps(raw, indent=1))


def print_ratio_table(samples: dict[str, dict[int, list[Sample]]], reference: str, label: str) -> None:
    """A Markdown table of every configuration's medians, throughput as a ratio of ``reference``."""
    print(f"| {label} | concurrency | req/s | vs {reference} | p50 ms | p99 ms | non-200 |")
    print("|---|---|---|---|---|---|---|")
    concurrencies = next(iter(samples.values())).keys()
    for connections in concurrencies:
        base = median(samples[reference][connections], "rps")
        for name, by_concurrency in samples.items():
            runs = by_concurrency[connections]
            rps = median(runs, "rps")
            print(
                f"| {name} | {connections} | {rps:,.0f} | {rps / base:.2f} | {median(runs, 'p50_ms'):.3f} | "
                f"{median(runs, 'p99_ms'):.3f} | {sum(s.non2xx for s in runs)} |"
            )


def wrk_parser(description: str | None, concurrency: list[int]) -> argparse.ArgumentParser:
    """The options every wrk benchmark takes: duration, rounds, concurrency, cores, --save."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=concurrency)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--save", type=Path, help="also write the raw samples here")
    return parser


def require_wrk() -> None:
    """Stop with a clear message when wrk is missing."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")


def scorer_body(workdir: Path) -> Path:
    """A V2 JSON request for the example scorer (16 features), written into ``workdir``."""
    body = workdir / "body.json"
    features = [round(0.1 * i, 3) for i in range(1, 17)]
    body.write_text(
        json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": features}]})
    )
    return body
