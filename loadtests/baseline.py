"""Baseline benchmark: the gateway against the bare reference endpoint, side by side.

Both servers run the same ONNX model, pinned to one core (``--server-cpu``); wrk runs on the
other (``--client-cpu``), so the load generator never starves the server. Rounds alternate
between the two servers at each concurrency and the medians are compared, because this
machine is shared and noisy: only ratios from one run mean anything.

    python loadtests/baseline.py --duration 5 --rounds 3

The gateway runs with the prediction log off (``--predlog`` turns it on): the bare endpoint
logs nothing, and loadtests/predlog.py measures the log's own cost.

``--before REF`` adds a third server, the gateway as of git commit ``REF`` (exported with
``git archive`` and run from there), in the same alternating rounds: a change's cost on small
requests, measured side by side rather than in two runs on a noisy machine.

    python loadtests/baseline.py --duration 5 --rounds 3 --before HEAD~3

``--state-store URL`` adds the gateway in fleet mode (``redis://...``, a Redis you started) to
the same rounds: fleet mode must cost nothing on the request path (docs/operations.md).

    python loadtests/baseline.py --duration 5 --rounds 3 --state-store redis://127.0.0.1:6379/0

Needs ``wrk`` (Debian: ``apt-get install wrk``). Prints a Markdown table.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ROOT,
    Sample,
    cpu_seconds,
    free_port,
    median,
    print_ratio_table,
    require_wrk,
    run_wrk,
    save_samples,
    scorer_body,
    wait_ready,
    wrk_parser,
)

MODELS = ROOT / "examples" / "models"


def main() -> None:
    parser = wrk_parser(__doc__, [1, 8, 64])
    parser.add_argument(
        "--predlog",
        action="store_true",
        help="keep the prediction log on (off by default: the bare endpoint logs nothing)",
    )
    parser.add_argument(
        "--before",
        metavar="REF",
        help="also run the gateway as of this git commit (e.g. HEAD~3), alternating with the others",
    )
    parser.add_argument("--state-store", metavar="URL", help="also run the gateway with this state_store (fleet mode)")
    args = parser.parse_args()
    require_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-bench-"))
    body_file = scorer_body(workdir)
    model = MODELS / "fraud" / "2" / "model.onnx"
    bare_port, gateway_port = free_port(), free_port()
    pin = ["taskset", "-c", str(args.server_cpu)]
    tree = None
    if args.before:  # exported before any server starts: a bad REF stops here, leaving nothing running
        tree = workdir / "before-tree"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)

    def gateway(
        port: int, name: str, cwd: Path | None = None, extra: tuple[str, ...] = ()
    ) -> tuple[subprocess.Popen[bytes], str]:
        command = [
            *pin, sys.executable, "-m", "gateway", "serve", "--repository", str(MODELS), "--port", str(port),
            "--log-level", "warning", "--state-dir", str(workdir / name / "state"),
            "--log-dir", str(workdir / name / "log"), "--predlog" if args.predlog else "--no-predlog", *extra,
        ]  # fmt: skip
        # From another tree, that tree's packages: the current directory comes first on sys.path.
        env = None if cwd is None else dict(os.environ, PYTHONPATH=str(cwd))
        return subprocess.Popen(command, cwd=cwd, env=env), f"http://127.0.0.1:{port}"

    servers = {
        "bare": (
            subprocess.Popen(
                [*pin, sys.executable, str(ROOT / "loadtests" / "bare_endpoint.py"), str(model), str(bare_port)]
            ),
            f"http://127.0.0.1:{bare_port}",
        ),
        "gateway": gateway(gateway_port, "gateway"),
    }
    if tree is not None:
        servers = {"bare": servers["bare"], "before": gateway(free_port(), "before", tree), **servers}
    if args.state_store:
        servers["fleet"] = gateway(free_port(), "fleet", extra=("--state-store", args.state_store))
    try:
        for name in ("gateway", "before", "fleet"):
            if name in servers:
                wait_ready(servers[name][1] + "/v2/health/ready")
        for _, url in servers.values():
            deadline = time.monotonic() + 30
            while True:  # the bare app has no health route: wait until it answers an inference
                try:
                    run_wrk(url + "/v2/models/fraud/infer", 1, 1, args.client_cpu, body_file)
                    break
                except (subprocess.CalledProcessError, ValueError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        samples: dict[str, dict[int, list[Sample]]] = {name: {c: [] for c in args.concurrency} for name in servers}
        cpu_us: dict[str, dict[int, list[float]]] = {name: {c: [] for c in args.concurrency} for name in servers}
        for connections in args.concurrency:
            for _ in range(args.rounds):
                for name, (process, url) in servers.items():
                    cpu = cpu_seconds(process.pid)
                    sample = run_wrk(
                        url + "/v2/models/fraud/infer", connections, args.duration, args.client_cpu, body_file
                    )
                    samples[name][connections].append(sample)
                    # The server's CPU time per request: steadier than req/s when the machine is shared.
                    served = max(1.0, sample.rps * args.duration)
                    cpu_us[name][connections].append((cpu_seconds(process.pid) - cpu) / served * 1e6)
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
        b_rps, g_rps = median(b, "rps"), median(g, "rps")
        b_p50, g_p50 = median(b, "p50_ms"), median(g, "p50_ms")
        b_p99, g_p99 = median(b, "p99_ms"), median(g, "p99_ms")
        errors = sum(s.non2xx for s in b + g)
        print(
            f"| {c} | {b_rps:,.0f} | {g_rps:,.0f} | {g_rps / b_rps:.2f} | {b_p50:.3f} | {g_p50:.3f} | "
            f"{g_p50 / b_p50:.2f} | {b_p99:.3f} | {g_p99:.3f} | {errors} |"
        )
    if "before" in samples:
        print(f"\nThe same runs against the gateway as of {args.before}:\n")
        print_ratio_table(samples, "before", "server")
    if "fleet" in samples:
        print("\nThe same runs against the gateway in fleet mode (state_store):\n")
        print_ratio_table(samples, "gateway", "server")
    print("\nServer CPU time per request (us, median of the rounds):\n")
    print("| concurrency | " + " | ".join(servers) + " |")
    print("|---" * (len(servers) + 1) + "|")
    for c in args.concurrency:
        print(f"| {c} | " + " | ".join(f"{statistics.median(cpu_us[name][c]):.1f}" for name in servers) + " |")
    if args.save:
        save_samples(args.save, samples)


if __name__ == "__main__":
    main()
