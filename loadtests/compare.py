"""The published comparison: tensorgate against KServe, Seldon MLServer and Triton (PyTriton).

One command: installs each peer into a virtual environment of its own (under ``--peers-dir``,
once), serves the same two ONNX models with every server (the example 16-feature scorer and
the compute-heavy MLP of loadtests/mlp.py), checks every server's answer against ONNX Runtime
before measuring, then drives each with wrk (pinned to its own core, the server to the other)
at concurrency 1, 8 and 64, one server at a time, and prints a Markdown table (requests/s,
p50, p99, server CPU) and writes an SVG chart.

    python loadtests/compare.py --duration 5 --chart docs/compare.svg

Batching: tensorgate batches the MLP ("auto"), MLServer with adaptive batching, Triton with
its dynamic batcher (both models); KServe's ModelServer has none. Every server runs ONNX
Runtime on one intra-op thread. MLServer runs its model in the server process
(``parallel_workers = 0``): its worker processes fail to start with this Python
("There is no current event loop"). Triton needs Debian's Python 3.11 here (PyTriton's stub
links the system libpython); another interpreter is used where that one is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import (
    ROOT,
    Sample,
    cpu_seconds,
    free_port,
    require_wrk,
    run_wrk,
    start_group,
    stop_group,
    wait_ready,
    wrk_parser,
)
from mlp import mlp

PEERS = {
    "kserve": ["kserve", "onnxruntime", "numpy"],
    "mlserver": ["mlserver", "onnxruntime", "numpy"],
    "pytriton": ["nvidia-pytriton", "onnxruntime"],
}
SCORER = ROOT / "examples" / "models" / "fraud" / "2" / "model.onnx"


def ensure_env(peers_dir: Path, name: str) -> Path:
    """The peer's interpreter, creating its virtual environment on first use."""
    python = peers_dir / name / "bin" / "python"
    if python.exists():
        return python
    base = "/usr/bin/python3.11" if name == "pytriton" and Path("/usr/bin/python3.11").exists() else sys.executable
    print(f"installing {name} into {peers_dir / name} ...", flush=True)
    subprocess.run([base, "-m", "venv", str(peers_dir / name)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[name]], check=True)
    return python


def requests_for(models: dict[str, Path], workdir: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """A V2 JSON request body per model, and the ONNX Runtime answer it must get."""
    rng = np.random.default_rng(0)
    bodies = {}
    for name, path in models.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (spec,) = session.get_inputs()
        x = rng.random((1, spec.shape[-1]), dtype=np.float32)
        (expected,) = session.run(None, {spec.name: x})
        body = workdir / f"{name}.json"
        body.write_text(json.dumps({"inputs": [{"name": spec.name, "datatype": "FP32", "shape": list(x.shape),
                                                "data": x.reshape(-1).tolist()}]}))  # fmt: skip
        bodies[name] = (body, expected)
    return bodies


def check_answer(url: str, body: Path, expected: np.ndarray) -> None:
    request = urllib.request.Request(url, data=body.read_bytes(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        (output,) = json.loads(response.read())["outputs"]
    got = np.array(output["data"], np.float32).reshape(expected.shape)
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise SystemExit(f"{url} answered {got.reshape(-1)[:4]}..., ONNX Runtime {expected.reshape(-1)[:4]}...")


def launchers(models: dict[str, Path], peers_dir: Path, workdir: Path) -> dict[str, Callable[[int], list[str]]]:
    """For each server: the command that serves both models on a port."""
    peer_dir = ROOT / "loadtests" / "peers"
    specs = [f"{name}={path}" for name, path in models.items()]

    def tensorgate(port: int) -> list[str]:
        repo = workdir / "tensorgate-models"
        for name, path in models.items():
            (repo / name / "1").mkdir(parents=True, exist_ok=True)
            (repo / name / "1" / "model.onnx").write_bytes(path.read_bytes())
        (repo / "mlp" / "config.toml").write_text("max_batch_size = 64\n[onnx]\nintra_op_threads = 1\n")
        (repo / "scorer" / "config.toml").write_text("[onnx]\nintra_op_threads = 1\n")
        return [sys.executable, "-m", "gateway", "serve", "--repository", str(repo), "--port", str(port),
                "--log-level", "warning", "--state-dir", str(workdir / "tg-state"),
                "--log-dir", str(workdir / "tg-log")]  # fmt: skip

    def kserve(port: int) -> list[str]:
        return [str(ensure_env(peers_dir, "kserve")), str(peer_dir / "kserve_server.py"), str(port), *specs]

    def mlserver(port: int) -> list[str]:
        root = workdir / "mlserver-models"
        for name, path in models.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / "mlserver_runtime.py").write_bytes((peer_dir / "mlserver_runtime.py").read_bytes())
            settings = {
                "name": name,
                "implementation": "mlserver_runtime.OnnxRuntime",
                "parameters": {"uri": str(path)},
            }
            if name == "mlp":
                settings |= {"max_batch_size": 64, "max_batch_time": 0.002}  # adaptive batching
            (root / name / "model-settings.json").write_text(json.dumps(settings))
        server = {"http_port": port, "grpc_port": port + 1, "metrics_port": port + 2, "host": "127.0.0.1"}
        (root / "settings.json").write_text(json.dumps(server | {"parallel_workers": 0}))
        mlserver_bin = ensure_env(peers_dir, "mlserver").parent / "mlserver"
        return [str(mlserver_bin), "start", str(root)]

    def pytriton(port: int) -> list[str]:
        return [str(ensure_env(peers_dir, "pytriton")), str(peer_dir / "pytriton_server.py"), str(port), *specs]

    return {"tensorgate": tensorgate, "kserve": kserve, "mlserver": mlserver, "pytriton": pytriton}


def chart(results: dict[tuple[str, str, int], tuple[Sample, float]], servers: list[str], path: Path) -> None:
    """Grouped bars: requests/s at concurrency 64, per model and server."""
    colors = ["#e8833a", "#3a7be8", "#2f855a", "#9aa5b1"]
    models = sorted({m for (_, m, _) in results})
    width, height, pad = 640, 300, 50
    top = max(s.rps for s, _ in results.values()) * 1.15
    group = (width - 2 * pad) / len(models)
    bar = group / (len(servers) + 1)
    shapes = []
    for g, model in enumerate(models):
        for i, server in enumerate(servers):
            sample = results.get((server, model, 64))
            if sample is None:
                continue
            h = (height - 2 * pad) * sample[0].rps / top
            x = pad + g * group + i * bar
            shapes.append(f'<rect x="{x:.1f}" y="{height - pad - h:.1f}" width="{bar - 4:.1f}" height="{h:.1f}" '
                          f'fill="{colors[i % 4]}"><title>{server}: {sample[0].rps:,.0f} req/s</title></rect>'
                          f'<text x="{x + bar / 2 - 2:.1f}" y="{height - pad - h - 4:.1f}" font-size="10" '
                          f'text-anchor="middle">{sample[0].rps:,.0f}</text>')  # fmt: skip
        shapes.append(f'<text x="{pad + g * group + group / 2:.1f}" y="{height - pad + 18}" text-anchor="middle">'
                      f"{model}, concurrency 64</text>")  # fmt: skip
    legend = "".join(
        f'<rect x="{pad + i * 150}" y="12" width="12" height="12" fill="{colors[i % 4]}"/>'
        f'<text x="{pad + i * 150 + 16}" y="22" font-size="12">{server}</text>'
        for i, server in enumerate(servers)
    )
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="12"><rect width="100%" height="100%" fill="white"/>{legend}{"".join(shapes)}'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/></svg>\n'
    )


def main() -> None:
    parser = wrk_parser(__doc__, [1, 8, 64])
    parser.add_argument("--peers-dir", type=Path, default=ROOT / ".peers", help="where the peers' environments live")
    parser.add_argument("--servers", nargs="+", help="a subset of: tensorgate kserve mlserver pytriton")
    parser.add_argument("--chart", type=Path, help="write the SVG chart here")
    args = parser.parse_args()
    require_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="tensorgate-compare-"))
    onnx.save(mlp(), workdir / "mlp.onnx")
    models = {"scorer": SCORER, "mlp": workdir / "mlp.onnx"}
    bodies = requests_for(models, workdir)
    servers = launchers(models, args.peers_dir, workdir)
    chosen = [s for s in servers if args.servers is None or s in args.servers]
    results: dict[tuple[str, str, int], tuple[Sample, float]] = {}
    for server in chosen:
        port = free_port()
        process = start_group(servers[server](port), args.server_cpu, workdir)
        try:
            for model in bodies:  # Triton is ready before PyTriton has bound the models: ask each
                wait_ready(f"http://127.0.0.1:{port}/v2/models/{model}/ready", 180, process)
            for model, (body, expected) in bodies.items():
                url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                check_answer(url, body, expected)
                for connections in args.concurrency:
                    run_wrk(url, connections, 1, args.client_cpu, body)  # warm
                    before = cpu_seconds(process.pid, group=True)
                    sample = run_wrk(url, connections, args.duration, args.client_cpu, body)
                    cpu = (cpu_seconds(process.pid, group=True) - before) / args.duration * 100
                    results[(server, model, connections)] = (sample, cpu)
                    print(f"{server:18} {model:7} c{connections:<3} {sample.rps:>9,.0f} req/s  "
                          f"p50 {sample.p50_ms:7.3f} ms  p99 {sample.p99_ms:7.3f} ms  cpu {cpu:4.0f}%  "
                          f"non-200 {sample.non2xx}", flush=True)  # fmt: skip
        finally:
            stop_group(process)
    print("\n| model | server | concurrency | req/s | p50 ms | p99 ms | server CPU | non-200 |")
    print("|---|---|---|---|---|---|---|---|")
    for (server, model, connections), (sample, cpu) in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        print(f"| {model} | {server} | {connections} | {sample.rps:,.0f} | {sample.p50_ms:.3f} | {sample.p99_ms:.3f} | "
              f"{cpu:.0f}% | {sample.non2xx} |")  # fmt: skip
    if args.chart:
        chart(results, chosen, args.chart)


if __name__ == "__main__":
    main()
