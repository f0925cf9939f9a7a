"""GPU check: the CUDA execution provider through tensorgate, and batching throughput on a GPU.

Run on a machine with an NVIDIA GPU and onnxruntime-gpu (plus its CUDA 13 / cuDNN 9 libraries):

    python loadtests/gpu_check.py --duration 10

1. Which providers ONNX Runtime offers, and what tensorgate's device probe finds.
2. The compute-heavy MLP (loadtests/mlp.py) loaded through ``runtimes.onnxrt`` with
   ``device = "auto"``: the provider it got, its answers against the CPU's, and rows/s of direct
   runtime calls per batch size on the GPU and on the CPU.
3. The gateway serving the MLP from the GPU, unbatched and with dynamic batching ("auto"),
   driven at concurrency 64 by an asyncio HTTP/1.1 client in several processes (wrk is not
   needed): requests/s, p50 and p99, and the mean batch size from ``/metrics``.

Prints one JSON document (and a Markdown table) for docs/benchmarks.md. On a machine without a
GPU it still runs, on the CPU, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtests"))

from common import cpu_seconds, free_port, wait_ready  # noqa: E402
from mlp import LAYERS, mlp  # noqa: E402

from runtimes.devices import probe_devices  # noqa: E402
from runtimes.onnxrt import OnnxOptions, OnnxRuntime  # noqa: E402


def runtime_check(model_path: Path, batches: list[int], seconds: float) -> dict[str, object]:
    import onnxruntime as ort

    devices = probe_devices()
    report: dict[str, object] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "devices": devices.describe(),
    }
    gpu = OnnxRuntime.load(model_path, OnnxOptions(device="auto", tensorrt=False), devices)
    cpu = OnnxRuntime.load(model_path, OnnxOptions(device="cpu"), devices)
    report["provider"] = gpu.provider
    x = np.random.default_rng(1).normal(size=(64, LAYERS[0])).astype(np.float32)
    (on_gpu,) = gpu.run({"x": x}, ["y"])
    (on_cpu,) = cpu.run({"x": x}, ["y"])
    report["max_abs_diff_vs_cpu"] = float(np.abs(on_gpu - on_cpu).max())
    rates: dict[str, dict[int, float]] = {}
    for name, runtime in (("auto", gpu), ("cpu", cpu)):
        rates[name] = {}
        for batch in batches:
            feed = {"x": np.ones((batch, LAYERS[0]), np.float32)}
            runtime.run(feed, ["y"])
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                runtime.run(feed, ["y"])
                calls += 1
            rates[name][batch] = round(calls * batch / (time.perf_counter() - started))
    report["rows_per_s"] = rates
    gpu.close()
    cpu.close()
    return report


def _client(port: int, path: str, body: bytes, connections: int, seconds: float, out: multiprocessing.Queue) -> None:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def one(latencies: list[float], statuses: dict[int, int], stop: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    async def run() -> tuple[list[float], dict[int, int]]:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(one(latencies, statuses, stop) for _ in range(connections)))
        return latencies, statuses

    out.put(asyncio.run(run()))


def drive(port: int, path: str, body: bytes, concurrency: int, seconds: float, processes: int) -> dict[str, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    per = max(1, concurrency // processes)
    workers = [
        multiprocessing.Process(target=_client, args=(port, path, body, per, seconds, queue)) for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    for _ in workers:
        part, codes = queue.get(timeout=seconds + 60)
        latencies += part
        for code, count in codes.items():
            statuses[code] = statuses.get(code, 0) + count
    for worker in workers:
        worker.join()
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / seconds),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1e3, 3),
        "non_200": sum(c for s, c in statuses.items() if s != 200),
    }


def gateway_check(model: onnx.ModelProto, work: Path, seconds: float, processes: int) -> dict[str, object]:
    configs = {
        "unbatched": "max_batch_size = 0\ninline_threshold_us = 0\n",
        "batched": "max_batch_size = 256\ninline_threshold_us = 0\ninstance_count = 2\n"
        '[batching]\nmax_queue_delay_ms = "auto"\n',
        "batched-fixed-2ms": "max_batch_size = 256\ninline_threshold_us = 0\ninstance_count = 2\n"
        "[batching]\nmax_queue_delay_ms = 2\n",
        "batched-on-cpu": "max_batch_size = 256\ninline_threshold_us = 0\ninstance_count = 2\n"
        '[onnx]\ndevice = "cpu"\n[batching]\nmax_queue_delay_ms = "auto"\n',
    }
    repo = work / "models"
    for name, config in configs.items():
        (repo / f"mlp-{name}" / "1").mkdir(parents=True)
        onnx.save(model, repo / f"mlp-{name}" / "1" / "model.onnx")
        (repo / f"mlp-{name}" / "config.toml").write_text(config)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--repository", str(repo), "--port", str(port),
         "--state-dir", str(work / "state"), "--log-dir", str(work / "log"), "--log-format", "text"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", 120, server)
        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, LAYERS[0]], "data": [0.01] * LAYERS[0]}]}
        ).encode()
        results: dict[str, object] = {}
        for name in configs:
            before = cpu_seconds(server.pid)
            results[name] = drive(port, f"/v2/models/mlp-{name}/infer", body, 64, seconds, processes)
            results[name]["server_cpu_percent"] = round(100 * (cpu_seconds(server.pid) - before) / seconds)  # type: ignore[index]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        for name in configs:
            total = re.search(rf'tensorgate_batch_size_sum{{model="mlp-{name}",version="1"}} (\S+)', metrics)
            count = re.search(rf'tensorgate_batch_size_count{{model="mlp-{name}",version="1"}} (\S+)', metrics)
            if total and count and float(count.group(1)):
                results[name]["mean_batch"] = round(float(total.group(1)) / float(count.group(1)), 1)  # type: ignore[index]
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    results["provider_lines"] = [line for line in output.splitlines() if "READY on" in line]
    results["exit_code"] = server.returncode
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--client-processes", type=int, default=min(8, max(1, (os.cpu_count() or 2) // 2)))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tensorgate-gpu-"))
    model = mlp()
    onnx.save(model, work / "mlp.onnx")
    report = {"runtime": runtime_check(work / "mlp.onnx", [1, 8, 64, 256], min(args.duration, 3.0))}
    report["gateway"] = gateway_check(model, work, args.duration, args.client_processes)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
