"""Batching benchmark: one compute-heavy model served with batching off, "auto" and a fixed delay.

The model is a float32 MLP 256 -> 1024 -> 1024 -> 1024 -> 10 (loadtests/mlp.py), one row per
request, sent as tritonclient sends it (the binary tensor extension) or, with ``--json``, as
JSON. The gateway is pinned to ``--server-cpu`` with ONNX Runtime on
``--intra-op-threads`` threads, wrk to ``--client-cpu``. The three configurations are three
models of one server, measured in alternating rounds; medians are reported, with each
configuration's throughput as a ratio of batching off, plus the in-process ONNX Runtime rows/s
at batch 1 and 32 for scale.

    python loadtests/batching.py --duration 5 --rounds 3

With ``--triton-python PYTHON`` (an interpreter with ``nvidia-pytriton`` and ``onnxruntime``
installed), NVIDIA Triton serving the same model through PyTriton with its dynamic batcher
(loadtests/triton_reference.py) is measured in the same rounds, pinned the same way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import ROOT, Sample, free_port, print_ratio_table, run_wrk, save_samples, wait_ready
from mlp import LAYERS, mlp

CONFIGS = {
    "off": "max_batch_size = 0\n",
    "auto": 'max_batch_size = 64\n[batching]\nmax_queue_delay_ms = "auto"\n',
    "fixed-1ms": "max_batch_size = 64\n[batching]\nmax_queue_delay_ms = 1\n",
}


def in_process_rows_per_s(model: onnx.ModelProto, threads: int) -> dict[int, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rates = {}
    for batch in (1, 32):
        x = np.random.default_rng(0).random((batch, LAYERS[0]), dtype=np.float32)
        for _ in range(20):
            session.run(None, {"x": x})
        calls = max(50, 4000 // batch)
        start = time.perf_counter()
        for _ in range(calls):
            session.run(None, {"x": x})
        rates[batch] = batch * calls / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="JSON requests instead of binary tensors")
    parser.add_argument("--save", type=Path, help="write the raw samples here")
    parser.add_argument("--triton-python", type=Path, help="also measure Triton (PyTriton) run by this Python")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    model = mlp()
    rates = in_process_rows_per_s(model, args.intra_op_threads)
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-batching-"))
    repo = workdir / "models"
    for name, config in CONFIGS.items():
        target = repo / f"mlp-{name}" / "1" / "model.onnx"
        target.parent.mkdir(parents=True)
        onnx.save(model, target)
        threads = f"[onnx]\nintra_op_threads = {args.intra_op_threads}\n"
        # TOML tables close at the next one: put [onnx] after the top-level keys and tables.
        (repo / f"mlp-{name}" / "config.toml").write_text(config + threads)
    body = workdir / "body"
    row = np.random.default_rng(1).random((1, LAYERS[0]), dtype=np.float32)
    tensor: dict[str, object] = {"name": "x", "datatype": "FP32", "shape": [1, LAYERS[0]]}
    header_length = None
    if args.json:
        body.write_text(json.dumps({"inputs": [{**tensor, "data": row.reshape(-1).tolist()}]}))
    else:
        header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": row.nbytes}}]}).encode()
        body.write_bytes(header + row.tobytes())
        header_length = len(header)
    port = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", str(args.server_cpu), sys.executable, "-m", "gateway", "serve",
         "--repository", str(repo), "--port", str(port), "--log-level", "warning",
         "--state-dir", str(workdir / "state"), "--log-dir", str(workdir / "log")]
    )  # fmt: skip
    urls = {name: f"http://127.0.0.1:{port}/v2/models/mlp-{name}/infer" for name in CONFIGS}
    triton = None
    if args.triton_python:
        triton_port = free_port()
        reference = ROOT / "loadtests" / "triton_reference.py"
        triton = subprocess.Popen(
            ["taskset", "-c", str(args.server_cpu), str(args.triton_python), str(reference),
             str(repo / "mlp-off" / "1" / "model.onnx"), str(triton_port), "64", str(args.intra_op_threads)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        urls["triton (PyTriton)"] = f"http://127.0.0.1:{triton_port}/v2/models/mlp/infer"
    samples: dict[str, dict[int, list[Sample]]] = {name: {c: [] for c in args.concurrency} for name in urls}
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        if triton is not None:
            wait_ready(urls["triton (PyTriton)"].removesuffix("/infer") + "/ready")
        for url in urls.values():  # warm every path once
            run_wrk(url, 8, 1, args.client_cpu, body, header_length=header_length)
        for connections in args.concurrency:
            for _ in range(args.rounds):
                for name, url in urls.items():
                    sample = run_wrk(
                        url, connections, args.duration, args.client_cpu, body, header_length=header_length
                    )
                    samples[name][connections].append(sample)
    finally:
        for process in (server, triton):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{'JSON' if args.json else 'binary'} requests; in-process ONNX Runtime ({args.intra_op_threads} thread): "
          f"{rates[1]:,.0f} rows/s at batch 1, {rates[32]:,.0f} rows/s at batch 32\n")  # fmt: skip
    print_ratio_table(samples, "off", "batching")
    if args.save:
        save_samples(args.save, samples)


if __name__ == "__main__":
    main()
