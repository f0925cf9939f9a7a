"""Routing benchmark: a 90/10 canary plus one shadow at fraction 1.0, against a single-version route.

One gateway serves the example fraud scorer (a compute-light model: the shadow's doubled
compute stays small, so the cost measured is routing and mirroring). Rounds alternate between
two routes set through the admin API: ``{"2": 100}``, and ``{"1": 90, "2": 10}`` with version 3
(a copy of 2) shadowing every request. Pinning and wrk as in loadtests/baseline.py.

    python loadtests/routing.py --duration 5 --rounds 3
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from common import (
    ROOT,
    Sample,
    free_port,
    print_ratio_table,
    require_wrk,
    run_wrk,
    save_samples,
    scorer_body,
    wait_ready,
    wrk_parser,
)  # fmt: skip

TOKEN = "routing-benchmark-token-0123456789"
ROUTES = {
    "single version": {"weights": {"2": 100}},
    "90/10 + shadow 1.0": {"weights": {"1": 90, "2": 10}, "shadow": {"3": 1.0}},
}


def put_route(base: str, route: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"{base}/admin/models/fraud/route", data=json.dumps(route).encode(), method="PUT",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def main() -> None:
    args = wrk_parser(__doc__, [64]).parse_args()
    require_wrk()

    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-routing-"))
    repo = workdir / "models" / "fraud"
    examples = ROOT / "examples" / "models" / "fraud"
    for version, source in (("1", "1"), ("2", "2"), ("3", "2")):
        (repo / version).mkdir(parents=True)
        shutil.copy(examples / source / "model.onnx", repo / version / "model.onnx")
    (repo / "config.toml").write_text('version_policy = "all"\n')
    body = scorer_body(workdir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        ["taskset", "-c", str(args.server_cpu), sys.executable, "-m", "gateway", "serve",
         "--repository", str(workdir / "models"), "--port", str(port), "--log-level", "warning",
         "--state-dir", str(workdir / "state"), "--log-dir", str(workdir / "log")],
        env={**__import__("os").environ, "TENSORGATE_ADMIN_TOKEN": TOKEN},
    )  # fmt: skip
    samples: dict[str, dict[int, list[Sample]]] = {name: {c: [] for c in args.concurrency} for name in ROUTES}
    try:
        wait_ready(f"{base}/v2/health/ready")
        url = f"{base}/v2/models/fraud/infer"
        for route in ROUTES.values():
            put_route(base, route)
            run_wrk(url, 8, 1, args.client_cpu, body)
        for connections in args.concurrency:
            for _ in range(args.rounds):
                for name, route in ROUTES.items():
                    put_route(base, route)
                    samples[name][connections].append(run_wrk(url, connections, args.duration, args.client_cpu, body))
        with urllib.request.urlopen(
            urllib.request.Request(f"{base}/admin/models", headers={"Authorization": f"Bearer {TOKEN}"}), timeout=30
        ) as response:
            shadow = json.loads(response.read())["models"][0]["shadow"].get("3", {})
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)

    print_ratio_table(samples, "single version", "route")
    print(f"\nshadow version 3: {json.dumps(shadow)}")
    if args.save:
        save_samples(args.save, samples)


if __name__ == "__main__":
    main()
