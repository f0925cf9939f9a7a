"""Where decoding a request body should leave the event loop: gateway.inference.DECODE_INLINE_BYTES.

For JSON bodies of growing size, prints the time ``decode_request`` takes (JSON parse and
list-to-numpy conversion, best of a few runs), the cost of a hop to a worker thread
(``asyncio.to_thread`` on uvloop, median) and, with the decode run inline and in a thread, the
longest the event loop went without running (a 1 ms ticker's worst lateness).

    python loadtests/decode_threshold.py

No server, no network: one process, so it runs anywhere in a few seconds. Prints Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

import orjson
import uvloop

from gateway.protocol.codec import decode_request
from runtimes.base import TensorSpec

SPECS = {"INPUT0": TensorSpec("INPUT0", "FP32", (-1, -1))}


def body(elements: int) -> bytes:
    """A V2 JSON request with one FP32 tensor of ``elements`` numbers."""
    data = [0.5 + i % 7 for i in range(elements)]
    return orjson.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, elements], "data": data}]})


def decoder(raw: bytes) -> Callable[[], object]:
    return lambda: decode_request(raw, None, SPECS, ["OUTPUT0"], model_name="m")


def best_time(call: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


async def hop_cost(samples: int = 2000) -> float:
    """The median round trip of an empty call through ``asyncio.to_thread``."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        await asyncio.to_thread(int)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def worst_stall(call: Callable[[], object], threaded: bool) -> float:
    """The longest the loop was kept from a 1 ms ticker while ``call`` ran inline or in a thread."""
    done = asyncio.Event()
    late: list[float] = []

    async def ticker() -> None:
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            late.append(time.perf_counter() - started - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)
    if threaded:
        await asyncio.to_thread(call)
    else:
        call()
    await asyncio.sleep(0.005)
    done.set()
    await task
    return max(late)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, nargs="+", default=[16, 1024, 4096, 16384, 65536, 262144, 1048576])
    parser.add_argument("--runs", type=int, default=5, help="runs per size (best decode, median stall)")
    args = parser.parse_args()
    hop = await hop_cost()
    print(f"thread hop (asyncio.to_thread, uvloop), median: {hop * 1e6:.1f} us\n")
    print("| elements | body bytes | decode ms | ns/byte | hop / decode | stall inline ms | stall in thread ms |")
    print("|---|---|---|---|---|---|---|")
    for elements in args.elements:
        raw = body(elements)
        call = decoder(raw)
        decode = best_time(call, args.runs)
        inline = statistics.median([await worst_stall(call, False) for _ in range(args.runs)])
        threaded = statistics.median([await worst_stall(call, True) for _ in range(args.runs)])
        print(
            f"| {elements:,} | {len(raw):,} | {decode * 1e3:.3f} | {decode / len(raw) * 1e9:.1f} | "
            f"{hop / decode:.1%} | {inline * 1e3:.1f} | {threaded * 1e3:.1f} |"
        )


if __name__ == "__main__":
    uvloop.run(main())
