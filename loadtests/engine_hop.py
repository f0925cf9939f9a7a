"""The engine hop: one worker with an engine process vs. today's single process, side by side.

Two servers of the same repository run at once: ``tensorgate serve`` (one process, models in
it) and ``tensorgate serve --workers 1 --engine`` (a supervisor, one HTTP worker and the CPU
engine; every model runs in the engine, reached over ZeroMQ IPC). Both are pinned to
``--server-cpu`` (the same CPU budget; ``--server-cpu -1`` leaves them unpinned) and wrk to
``--client-cpu``; they are measured in alternating rounds and medians are reported.

Models: the batched MLP (loadtests/mlp.py, ``max_batch_size = 64``, "auto" delay; one row per
request, binary tensors), and a tiny Identity model without batching (the hop's cost alone).
The hop is the difference of the p50 latencies at concurrency 1; the throughput ratio at
concurrency 64 is the engine's over the single process's.

    python loadtests/engine_hop.py --duration 5 --rounds 3

``--baseline DIR`` (repeatable) adds a server ``engine@DIR``: the same engine setup run from
another checkout of the code (``git archive <commit> | tar -x -C DIR``), to measure a change of
the engine side by side with what it replaces, in the same rounds.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from common import (
    ROOT,
    Sample,
    binary_body,
    free_port,
    median,
    run_wrk,
    save_samples,
    start_group,
    stop_group,
    wait_ready,
    wrk_parser,
)
from mlp import LAYERS, mlp

sys.path.insert(0, str(ROOT))
from tests.onnx_models import identity

MODELS = {
    "mlp": 'placement = "engine"\nmax_batch_size = 64\n[batching]\nmax_queue_delay_ms = "auto"\n'
    "[onnx]\nintra_op_threads = 1\n",
    # Unbatched: in the engine only because it says so (unset, it would stay in the worker).
    "tiny": 'placement = "engine"\nmax_batch_size = 0\n[onnx]\nintra_op_threads = 1\n',
    "tiny-local": "max_batch_size = 0\n[onnx]\nintra_op_threads = 1\n",
}


def main() -> None:
    """Run both servers, measure, print the table and the hop."""
    parser = wrk_parser(__doc__, [1, 64])
    parser.add_argument(
        "--baseline", type=Path, action="append", default=[], help="also run the engine setup from this checkout"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-hop-"))
    repo = workdir / "models"
    for name, config in MODELS.items():
        target = repo / name / "1" / "model.onnx"
        target.parent.mkdir(parents=True)
        onnx.save(mlp() if name == "mlp" else identity("FP32", ["batch", 16]), target)
        (repo / name / "config.toml").write_text(config)
    rng = np.random.default_rng(1)
    bodies = {
        "mlp": (workdir / "mlp.bin", binary_body(workdir / "mlp.bin", "x", rng.random((1, LAYERS[0]), np.float32))),
        "tiny": (workdir / "tiny.bin", binary_body(workdir / "tiny.bin", "INPUT0", rng.random((1, 16), np.float32))),
    }
    bodies["tiny-local"] = bodies["tiny"]
    servers = {}
    ports = {}
    setups: list[tuple[str, list[str], Path]] = [("single", [], ROOT), ("engine", ["--workers", "1", "--engine"], ROOT)]
    for baseline in args.baseline:  # python -m gateway from there imports that checkout's code
        setups.append((f"engine@{baseline.name}", ["--workers", "1", "--engine"], baseline.resolve()))
    for label, extra, code in setups:
        port = free_port()
        scratch = workdir / label
        command = [sys.executable, "-m", "gateway", "serve", "--repository", str(repo), "--port", str(port),
                   "--grpc-port", "0", "--log-level", "warning", "--no-predlog",
                   "--state-dir", str(scratch / "state"), "--log-dir", str(scratch / "log"), *extra]  # fmt: skip
        servers[label] = start_group(command, args.server_cpu, code)
        ports[label] = port
    samples: dict[str, dict[int, list[Sample]]] = {}
    try:
        for label, port in ports.items():
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process=servers[label])
        for model, (body, header_length) in bodies.items():
            for port in ports.values():  # warm every path once
                url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                run_wrk(url, 8, 1, args.client_cpu, body, header_length=header_length)
        for connections in args.concurrency:
            for _ in range(args.rounds):
                for model, (body, header_length) in bodies.items():
                    for label, port in ports.items():
                        url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                        sample = run_wrk(
                            url, connections, args.duration, args.client_cpu, body, header_length=header_length
                        )
                        samples.setdefault(f"{model} {label}", {}).setdefault(connections, []).append(sample)
    finally:
        for process in servers.values():
            stop_group(process)
        shutil.rmtree(workdir, ignore_errors=True)

    print("| model | server | concurrency | req/s | vs single | p50 us | p99 us | non-200 |")
    print("|---|---|---|---|---|---|---|---|")
    for model in MODELS:
        for connections in args.concurrency:
            base = samples[f"{model} single"][connections]
            for label in ports:
                runs = samples[f"{model} {label}"][connections]
                rps = median(runs, "rps")
                print(
                    f"| {model} | {label} | {connections} | {rps:,.0f} | {rps / median(base, 'rps'):.2f} | "
                    f"{median(runs, 'p50_ms') * 1e3:.0f} | {median(runs, 'p99_ms') * 1e3:.0f} | "
                    f"{sum(s.non2xx for s in runs)} |"
                )
    if 1 in args.concurrency:
        for model in MODELS:
            for label in ports:
                if label == "single":
                    continue
                hop = median(samples[f"{model} {label}"][1], "p50_ms") - median(samples[f"{model} single"][1], "p50_ms")
                print(f"hop ({model}, {label}, p50 at concurrency 1): {hop * 1e3:.0f} us")
    if args.save:
        save_samples(args.save, samples)


if __name__ == "__main__":
    main()
