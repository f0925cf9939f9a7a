"""The background retry of start-up loads (gateway/retry.py), on a real event loop."""

from __future__ import annotations

import asyncio
import random

from gateway.retry import RetryLoop


def test_now_skips_the_pause_and_answers_after_the_attempt() -> None:
    async def scenario() -> None:
        outcomes = [False, False, True]
        calls: list[int] = []
        ended = asyncio.Event()

        async def attempt() -> bool:
            calls.append(len(calls))
            return outcomes[len(calls) - 1]

        # Pauses of 100 s: only now() can make the attempts happen within the test.
        loop = RetryLoop(attempt, max_pause_s=100, first_pause_s=100, rng=random.Random(1), name="t",
                         on_done=ended.set)  # fmt: skip
        loop.start()
        async with asyncio.timeout(10):
            await loop.now()
            assert calls == [0] and loop.running
            await loop.now()
            await loop.now()
            await ended.wait()
        assert calls == [0, 1, 2] and not loop.running and loop.attempts == 3
        await loop.now()  # a finished loop answers at once

    asyncio.run(scenario())


def test_a_failing_attempt_is_retried_and_close_stops_it() -> None:
    async def scenario() -> None:
        calls = 0
        ended = asyncio.Event()

        async def attempt() -> bool:
            nonlocal calls
            calls += 1
            raise RuntimeError("a bug")  # logged, then tried again

        loop = RetryLoop(attempt, max_pause_s=0.02, first_pause_s=0.01, rng=random.Random(1), name="t",
                         on_done=ended.set)  # fmt: skip
        loop.start()
        async with asyncio.timeout(10):
            while calls < 5:
                await asyncio.sleep(0.01)
            await loop.close()
            await ended.wait()
        assert not loop.running
        stopped_at = calls
        await asyncio.sleep(0.1)
        assert calls == stopped_at

    asyncio.run(scenario())
