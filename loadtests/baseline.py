"""Baseline benchmark: the gateway against the bare reference endpoint, side by side.

Both servers run the same ONNX model, pinned to one core (``--server-cpu``); wrk runs on the
other (``--client-cpu``), so the load generator never starves the server. Rounds alternate
between the two servers at each concurrency and the medians are compared, because this
machine is shared and noisy: only ratios from one run mean anything.

    python loadtests/baseline.py --duration 5 --rounds 3

The gateway runs with the prediction log off (``--predlog`` turns it on): the bare endpoint
logs nothing, and loadtests/predlog.py measures the log's own cost.

Needs ``wrk`` (Debian: ``apt-get install wrk``). Prints a Markdown table.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    ROOT,
    Sample,
    free_port,
    median,
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
    args = parser.parse_args()
    require_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-bench-"))
    body_file = scorer_body(workdir)
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
                    "--predlog" if args.predlog else "--no-predlog",
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
                    run_wrk(url + "/v2/models/fraud/infer", 1, 1, args.client_cpu, body_file)
                    break
                except (subprocess.CalledProcessError, ValueError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        samples: dict[str, dict[int, list[Sample]]] = {name: {c: [] for c in args.concurrency} for name in servers}
        for connections in args.concurrency:
            for _ in range(args.rounds):
                for name, (_, url) in servers.items():
                    sample = run_wrk(
                        url + "/v2/models/fraud/infer", connections, args.duration, args.client_cpu, body_file
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
        b_rps, g_rps = median(b, "rps"), median(g, "rps")
        b_p50, g_p50 = median(b, "p50_ms"), median(g, "p50_ms")
        b_p99, g_p99 = median(b, "p99_ms"), median(g, "p99_ms")
        errors = sum(s.non2xx for s in b + g)
        print(
            f"| {c} | {b_rps:,.0f} | {g_rps:,.0f} | {g_rps / b_rps:.2f} | {b_p50:.3f} | {g_p50:.3f} | "
            f"{g_p50 / b_p50:.2f} | {b_p99:.3f} | {g_p99:.3f} | {errors} |"
        )
    if args.save:
        save_samples(args.save, samples)


if __name__ == "__main__":
    main()
