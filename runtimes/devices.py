"""Quiet probing of the accelerators this process can really use.

onnxruntime-gpu lists the CUDA and TensorRT providers even on a machine without a GPU, and
asking for them there fills the log with load errors. We ask the driver directly instead:
no driver library or no device means the CPU, without a word.

``python -m runtimes.devices`` prints the count of usable CUDA devices: a host's supervisor
(which loads no ONNX Runtime itself) starts one engine per device this very probe finds, so
its engines and its workers' placement agree.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


@dataclass(frozen=True, slots=True)
class Devices:
    """What the probe found: CUDA devices usable by ONNX Runtime, and whether TensorRT is."""

    cuda_devices: int
    tensorrt: bool

    def describe(self) -> str:
        """One line for the start-up log."""
        if not self.cuda_devices:
            return "no usable CUDA device; models run on the CPU"
        trt = "with" if self.tensorrt else "without"
        return f"{self.cuda_devices} CUDA device(s), {trt} TensorRT"


def _cuda_device_count() -> int:
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    if libcuda.cuInit(0) != 0:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _library_loads(*names: str) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def probe_devices() -> Devices:
    """Find the GPUs that ONNX Runtime can use here; cheap, silent, and never raises."""
    import onnxruntime as ort  # here: ``python -m runtimes.devices`` on a host without libcuda never loads it

    available = set(ort.get_available_providers())
    if CUDA not in available:
        return Devices(0, False)
    count = _cuda_device_count()
    if count:
        # The CUDA/cuDNN pip wheels (the `cuda` extra) are found only once preloaded.
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            try:
                preload()
            except Exception as exc:  # a partial CUDA install: the session will fall back
                log.warning("could not preload the CUDA libraries: %s", exc)
    tensorrt = bool(count) and TENSORRT in available and _library_loads("libnvinfer.so.10", "libnvinfer.so")
    return Devices(count, tensorrt)


def providers_for(device: str, use_tensorrt: bool, devices: Devices) -> list[tuple[str, dict[str, str]]]:
    """The provider list for one session: ``device`` is ``auto``, ``cpu`` or ``cuda:N``."""
    if device == "cpu":
        return [(CPU, {})]
    if device == "auto":
        if not devices.cuda_devices:
            return [(CPU, {})]
        device_id = 0
    else:
        device_id = int(device.partition(":")[2])
        if device_id >= devices.cuda_devices:
            raise ValueError(f"device {device} is not usable here ({devices.describe()})")
    chosen: list[tuple[str, dict[str, str]]] = []
    if use_tensorrt and devices.tensorrt:
        chosen.append((TENSORRT, {"device_id": str(device_id)}))
    chosen.append((CUDA, {"device_id": str(device_id)}))
    chosen.append((CPU, {}))
    return chosen


def _main() -> None:
    # No driver, no device: no need to load ONNX Runtime to say so.
    print(probe_devices().cuda_devices if _cuda_device_count() else 0)


if __name__ == "__main__":
    _main()
