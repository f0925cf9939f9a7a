"""gRPC against REST (binary tensors) on the same gateway: the example scorer and a batched MLP.

One tensorgate serves both protocols (``--grpc-port``). REST is driven by wrk with the binary
tensor extension (what tritonclient.http sends); gRPC by a small asyncio driver in its own
process (ghz is not packaged here): ``grpc.aio`` on one HTTP/2 connection, as tritonclient.grpc
uses it, with the ``ModelInferRequest`` serialized once so the client spends as little as it can
per call. Both clients are pinned to ``--client-cpu``, the gateway to ``--server-cpu``; the
configurations alternate within each round and medians are reported, with the server's CPU
time per request (the protocol's own cost, whichever client is the faster).

    python loadtests/grpc.py --duration 5 --rounds 3

"gRPC" is unary ``ModelInfer`` calls, C at a time; "gRPC stream" is ``ModelStreamInfer``: one
stream with C requests in flight. The driver alone: ``python loadtests/grpc.py --driver HOST:PORT
unary|stream REQUEST_FILE C SECONDS`` prints one JSON line (calls, errors, req/s, p50/p99 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named grpc.py, and Python puts its directory first on sys.path: import the real
# grpc (and tritonclient, which imports it) with that directory out of the way, then put it back.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402

sys.path.insert(0, str(_HERE))
from common import ROOT, Sample, cpu_seconds, free_port, run_wrk, wait_ready  # noqa: E402
from mlp import LAYERS, mlp  # noqa: E402

PROTOCOLS = ("REST binary", "gRPC", "gRPC stream")
MODELS = {
    # The example scorer (examples/models/fraud): 16 features in, one score out, unbatched.
    "scorer": ("features", 16, None),
    # A compute-heavy MLP with dynamic batching ("auto"), one row per request.
    "mlp": (
        "x",
        LAYERS[0],
        'max_batch_size = 64\n[batching]\nmax_queue_delay_ms = "auto"\n[onnx]\nintra_op_threads = 1\n',
    ),
}


# -- the gRPC driver (its own process) ------------------------------------------------------------


async def _drive_stream(
    channel: grpc.aio.Channel, payload: bytes, window: int, deadline: float, latencies: list[float]
) -> int:
    """ModelStreamInfer: ``window`` requests in flight on one stream; the errors."""
    request = pb.ModelInferRequest.FromString(payload)
    call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")()
    room = asyncio.Semaphore(window)
    sent: dict[str, float] = {}
    errors = 0

    async def read() -> None:
        nonlocal errors
        async for raw in call:
            answer = pb.ModelStreamInferResponse.FromString(raw)
            if answer.error_message:
                errors += 1
            latencies.append(time.perf_counter() - sent.pop(answer.infer_response.id))
            room.release()

    reader = asyncio.ensure_future(read())
    number = 0
    while time.perf_counter() < deadline:
        await room.acquire()
        number += 1
        request.id = str(number)  # responses come as they finish: matched by id
        sent[request.id] = time.perf_counter()
        await call.write(request.SerializeToString())
    await call.done_writing()
    await reader
    return errors


async def _drive(target: str, payload: bytes, concurrency: int, seconds: float, stream: bool) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    options = [("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        await call(payload)  # connect and warm
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            clock = time.perf_counter
            while clock() < deadline:
                started = clock()
                try:
                    await call(payload)
                except grpc.RpcError:
                    errors += 1
                    continue
                latencies.append(clock() - started)

        began = time.perf_counter()
        if stream:
            errors = await _drive_stream(channel, payload, concurrency, deadline, latencies)
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    n = len(latencies)
    return {
        "calls": n,
        "errors": errors,
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1e3 if n else 0.0,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else 0.0,
    }


def driver_main(argv: list[str]) -> None:
    target, mode, request_file, concurrency, seconds = argv
    payload = Path(request_file).read_bytes()
    result = asyncio.run(_drive(target, payload, int(concurrency), float(seconds), mode == "stream"))
    print(json.dumps(result))


def run_driver(target: str, mode: str, request_file: Path, concurrency: int, seconds: int, cpu: int | None) -> Sample:
    command = [sys.executable, __file__, "--driver", target, mode, str(request_file), str(concurrency), str(seconds)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    return Sample(rps=doc["rps"], p50_ms=doc["p50_ms"], p99_ms=doc["p99_ms"], non2xx=int(doc["errors"]))


# -- the benchmark ---------------------------------------------------------------------------------


def write_requests(workdir: Path, model: str, input_name: str, width: int) -> tuple[Path, int, Path]:
    """The REST binary body (and its JSON header's length) and the serialized gRPC request."""
    row = np.random.default_rng(1).random((1, width), dtype=np.float32)
    tensor = {"name": input_name, "datatype": "FP32", "shape": [1, width]}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": row.nbytes}}]}).encode()
    body = workdir / f"{model}.body"
    body.write_bytes(header + row.tobytes())
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="FP32", shape=[1, width])
    request.raw_input_contents.append(row.tobytes())
    grpc_file = workdir / f"{model}.grpc"
    grpc_file.write_bytes(request.SerializeToString())
    return body, len(header), grpc_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--save", type=Path, help="write the raw samples here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-grpc-bench-"))
    repo = workdir / "models"
    shutil.copytree(ROOT / "examples" / "models" / "fraud" / "2", repo / "scorer" / "1")
    onnx.save(mlp(), _mkdir(repo / "mlp" / "1") / "model.onnx")
    (repo / "mlp" / "config.toml").write_text(MODELS["mlp"][2] or "")
    requests = {name: write_requests(workdir, name, spec[0], spec[1]) for name, spec in MODELS.items()}
    port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        ["taskset", "-c", str(args.server_cpu), sys.executable, "-m", "gateway", "serve", "--repository", str(repo),
         "--port", str(port), "--grpc-port", str(grpc_port), "--log-level", "warning",
         "--state-dir", str(workdir / "state"), "--log-dir", str(workdir / "log")],
        cwd=ROOT,
    )  # fmt: skip
    # (model, protocol) -> concurrency -> runs, with the server's CPU us per request beside each.
    # The prediction log is on (the default), for every protocol alike.
    samples: dict[tuple[str, str], dict[int, list[tuple[Sample, float]]]] = {
        (m, p): {c: [] for c in args.concurrency} for m in MODELS for p in PROTOCOLS
    }
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process=server)

        def measure(model: str, protocol: str, connections: int, seconds: int) -> tuple[Sample, float]:
            body, header_length, grpc_file = requests[model]
            before = cpu_seconds(server.pid)
            if protocol != "REST binary":
                mode = "stream" if protocol == "gRPC stream" else "unary"
                sample = run_driver(f"127.0.0.1:{grpc_port}", mode, grpc_file, connections, seconds, args.client_cpu)
            else:
                url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                sample = run_wrk(url, connections, seconds, args.client_cpu, body, header_length=header_length)
            used = cpu_seconds(server.pid) - before
            return sample, used / max(1.0, sample.rps * seconds) * 1e6

        for model, protocol in samples:  # warm every path once
            measure(model, protocol, 8, 1)
        for connections in args.concurrency:
            for _ in range(args.rounds):
                for (model, protocol), by_c in samples.items():
                    by_c[connections].append(measure(model, protocol, connections, args.duration))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)

    print("| model | protocol | concurrency | req/s | vs REST | p50 ms | p99 ms | server CPU us/req | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in MODELS:
        for connections in args.concurrency:
            base = statistics.median(s.rps for s, _ in samples[(model, "REST binary")][connections])
            for protocol in PROTOCOLS:
                runs = samples[(model, protocol)][connections]
                rps = statistics.median(s.rps for s, _ in runs)
                print(
                    f"| {model} | {protocol} | {connections} | {rps:,.0f} | {rps / base:.2f} | "
                    f"{statistics.median(s.p50_ms for s, _ in runs):.3f} | "
                    f"{statistics.median(s.p99_ms for s, _ in runs):.3f} | "
                    f"{statistics.median(c for _, c in runs):.0f} | {sum(s.non2xx for s, _ in runs)} |"
                )
    if args.save:
        raw = {f"{m}/{p}": {c: [[vars(s), cpu] for s, cpu in runs] for c, runs in by_c.items()}
               for (m, p), by_c in samples.items()}  # fmt: skip
        args.save.write_text(json.dumps(raw, indent=1))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        driver_main(sys.argv[2:])
    else:
        main()
