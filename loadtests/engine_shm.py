"""The engine hop's shared-memory threshold: a tensor's round trip as ZeroMQ frames vs. a shared file.

An echo process (a ROUTER, as the engine) unpacks each message and packs its tensor back, with
gateway/engine/wire.py; the client (a DEALER, as a worker) times round trips of one FP32
tensor per size, once with every tensor in frames and once with every tensor through
``/dev/shm``. The threshold (wire.SHM_THRESHOLD_BYTES) is where shared memory starts to win.

    .venv/bin/python loadtests/engine_shm.py [--seconds-per-size 1.0]

Bounded: about ``2 * sizes * seconds-per-size`` seconds (about 20 s by default).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from gateway.engine import wire

SIZES = [16 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 4 << 20, 16 << 20]


def _echo(endpoint: str, tag: str, threshold: int) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.bind(endpoint)
    files = wire.SharedFiles(tag, threshold=threshold)
    while True:
        frames = socket.recv_multipart(copy=False)
        header, message = wire.decode(frames[1:])
        if header.get("op") == "stop":
            break
        arrays = wire.unpack(header, message, files)
        socket.send_multipart([frames[0].bytes, *wire.encode({}, arrays.items(), files)], copy=False)
    socket.close()
    context.term()


def _measure(endpoint: str, tag: str, threshold: int, seconds: float) -> dict[int, float]:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(endpoint)
    files = wire.SharedFiles(tag, threshold=threshold)
    medians = {}
    for size in SIZES:
        array = np.random.default_rng(0).random(size // 4, dtype=np.float32)
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            start = time.perf_counter()
            socket.send_multipart(wire.encode({}, [("x", array)], files), copy=False)
            header, message = wire.decode(socket.recv_multipart(copy=False))
            back = wire.unpack(header, message, files)["x"]
            float(back[-1])  # touch the result, as an encoder would
            times.append(time.perf_counter() - start)
        medians[size] = statistics.median(times)
    socket.send_multipart([wire.dumps({"op": "stop"})])
    socket.close()
    context.term()
    return medians


def main() -> None:
    """Print the round trip per size, frames vs. shared memory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-per-size", type=float, default=1.0)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="tg-") as run:
        for label, threshold in (("frames", 1 << 40), ("shm", 0)):
            endpoint = f"ipc://{Path(run)}/echo-{label}.sock"
            echo = multiprocessing.get_context("spawn").Process(
                target=_echo, args=(endpoint, "tg-shm-bench", threshold)
            )
            echo.start()
            try:
                results[label] = _measure(endpoint, "tg-shm-bench", threshold, args.seconds_per_size)
            finally:
                echo.join(timeout=10)
                if echo.is_alive():
                    echo.kill()
    print(f"{'tensor':>10} {'frames us':>10} {'shm us':>10} {'shm/frames':>10}")
    for size in SIZES:
        frames, shm = results["frames"][size] * 1e6, results["shm"][size] * 1e6
        print(f"{size >> 10:>8}Ki {frames:>10.0f} {shm:>10.0f} {shm / frames:>10.2f}")


if __name__ == "__main__":
    main()
