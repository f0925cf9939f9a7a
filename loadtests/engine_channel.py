"""Where the engine hop's time goes: round trips of small messages between two processes.

Each row is the median round trip of ``--calls`` 64-byte messages between this process and an
echo process, both on uvloop: pyzmq's ``zmq.asyncio`` sockets; pyzmq's blocking sockets;
pyzmq sockets served from the event loop's reader, as gateway/engine/channel.py does (one,
two and three frames per message); a plain Unix stream socket (asyncio Protocol); then the
engine's own messages (a header and a 16-float tensor, gateway/engine/wire.py), decoded and
encoded again by the echo as an engine does, over each of the last two. The last row is the
real thing without HTTP: ``EngineClient.infer`` to an engine process (started as
the supervisor starts it) running a tiny Identity model, and back.

    .venv/bin/python loadtests/engine_channel.py [--calls 3000]

Bounded: a few seconds per row.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
import zmq
import zmq.asyncio
from common import ROOT, free_port

sys.path.insert(0, str(ROOT))
from gateway.engine import wire
from gateway.engine.channel import Channel
from gateway.engine.placement import Engines
from gateway.host.roles import HostRole
from runtimes.devices import Devices
from tests.onnx_models import identity, write_model

PAYLOAD = b"x" * 64
TENSOR = np.ones((1, 16), np.float32)
_SIZE = struct.Struct("<I")


def _files() -> wire.SharedFiles:
    return wire.SharedFiles("tg-channel-bench")


def _wire_answer(frames: list[Any], files: wire.SharedFiles) -> list[wire.Frame]:
    """What an engine does to a message, without the model: decode it, encode its tensors back."""
    header, message = wire.decode(frames)
    arrays = wire.unpack(header, message, files)
    return wire.encode({"id": header["id"], "ok": True}, arrays.items(), files)


def _zmq_echo(endpoint: str) -> None:
    async def main() -> None:
        context = zmq.Context()
        socket = context.socket(zmq.ROUTER)
        socket.bind(endpoint)
        done = asyncio.get_running_loop().create_future()

        files = _files()

        def echo(frames: list[zmq.Frame]) -> None:
            if frames[1].bytes == b"stop":
                done.set_result(None)
            elif frames[1].bytes[:1] == b"x":
                channel.send(frames)
            else:
                channel.send([frames[0], *_wire_answer(frames[1:], files)])

        channel = Channel(socket, echo)
        await done
        channel.close()

    uvloop.run(main())


def _unix_echo(path: str) -> None:
    files = _files()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = bytearray()

        def data_received(self, data: bytes) -> None:
            if data[:1] == b"x":  # the raw 64-byte rows
                self.transport.write(data)  # type: ignore[attr-defined]
                return
            self.buffer += data  # length-prefixed wire messages
            while len(self.buffer) >= _SIZE.size:
                (size,) = _SIZE.unpack_from(self.buffer)
                if len(self.buffer) < _SIZE.size + size:
                    return
                body = bytes(self.buffer[_SIZE.size : _SIZE.size + size])
                del self.buffer[: _SIZE.size + size]
                answer = b"".join(_wire_answer([body], files))
                self.transport.write(_SIZE.pack(len(answer)) + answer)  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Echo, path)
        async with server:
            await asyncio.sleep(3600)

    uvloop.run(main())


def _timed(calls: int, one: Callable[[], Any]) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        one()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


async def _timed_async(calls: int, one: Callable[[], Any]) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await one()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def zmq_blocking(endpoint: str, calls: int) -> float:
    """pyzmq's blocking DEALER."""
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(endpoint)

    def one() -> None:
        socket.send(PAYLOAD)
        socket.recv()

    result = _timed(calls, one)
    socket.close(linger=0)
    context.term()
    return result


def zmq_asyncio(endpoint: str, calls: int) -> float:
    """pyzmq's zmq.asyncio DEALER."""

    async def main() -> float:
        context = zmq.asyncio.Context()
        socket = context.socket(zmq.DEALER)
        socket.connect(endpoint)

        async def one() -> None:
            await socket.send(PAYLOAD)
            await socket.recv()

        result = await _timed_async(calls, one)
        socket.close(linger=0)
        context.term()
        return result

    return uvloop.run(main())


def zmq_loop(endpoint: str, calls: int, frames: int) -> float:
    """A DEALER served from the loop's reader (gateway/engine/channel.py)."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        context = zmq.Context()
        waiting: list[asyncio.Future[None]] = []
        channel = Channel(context.socket(zmq.DEALER), lambda _: waiting.pop().set_result(None))
        channel.socket.connect(endpoint)
        await asyncio.sleep(0.2)

        async def one() -> None:
            future = loop.create_future()
            waiting.append(future)
            channel.send([PAYLOAD] * frames)
            await future

        result = await _timed_async(calls, one)
        channel.close()
        context.term()
        return result

    return uvloop.run(main())


def unix_socket(path: str, calls: int) -> float:
    """A plain Unix stream socket, asyncio Protocol on uvloop."""

    class Client(asyncio.Protocol):
        future: asyncio.Future[None] | None = None

        def data_received(self, data: bytes) -> None:
            if self.future is not None:
                self.future.set_result(None)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_unix_connection(Client, path)

        async def one() -> None:
            protocol.future = loop.create_future()
            transport.write(PAYLOAD)
            await protocol.future

        result = await _timed_async(calls, one)
        transport.close()
        return result

    return uvloop.run(main())


def zmq_wire(endpoint: str, calls: int) -> float:
    """The engine's messages (one tensor) over the channel it uses, echoed through decode/encode."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        context = zmq.Context()
        files = _files()
        waiting: list[asyncio.Future[list[Any]]] = []
        channel = Channel(context.socket(zmq.DEALER), lambda frames: waiting.pop().set_result(frames))
        channel.socket.connect(endpoint)
        await asyncio.sleep(0.2)

        async def one() -> None:
            future: asyncio.Future[list[Any]] = loop.create_future()
            waiting.append(future)
            channel.send(wire.encode({"op": "infer", "id": 1}, [("x", TENSOR)], files))
            header, message = wire.decode(await future)
            wire.unpack(header, message, files)

        result = await _timed_async(calls, one)
        channel.close()
        context.term()
        return result

    return uvloop.run(main())


def unix_wire(path: str, calls: int) -> float:
    """The same messages over a Unix stream socket, each prefixed with its length."""
    files = _files()

    class Client(asyncio.Protocol):
        future: asyncio.Future[bytes] | None = None

        def data_received(self, data: bytes) -> None:  # one small answer arrives whole here
            if self.future is not None:
                self.future.set_result(data[_SIZE.size :])

    async def main() -> float:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_unix_connection(Client, path)

        async def one() -> None:
            protocol.future = loop.create_future()
            body = b"".join(wire.encode({"op": "infer", "id": 1}, [("x", TENSOR)], files))
            transport.write(_SIZE.pack(len(body)) + body)
            header, message = wire.decode([await protocol.future])
            wire.unpack(header, message, files)

        result = await _timed_async(calls, one)
        transport.close()
        return result

    return uvloop.run(main())


def engine_round_trip(calls: int) -> float:
    """EngineClient.infer -> an engine process -> Identity -> back."""
    with tempfile.TemporaryDirectory(prefix="tg-") as run, tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "models"
        config = 'placement = "engine"\n[onnx]\nintra_op_threads = 1\n'
        write_model(repo, "tiny", 1, identity("FP32", ["batch", 16]), config)
        role = HostRole("engine-cpu", Path(run), 1)
        command = [sys.executable, "-m", "gateway", "serve", "--repository", str(repo), "--port", str(free_port()),
                   "--state-dir", str(Path(scratch) / "state"), "--log-level", "warning"]  # fmt: skip
        engine = subprocess.Popen(command, env={**os.environ, **role.environ()}, cwd=ROOT, start_new_session=True)

        async def main() -> float:
            engines = Engines(HostRole("worker-0", Path(run), 1), Devices(0, False))
            await engines.start()
            client = engines.clients["cpu"]
            await client.load("tiny", 1, 60)
            inputs = {"INPUT0": np.ones((1, 16), np.float32)}
            result = await _timed_async(calls, lambda: client.infer("tiny", 1, inputs, ["OUTPUT0"], batched=False))
            await engines.close()
            return result

        try:
            return uvloop.run(main())
        finally:
            os.killpg(engine.pid, signal.SIGTERM)
            engine.wait(timeout=30)


def main() -> None:
    """Print one row per channel."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    spawn = multiprocessing.get_context("spawn")
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="tg-") as run:
        endpoint = f"ipc://{run}/echo.sock"
        echo = spawn.Process(target=_zmq_echo, args=(endpoint,))
        echo.start()
        try:
            time.sleep(0.5)
            rows.append(("pyzmq zmq.asyncio DEALER (uvloop)", zmq_asyncio(endpoint, args.calls)))
            rows.append(("pyzmq blocking DEALER", zmq_blocking(endpoint, args.calls)))
            for frames in (1, 2, 3):
                rows.append(
                    (f"pyzmq from the loop's reader, {frames} frame(s)", zmq_loop(endpoint, args.calls, frames))
                )
            rows.append(("the engine's messages (wire.py) over that channel", zmq_wire(endpoint, args.calls)))
        finally:
            echo.kill()
        path = f"{run}/echo-unix.sock"
        unix = spawn.Process(target=_unix_echo, args=(path,))
        unix.start()
        try:
            deadline = time.monotonic() + 30
            while not Path(path).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            rows.append(("Unix stream socket, asyncio Protocol (uvloop)", unix_socket(path, args.calls)))
            rows.append(("the engine's messages over that socket", unix_wire(path, args.calls)))
        finally:
            unix.kill()
    rows.append(("EngineClient -> engine -> Identity -> back", engine_round_trip(args.calls)))
    print("| channel | round trip p50 us |\n|---|---|")
    for name, micros in rows:
        print(f"| {name} | {micros:.1f} |")


if __name__ == "__main__":
    main()
