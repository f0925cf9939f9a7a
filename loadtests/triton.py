"""Remote Triton runtime: the same Triton server called directly, and through tensorgate.

One Triton server (PyTriton, dynamic batching, serving the example fraud scorer with ONNX
Runtime) is started once; wrk then alternates, round by round, between calling it directly and
calling a tensorgate whose ``fraud`` model is ``runtime = "triton"`` in front of it, with the
same V2 JSON request at the same concurrency. The ratio of the medians is the gateway's cost.

    python loadtests/triton.py --duration 5 --rounds 3
    python loadtests/triton.py --gateway-batching      # tensorgate batches before Triton does

Where the processes run matters on a small machine: by default Triton gets ``--server-cpu``,
wrk ``--client-cpu``, and tensorgate ``--gateway-cpu`` (default: the client's core, so that
Triton keeps its core to itself in both configurations; -1 leaves it unpinned). Needs wrk, and
makes ``.peers/pytriton`` (nvidia-pytriton with ONNX Runtime) on first use, as compare.py does.
"""

from __future__ import annotations

import json
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
    start_group,
    stop_group,
    wait_ready,
    wrk_parser,
)
from compare import SCORER, ensure_env


def answer(url: str, body: Path) -> list[float]:
    """The scores one request gets."""
    request = urllib.request.Request(url, data=body.read_bytes(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        data: list[float] = json.loads(response.read())["outputs"][0]["data"]
    return data


def main() -> None:
    parser = wrk_parser(__doc__, [64])
    parser.add_argument("--gateway-cpu", type=int, help="tensorgate's core (default: --client-cpu; -1: any)")
    parser.add_argument("--gateway-batching", action="store_true", help="max_batch_size = 64 in tensorgate too")
    parser.add_argument("--grpc", action="store_true", help="tensorgate talks to Triton over gRPC")
    parser.add_argument("--peers-dir", type=Path, default=ROOT / ".peers")
    args = parser.parse_args()
    require_wrk()
    gateway_cpu = args.client_cpu if args.gateway_cpu is None else args.gateway_cpu
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-triton-"))
    body = scorer_body(workdir)
    triton_port, gateway_port = free_port(), free_port()
    python = ensure_env(args.peers_dir, "pytriton")
    peer = ROOT / "loadtests" / "peers" / "pytriton_server.py"
    triton = start_group([str(python), str(peer), str(triton_port), f"fraud={SCORER}"], args.server_cpu, workdir)
    repo = workdir / "models"
    (repo / "fraud" / "1").mkdir(parents=True)
    url = f"grpc://127.0.0.1:{triton_port + 1}" if args.grpc else f"http://127.0.0.1:{triton_port}"
    batching = "max_batch_size = 64\n[batching]\nmax_queue_delay_ms = 'auto'\n" if args.gateway_batching else ""
    (repo / "fraud" / "config.toml").write_text(
        f'runtime = "triton"\n{batching}[triton]\nurl = "{url}"\nmodel = "fraud"\nversion = "1"\n'
    )
    gateway = None
    try:
        wait_ready(f"http://127.0.0.1:{triton_port}/v2/models/fraud/ready", 180, triton)
        gateway = start_group(
            [sys.executable, "-m", "gateway", "serve", "--repository", str(repo), "--port", str(gateway_port),
             "--log-level", "warning", "--state-dir", str(workdir / "state"), "--log-dir", str(workdir / "log"),
             "--no-predlog"],
            gateway_cpu,
            workdir,
        )  # fmt: skip
        wait_ready(f"http://127.0.0.1:{gateway_port}/v2/health/ready", 60, gateway)
        urls = {
            "triton direct": f"http://127.0.0.1:{triton_port}/v2/models/fraud/infer",
            "through tensorgate": f"http://127.0.0.1:{gateway_port}/v2/models/fraud/infer",
        }
        direct, through = (answer(u, body) for u in urls.values())
        if direct != through:
            raise SystemExit(f"answers differ: direct {direct}, through tensorgate {through}")
        samples: dict[str, dict[int, list[Sample]]] = {name: {} for name in urls}
        for connections in args.concurrency:
            for target in urls.values():
                run_wrk(target, connections, 1, args.client_cpu, body)  # warm
            for _ in range(args.rounds):
                for name, target in urls.items():
                    sample = run_wrk(target, connections, args.duration, args.client_cpu, body)
                    samples[name].setdefault(connections, []).append(sample)
                    print(f"{name:20} c{connections:<3} {sample.rps:>9,.0f} req/s  p50 {sample.p50_ms:.3f} ms  "
                          f"p99 {sample.p99_ms:.3f} ms  non-200 {sample.non2xx}", flush=True)  # fmt: skip
    finally:
        if gateway is not None:
            stop_group(gateway)
        stop_group(triton)
    mode = ("gRPC" if args.grpc else "HTTP") + (", gateway batching" if args.gateway_batching else "")
    print(f"\ntensorgate -> Triton over {mode}; Triton on cpu {args.server_cpu}, wrk on cpu {args.client_cpu}, "
          f"tensorgate on {'any cpu' if gateway_cpu < 0 else f'cpu {gateway_cpu}'}\n")  # fmt: skip
    print_ratio_table(samples, "triton direct", "path")
    if args.save:
        save_samples(args.save, samples)


if __name__ == "__main__":
    main()
