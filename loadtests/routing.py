"""Routing benchmark: a 90/10 canary plus one shadow at fraction 1.0, against a single-version route.

One gateway serves the example fraud scorer (a compute-light model: the shadow's doubled
compute stays small, so the cost measured is routing and mirroring). Rounds alternate between
two routes set through the admin API: ``{"2": 100}``, and ``{"1": 90, "2": 10}`` with version 3
(a copy of 2) shadowing every request. Pinning and wrk as in loadtests/baseline.py.

    python loadtests/routing.py --duration 5 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from common import ROOT, Sample, free_port, print_ratio_table, run_wrk, save_samples, wait_ready

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64])
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-routing-"))
    repo = workdir / "models" / "fraud"
    examples = ROOT / "examples" / "models" / "fraud"
    for version, source in (("1", "1"), ("2", "2"), ("3", "2")):
        (repo / version).mkdir(parents=True)
        shutil.copy(examples / source / "model.onnx", repo / version / "model.onnx")
    (repo / "config.toml").write_text('version_policy = "all"\n')
    body = workdir / "body.json"
    features = [round(0.1 * i, 3) for i in range(1, 17)]
    body.write_text(
        json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 16], "data": features}]})
    )
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
