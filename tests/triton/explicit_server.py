"""Triton's own server binary (shipped in nvidia-pytriton) in explicit model-control mode.

    python explicit_server.py WORKDIR HTTP_PORT GRPC_PORT METRICS_PORT WEIGHTS.npy

A model repository with one Python-backend model, ``lazy_scorer``, that starts *unloaded*: only
a client's ``POST /v2/repository/models/lazy_scorer/load`` loads it. For the tests of loading
and unloading through Triton's model-control API (its inference is tested with PyTriton's
server: with this stub build, outputs made here come back empty). Runs in .venv-triton; execs
tritonserver, which stops on SIGTERM by itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np
from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path

CONFIG = """name: "lazy_scorer"
backend: "python"
max_batch_size: 64
input [{ name: "features", data_type: TYPE_FP32, dims: [16] }]
output [{ name: "score", data_type: TYPE_FP32, dims: [1] }]
"""

MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils

WEIGHTS = np.array(%s, dtype=np.float32)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "features").as_numpy().astype(np.float32)
            logits = x.reshape(-1, 16) @ WEIGHTS[:16].reshape(16, 1) + WEIGHTS[16]
            score = np.ascontiguousarray((1.0 / (1.0 + np.exp(-logits))).astype(np.float32).reshape(-1, 1))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("score", score)]))
        return responses
"""


def main() -> None:
    workdir = Path(sys.argv[1])
    http_port, grpc_port, metrics_port = sys.argv[2:5]
    weights = np.load(sys.argv[5]).astype(np.float32)
    server = workdir / "tritonserver"
    if not server.exists():
        shutil.copytree(
            get_root_module_path() / "tritonserver", server, ignore=shutil.ignore_patterns("python_backend_stubs")
        )
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        shutil.copy(get_stub_path(version), server / "backends" / "python" / "triton_python_backend_stub")
    repository = workdir / "repository"
    (repository / "lazy_scorer" / "1").mkdir(parents=True, exist_ok=True)
    (repository / "lazy_scorer" / "config.pbtxt").write_text(CONFIG)
    (repository / "lazy_scorer" / "1" / "model.py").write_text(MODEL % weights.tolist())
    env = dict(os.environ)
    # The stub links libpython dynamically: this interpreter's first, then PyTriton's own libraries.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (sysconfig.get_config_var("LIBDIR"), str(get_libs_path()), env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (sysconfig.get_paths()["purelib"], env.get("PYTHONPATH", "")) if p)
    binary = server / "bin" / "tritonserver"
    os.execve(
        binary,
        [str(binary), "--model-repository", str(repository), "--model-control-mode", "explicit",
         "--backend-directory", str(server / "backends"), "--cache-directory", str(server / "caches"),
         "--http-address", "127.0.0.1", "--http-port", http_port, "--grpc-address", "127.0.0.1",
         "--grpc-port", grpc_port, "--metrics-port", metrics_port, "--allow-metrics", "false"],
        env,
    )  # fmt: skip


if __name__ == "__main__":
    main()
