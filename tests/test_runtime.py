"""ONNX Runtime loading and running: containment, refusals, devices, execution off the loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from runtimes.base import InvalidInputError, RuntimeLoadError
from runtimes.devices import CPU, Devices, probe_devices, providers_for
from runtimes.executor import Executor
from runtimes.onnxrt import OnnxOptions, OnnxRuntime, clean_message
from runtimes.warmup import CostModel, warm_up
from tests.onnx_models import identity, with_external_weights, write_model

NO_GPU = Devices(0, False)


def load(path: Path) -> OnnxRuntime:
    return OnnxRuntime.load(path, OnnxOptions(), NO_GPU)


def test_loads_and_runs_on_the_cpu(tmp_path: Path) -> None:
    runtime = load(write_model(tmp_path, "m", 1, identity("FP32")))
    assert runtime.provider == CPU and runtime.platform == "onnxruntime_onnx"
    assert [(s.name, s.datatype, s.shape) for s in runtime.inputs] == [("INPUT0", "FP32", (-1, 4))]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (y,) = runtime.run({"INPUT0": x}, ["OUTPUT0"])
    assert np.array_equal(x, y)


def test_bytes_travel_as_bytes(tmp_path: Path) -> None:
    runtime = load(write_model(tmp_path, "m", 1, identity("BYTES")))
    x = np.array([[b"a", b"", "é".encode(), b"\x00z"]], dtype=object)
    (y,) = runtime.run({"INPUT0": x}, ["OUTPUT0"])
    assert y.tolist() == x.tolist()
    with pytest.raises(InvalidInputError, match="UTF-8"):
        runtime.run({"INPUT0": np.array([[b"\xff"] * 4], dtype=object)}, ["OUTPUT0"])


def test_wrong_dims_are_the_clients_fault(tmp_path: Path) -> None:
    runtime = load(write_model(tmp_path, "m", 1, identity("FP32")))
    with pytest.raises(InvalidInputError) as raised:
        runtime.run({"INPUT0": np.zeros((1, 5), np.float32)}, ["OUTPUT0"])
    assert "onnxruntime_src" not in str(raised.value) and ".cc:" not in str(raised.value)


def test_corrupt_and_truncated_models_are_refused(tmp_path: Path) -> None:
    path = write_model(tmp_path, "m", 1, identity("FP32"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeLoadError):
        load(path)
    path.write_bytes(b"\x80\x04\x95 pickle, not onnx")
    with pytest.raises(RuntimeLoadError):
        load(path)


@pytest.mark.parametrize(
    "location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin", "..\\outside.bin", "missing.bin", ""]
)
def test_external_data_must_stay_in_the_version_directory(tmp_path: Path, location: str) -> None:
    version_dir = tmp_path / "repo" / "m" / "1"
    version_dir.mkdir(parents=True)
    (tmp_path / "repo" / "m" / "outside.bin").write_bytes(np.ones(4, np.float32).tobytes())
    path = version_dir / "model.onnx"
    path.write_bytes(with_external_weights(version_dir, location).SerializeToString())
    with pytest.raises(RuntimeLoadError, match="external data"):
        load(path)


def test_external_data_symlink_out_is_refused(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    (version_dir / "weights.bin").symlink_to(tmp_path / "secret.bin")
    path = version_dir / "model.onnx"
    path.write_bytes(with_external_weights(version_dir, "weights.bin").SerializeToString())
    with pytest.raises(RuntimeLoadError, match="outside the version directory"):
        load(path)


def test_external_data_inside_loads(tmp_path: Path) -> None:
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "weights.bin").write_bytes(np.full(4, 2.0, np.float32).tobytes())
    path = version_dir / "model.onnx"
    path.write_bytes(with_external_weights(version_dir, "weights.bin").SerializeToString())
    (y,) = load(path).run({"INPUT0": np.ones((1, 4), np.float32)}, ["OUTPUT0"])
    assert y.tolist() == [[3.0] * 4]


def test_device_probe_is_quiet_and_cpu_here(capfd: pytest.CaptureFixture[str]) -> None:
    devices = probe_devices()
    assert providers_for("auto", True, devices)[-1][0] == CPU
    if not devices.cuda_devices:
        assert providers_for("auto", True, devices) == [(CPU, {})]
        with pytest.raises(ValueError, match="not usable"):
            providers_for("cuda:0", True, devices)
        out, err = capfd.readouterr()
        assert out == "" and err == ""


def test_gpu_provider_order() -> None:
    gpu = Devices(2, True)
    assert [p for p, _ in providers_for("cuda:1", True, gpu)] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        CPU,
    ]
    assert providers_for("cuda:1", True, gpu)[0][1] == {"device_id": "1"}
    assert [p for p, _ in providers_for("auto", False, gpu)] == ["CUDAExecutionProvider", CPU]
    assert providers_for("cpu", True, gpu) == [(CPU, {})]


def test_clean_message_strips_source_paths() -> None:
    raw = (
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : /onnxruntime_src/onnxruntime/core/x.cc:12 "
        "onnxruntime::Foo(int) Got invalid dimensions"
    )
    assert clean_message(Exception(raw)) == "Got invalid dimensions"


def test_warm_up_fits_a_cost_line(tmp_path: Path) -> None:
    runtime = load(write_model(tmp_path, "m", 1, identity("FP32")))
    ticks = iter(range(1000))
    cost = warm_up(runtime, clock=lambda: float(next(ticks)))
    assert cost.base_s == 1.0 and cost.per_element_s == 0.0 and cost.base_elements == 4


@pytest.mark.anyio
async def test_executor_runs_cheap_calls_inline_and_others_in_threads(tmp_path: Path) -> None:
    runtime = load(write_model(tmp_path, "m", 1, identity("FP32")))
    threads: list[str] = []
    original = runtime.run

    def spy(inputs, outputs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return original(inputs, outputs)

    runtime.run = spy  # type: ignore[method-assign]
    executor = Executor(runtime, concurrency=1, inline_threshold_s=50e-6, cost=CostModel(10e-6, 1e-6, 4), name="m-1")
    x = {"INPUT0": np.ones((1, 4), np.float32)}
    await executor.run(x, ["OUTPUT0"], 4)  # predicted 10 us: inline
    await executor.run(x, ["OUTPUT0"], 400)  # predicted ~406 us: a thread
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("infer-m-1")
    results = await asyncio.gather(*(executor.run(x, ["OUTPUT0"], 400) for _ in range(5)))
    assert all(np.array_equal(r[0], x["INPUT0"]) for r in results)
    assert executor.inflight == 0
    await executor.close()
