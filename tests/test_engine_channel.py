"""The engine's channel over real ZeroMQ sockets: after a turn's first message, the rest to one peer leave as one."""

from __future__ import annotations

import asyncio
import tempfile
from functools import partial
from typing import Any

import numpy as np
import zmq

from gateway.engine import wire
from gateway.engine.channel import Channel

#: Generous: a loaded 2-core CI machine.
WAIT_S = 30.0


def _files() -> wire.SharedFiles:
    return wire.SharedFiles("tg-test-channel")


Inbox = asyncio.Queue[list[Any]]


async def _pair(endpoint: str) -> tuple[zmq.Context[Any], Channel, Inbox, Channel, Inbox]:
    """A DEALER channel connected to a ROUTER channel; what each receives lands in its queue."""
    context: zmq.Context[Any] = zmq.Context()
    received: Inbox = asyncio.Queue()
    back: Inbox = asyncio.Queue()
    router = context.socket(zmq.ROUTER)
    router.bind(endpoint)
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"w0")
    dealer.connect(endpoint)
    return context, Channel(dealer, back.put_nowait), back, Channel(router, received.put_nowait), received


def test_messages_posted_in_one_turn_go_as_one_zeromq_message_in_order() -> None:
    files = _files()

    async def scenario() -> None:
        with tempfile.TemporaryDirectory(prefix="tg-") as run:
            context, dealer, back, router, received = await _pair(f"ipc://{run}/c.sock")
            try:
                # Connected first: the very first send must not race the connection.
                dealer.send([wire.dumps({"op": "hello"})])
                first = await asyncio.wait_for(received.get(), WAIT_S)
                assert [h["op"] for h, _ in wire.decode_all(first[1:])] == ["hello"]

                big = np.arange(20_000, dtype=np.float32).reshape(2, 10_000)  # 80 KB: frames of its own
                for i in range(3):
                    dealer.post(wire.encode({"op": "infer", "id": i}, [("x", np.full((1, 4), i, np.float32))], files))
                dealer.post(wire.encode({"op": "infer", "id": 3}, [("big", big)], files))
                dealer.post([wire.dumps({"op": "cancel", "id": 0})])
                assert received.empty()  # nothing left before the end of the turn

                messages = [await asyncio.wait_for(received.get(), WAIT_S) for _ in range(4)]
                assert received.empty()
                assert [m[0].bytes for m in messages] == [b"w0"] * 4
                # The turn's first at once | the next two joined | a record + its tensor frame | the last.
                assert [len(m) for m in messages] == [2, 2, 3, 2]
                assert [len(wire.decode_all(m[1:])) for m in messages] == [1, 2, 1, 1]
                records = [record for m in messages for record in wire.decode_all(m[1:])]
                assert [h["id"] for h, _ in records] == [0, 1, 2, 3, 0]
                assert [h["op"] for h, _ in records][-1] == "cancel"
                for header, message in records[:3]:
                    array = wire.unpack(header, message, files)["x"]
                    assert array.flags.aligned
                    np.testing.assert_array_equal(array, np.full((1, 4), header["id"], np.float32))
                header, message = records[3]
                np.testing.assert_array_equal(wire.unpack(header, message, files)["big"], big)

                # Replies, routed by the identity: the first at once, the rest of the turn joined.
                for i in range(3):
                    router.post([wire.dumps({"id": i, "ok": True})], b"w0")
                replies = [await asyncio.wait_for(back.get(), WAIT_S) for _ in range(2)]
                assert [[h["id"] for h, _ in wire.decode_all(m)] for m in replies] == [[0], [1, 2]]
            finally:
                dealer.close()
                router.close()
                context.term()

    asyncio.run(scenario())


def test_a_message_that_cannot_go_calls_its_failure_callbacks() -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory(prefix="tg-") as run:
            context: zmq.Context[Any] = zmq.Context()
            socket = context.socket(zmq.DEALER)
            socket.setsockopt(zmq.IMMEDIATE, 1)  # no peer: a send is refused at once
            socket.connect(f"ipc://{run}/nobody.sock")
            channel = Channel(socket, lambda _: None)
            failed: list[int] = []
            all_failed = asyncio.Event()

            def fail(i: int) -> None:
                failed.append(i)
                if len(failed) == 3:
                    all_failed.set()

            try:
                for i in range(3):
                    channel.post([wire.dumps({"id": i})], on_fail=partial(fail, i))
                assert failed == [0]  # the turn's first was tried at once; the others at the end of the turn
                await asyncio.wait_for(all_failed.wait(), WAIT_S)
                assert failed == [0, 1, 2]
            finally:
                channel.close()
                context.term()

    asyncio.run(scenario())
