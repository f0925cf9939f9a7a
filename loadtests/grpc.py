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
unary|stream REQUEST_FILE C SECONDS [CONNECTIONS]`` prints one JSON line (calls, errors, req/s,
p50/p99 ms, its own CPU share); with CONNECTIONS the C calls (or C/CONNECTIONS per stream) are
spread over that many HTTP/2 connections.

``--against-triton``: the same two models served by Triton through PyTriton (the REST
comparison's peer, loadtests/peers/pytriton_server.py) and by tensorgate with each N of
``--workers`` (1: one process; 2: a supervisor, an engine and two workers sharing the gRPC port),
all driven over gRPC by this driver, unary and streaming, in alternating rounds:

    python loadtests/grpc.py --against-triton --duration 4 --rounds 3 --triton-python .venv-triton/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
            started = sent.pop(answer.infer_response.id, None)
            if answer.error_message or started is None:
                if not errors:
                    print(f"stream error: {answer.error_message[:200]!r}", file=sys.stderr)
                errors += 1
            else:
                latencies.append(time.perf_counter() - started)
            room.release()

    reader = asyncio.ensure_future(read())
    number = 0
    while (left := deadline - time.perf_counter()) > 0:
        try:  # bounded: a server that stops answering ends the run, it does not hang it
            await asyncio.wait_for(room.acquire(), left)
        except TimeoutError:
            break
        number += 1
        request.id = str(number)  # responses come as they finish: matched by id
        sent[request.id] = time.perf_counter()
        await call.write(request.SerializeToString())
    await call.done_writing()
    try:
        await asyncio.wait_for(reader, 30)
    except (TimeoutError, grpc.RpcError):
        errors += len(sent)  # never answered
        call.cancel()
    return errors


async def _drive(
    target: str, payload: bytes, concurrency: int, seconds: float, stream: bool, connections: int = 1
) -> dict[str, float]:
    """``concurrency`` calls (or stream requests) in flight, spread over ``connections`` connections."""
    latencies: list[float] = []
    errors = 0
    connections = max(1, min(connections, concurrency))
    # A channel of its own subchannel pool is a connection of its own: grpc would otherwise share
    # one connection between channels with the same target and options. Several connections
    # reach several workers of a host (SO_REUSEPORT spreads connections, not calls).
    options = [("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    windows = [concurrency // connections + (i < concurrency % connections) for i in range(connections)]
    try:
        calls = [channel.unary_unary("/inference.GRPCInferenceService/ModelInfer") for channel in channels]
        for call in calls:
            await call(payload)  # connect and warm (bytes in, bytes out)
        deadline = time.perf_counter() + seconds

        async def worker(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
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

        cpu = time.process_time()
        began = time.perf_counter()
        if stream:
            streams = zip(channels, windows, strict=True)
            errors = sum(await asyncio.gather(*(_drive_stream(c, payload, w, deadline, latencies) for c, w in streams)))
        else:
            await asyncio.gather(*(worker(call) for call, w in zip(calls, windows, strict=True) for _ in range(w)))
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu
    finally:
        for channel in channels:
            await channel.close()
    latencies.sort()
    n = len(latencies)
    return {
        "calls": n,
        "errors": errors,
        "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1e3 if n else 0.0,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else 0.0,
        # The driver's own CPU share: near 1.0 means the client, not the server, set the pace.
        "client_cpu": cpu / elapsed,
    }


def driver_main(argv: list[str]) -> None:
    target, mode, request_file, concurrency, seconds, *rest = argv
    payload = Path(request_file).read_bytes()
    connections = int(rest[0]) if rest else 1
    result = asyncio.run(_drive(target, payload, int(concurrency), float(seconds), mode == "stream", connections))
    print(json.dumps(result))


def driver_run(
    target: str, mode: str, request_file: Path, concurrency: int, seconds: int, cpu: int | None, connections: int = 1
) -> dict[str, float]:
    """One run of the driver in a process of its own (pinned to ``cpu``): its JSON line."""
    command = [sys.executable, __file__, "--driver", target, mode, str(request_file), str(concurrency), str(seconds),
               str(connections)]  # fmt: skip
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    doc: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return doc


def run_driver(target: str, mode: str, request_file: Path, concurrency: int, seconds: int, cpu: int | None) -> Sample:
    doc = driver_run(target, mode, request_file, concurrency, seconds, cpu)
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


def write_repository(workdir: Path) -> Path:
    """tensorgate's model repository: the scorer (unbatched) and the MLP (batched, "auto")."""
    repo = workdir / "models"
    shutil.copytree(ROOT / "examples" / "models" / "fraud" / "2", repo / "scorer" / "1")
    onnx.save(mlp(), _mkdir(repo / "mlp" / "1") / "model.onnx")
    (repo / "mlp" / "config.toml").write_text(MODELS["mlp"][2] or "")
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--save", type=Path, help="write the raw samples here")
    parser.add_argument("--against-triton", action="store_true",
                        help="tensorgate (--workers) against Triton (PyTriton), both over gRPC")  # fmt: skip
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="with --against-triton")
    parser.add_argument("--modes", nargs="+", default=["unary", "stream"], choices=["unary", "stream"],
                        help="with --against-triton: ModelInfer calls, ModelStreamInfer streams")  # fmt: skip
    parser.add_argument("--grpc-connections", type=int, default=4,
                        help="with --against-triton: the driver's connections (calls spread over them)")  # fmt: skip
    parser.add_argument("--triton-python", type=Path,
                        help="an interpreter with nvidia-pytriton and onnxruntime (default: .peers/pytriton, "
                             "made on first use as compare.py makes it)")  # fmt: skip
    args = parser.parse_args()
    if args.against_triton:
        against_triton(args)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-grpc-bench-"))
    repo = write_repository(workdir)
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


# -- against Triton (PyTriton) over gRPC ----------------------------------------------------------


def _grpc_answer(target: str, payload: bytes) -> np.ndarray:
    """The first output of one ``ModelInfer`` call, as float32 (retried while the server starts)."""
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        while True:
            try:
                raw = call(payload, timeout=30)
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    response = pb.ModelInferResponse.FromString(raw)
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32)


def _expected(model: Path, width: int) -> np.ndarray:
    """What ONNX Runtime answers for the benchmark's row (write_requests' seed)."""
    import onnxruntime as ort  # only this mode needs it here

    row = np.random.default_rng(1).random((1, width), dtype=np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (name,) = (i.name for i in session.get_inputs())
    return np.asarray(session.run(None, {name: row})[0], dtype=np.float32).reshape(-1)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants (a host's children have
    sessions of their own, so its process group is not enough; Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # gone meanwhile
            parent[int(entry.name)] = int(fields[1])
            used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    total = 0.0
    for child, seconds in used.items():
        node = child
        while node > 1 and node != pid:
            node = parent.get(node, 0)
        if node == pid:
            total += seconds
    return total


def against_triton(args: argparse.Namespace) -> None:
    """tensorgate (each N of ``--workers``) and Triton through PyTriton, the same models, over gRPC.

    PyTriton is loadtests/peers/pytriton_server.py, the comparison's peer over REST: ONNX Runtime
    on one intra-op thread behind Triton's dynamic batcher (max batch 64, 500 us delay) for both
    models; tensorgate batches the MLP ("auto") and not the scorer, as in the REST comparison.
    Every server on ``--server-cpu``, the driver on ``--client-cpu``; rounds alternate between
    the servers; each server's CPU is its whole process tree's (Triton's model stubs, a host's
    supervisor, engine and workers).
    """
    from common import stop_group
    from compare import ensure_env

    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-grpc-triton-"))
    repo = write_repository(workdir)
    requests = {name: write_requests(workdir, name, spec[0], spec[1]) for name, spec in MODELS.items()}
    files = {"scorer": repo / "scorer" / "1" / "model.onnx", "mlp": repo / "mlp" / "1" / "model.onnx"}
    expected = {name: _expected(files[name], MODELS[name][1]) for name in MODELS}
    python = args.triton_python.absolute() if args.triton_python else ensure_env(ROOT / ".peers", "pytriton")
    pin = ["taskset", "-c", str(args.server_cpu)]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    targets: dict[str, str] = {}
    ready: dict[str, list[str]] = {}
    try:
        triton_port = free_port()
        peer = ROOT / "loadtests" / "peers" / "pytriton_server.py"
        processes["triton"] = subprocess.Popen(
            [*pin, str(python), str(peer), str(triton_port), *(f"{m}={f}" for m, f in files.items())],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        targets["triton"] = f"127.0.0.1:{triton_port + 1}"
        ready["triton"] = [f"http://127.0.0.1:{triton_port}/v2/models/{m}/ready" for m in MODELS]
        for n in args.workers:
            name = f"tensorgate {n} worker" + ("s" if n > 1 else "")
            port, grpc_port, scratch = free_port(), free_port(), workdir / f"w{n}"
            processes[name] = subprocess.Popen(
                [*pin, sys.executable, "-m", "gateway", "serve", "--repository", str(repo), "--port", str(port),
                 "--grpc-port", str(grpc_port), "--workers", str(n), "--log-level", "warning",
                 "--state-dir", str(scratch / "state"), "--log-dir", str(scratch / "log")],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            targets[name] = f"127.0.0.1:{grpc_port}"
            ready[name] = [f"http://127.0.0.1:{port}/v2/health/ready"]
        for name, urls in ready.items():
            for url in urls:  # Triton is ready before PyTriton has bound the models: ask for each
                wait_ready(url, 300, processes[name])
        for name, target in targets.items():  # the same answer from every server, over gRPC
            for model, (_, _, grpc_file) in requests.items():
                got = _grpc_answer(target, grpc_file.read_bytes())
                if not np.allclose(got, expected[model], rtol=1e-4, atol=1e-5):
                    raise SystemExit(f"{name} answered {model} with {got[:4]}, ONNX Runtime {expected[model][:4]}")

        def measure(name: str, model: str, mode: str, concurrency: int, seconds: int) -> dict[str, float]:
            before = tree_cpu_seconds(processes[name].pid)
            doc = driver_run(targets[name], mode, requests[model][2], concurrency, seconds, args.client_cpu,
                             args.grpc_connections)  # fmt: skip
            used = tree_cpu_seconds(processes[name].pid) - before
            doc["server_us"] = used / max(1.0, doc["calls"]) * 1e6
            return doc

        for name in targets:  # warm every path once
            for model in MODELS:
                for mode in args.modes:
                    measure(name, model, mode, 8, 1)
        runs: dict[tuple[str, str, int, str], list[dict[str, float]]] = {}
        for concurrency in args.concurrency:
            for round_ in range(args.rounds):
                for model in MODELS:
                    for mode in args.modes:
                        for name in targets:
                            doc = measure(name, model, mode, concurrency, args.duration)
                            runs.setdefault((model, mode, concurrency, name), []).append(doc)
                            print(f"round {round_ + 1} {model:6} {mode:6} c{concurrency:<3} {name:20} "
                                  f"{doc['rps']:>8,.0f} req/s  {doc['server_us']:5.0f} us/req server  "
                                  f"client cpu {doc['client_cpu']:.0%}  errors {doc['errors']:.0f}",
                                  flush=True)  # fmt: skip
    finally:
        for process in processes.values():
            stop_group(process)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nservers on cpu {args.server_cpu}, driver on cpu {args.client_cpu} ({args.grpc_connections} "
          f"connections at most); medians of {args.rounds} rounds of {args.duration} s\n")  # fmt: skip
    print("| model | gRPC | concurrency | server | req/s | vs Triton | p50 ms | p99 ms | server CPU us/req "
          "| client CPU | errors |")  # fmt: skip
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in MODELS:
        for mode in args.modes:
            for concurrency in args.concurrency:
                base = statistics.median(d["rps"] for d in runs[(model, mode, concurrency, "triton")])
                for name in targets:
                    docs = runs[(model, mode, concurrency, name)]

                    def mid(field: str, docs: list[dict[str, float]] = docs) -> float:
                        return statistics.median(d[field] for d in docs)

                    print(f"| {model} | {mode} | {concurrency} | {name} | {mid('rps'):,.0f} | {mid('rps') / base:.2f} "
                          f"| {mid('p50_ms'):.3f} | {mid('p99_ms'):.3f} | {mid('server_us'):.0f} "
                          f"| {mid('client_cpu'):.0%} | {sum(d['errors'] for d in docs):.0f} |")  # fmt: skip
    if args.save:
        args.save.write_text(json.dumps({"/".join(map(str, key)): docs for key, docs in runs.items()}, indent=1))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        driver_main(sys.argv[2:])
    else:
        main()
