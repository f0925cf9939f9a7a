"""The dynamic batcher: merging, exact splitting, bounded queues, deadlines, priorities, failures."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.batching.batcher import Batcher
from gateway.batching.clock import FakeClock
from gateway.batching.policy import ComputeTimes, DelayPolicy
from gateway.batching.queue import PendingRequest, RequestQueue
from gateway.errors import ClientDisconnected, DeadlineExceeded, Unavailable
from gateway.stats import VersionStats
from runtimes.base import InferenceFailedError, InvalidInputError
from runtimes.devices import Devices
from runtimes.executor import Executor
from runtimes.onnxrt import OnnxOptions, OnnxRuntime
from runtimes.warmup import CostModel
from tests.gated import GatedRuntime
from tests.onnx_models import gather_lookup, identity, write_model

pytestmark = pytest.mark.anyio


# -- the queue and the policy, with no event loop or clock ------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    new = asyncio.new_event_loop()
    yield new
    new.close()


def pending(loop: asyncio.AbstractEventLoop, rows: int, key: str = "a", priority: int = 1) -> PendingRequest:
    return PendingRequest({}, (), rows, key, priority, 0.0, None, loop.create_future())


def test_queue_takes_by_priority_then_age_and_only_compatible_rows(loop: asyncio.AbstractEventLoop) -> None:
    queue = RequestQueue(levels=2)
    low1, low2 = pending(loop, 1, priority=2), pending(loop, 2, priority=2)
    high, other, big = pending(loop, 1), pending(loop, 1, "b"), pending(loop, 5)
    for request in (low1, low2, high, other, big):
        queue.push(request)
    assert queue.size == 5
    assert queue.head() is high
    assert queue.rows_ready("a", 4) == 4  # high (1) + low1 (1) + low2 (2); big does not fit
    batch = queue.take("a", 4)
    assert batch == [high, low1, low2]
    assert queue.size == 2 and queue.head() is other
    assert queue.take("b", 4) == [other]
    assert queue.head() is big
    assert queue.take("a", 4) == []  # big needs 5 rows


def test_queue_discard_is_exact_and_idempotent(loop: asyncio.AbstractEventLoop) -> None:
    queue = RequestQueue(levels=1)
    a, b = pending(loop, 1), pending(loop, 1)
    queue.push(a)
    queue.push(b)
    assert queue.discard(a) and not queue.discard(a)
    assert queue.size == 1 and queue.head() is b
    assert queue.drain() == [b] and queue.size == 0


def fixed_policy(
    delay_s: float | None,
    max_batch: int = 8,
    preferred: tuple[int, ...] = (),
    target: float = 0.0,
    cost: Callable[[int], float] = lambda rows: rows * 1e-3,
    busy: Callable[[], bool] = lambda: False,
) -> DelayPolicy:
    return DelayPolicy(
        max_batch_size=max_batch,
        preferred_batch_sizes=preferred,
        delay_s=delay_s,
        target_p99_s=target,
        compute=ComputeTimes(cost),
        busy=busy,
    )


def test_fixed_delay_counts_from_the_oldest_request() -> None:
    policy = fixed_policy(0.010)
    assert policy.wait_s(oldest_enqueued=100.0, now=100.004, rows_ready=3) == pytest.approx(0.006)
    assert policy.wait_s(100.0, 100.011, 3) < 0
    assert policy.wait_s(100.0, 100.001, 8) == 0.0  # full: go at once


def test_preferred_size_dispatches_early() -> None:
    policy = fixed_policy(0.010, max_batch=32, preferred=(4, 16, 64))
    assert policy.full_rows == 16
    assert policy.wait_s(0.0, 0.0, 16) == 0.0 and policy.wait_s(0.0, 0.0, 15) > 0


def test_auto_never_waits_and_caps_rows_by_the_p99_target() -> None:
    policy = fixed_policy(None, max_batch=64, target=0.020)  # 1 ms per row predicted
    assert policy.wait_s(0.0, 0.0, 1) == 0.0
    assert policy.max_rows(oldest_enqueued=0.0, now=0.0) == 16  # 64 -> 32 -> 16 (16 ms <= 20 ms)
    assert policy.max_rows(0.0, 0.015) == 4  # 5 ms left
    assert policy.max_rows(0.0, 0.5) == 1  # always at least one row
    assert fixed_policy(None, max_batch=64).max_rows(0.0, 0.0) == 64  # no target: no cap


def test_a_cpu_bound_auto_waits_for_rows_while_they_keep_coming() -> None:
    busy = [True]
    policy = fixed_policy(None, max_batch=64, busy=lambda: busy[0])  # 1 ms per row: 64 ms for a full batch
    policy.arrived(9.99)
    policy.arrived(10.0)  # requests 10 ms apart; the oldest (10.0) waited for the instance, free at 10.005
    assert policy.wait_s(oldest_enqueued=10.0, now=10.01, rows_ready=2, free_since=10.005) == pytest.approx(0.01)
    policy.arrived(10.015)  # another came: hold on, up to twice the usual gap (now 11 ms) after it
    assert policy.wait_s(10.0, 10.02, 3, 10.005) == pytest.approx(0.017)
    assert policy.wait_s(10.0, 10.04, 3, 10.005) < 0  # none since: go
    assert policy.wait_s(10.0, 10.02, 64, 10.005) == 0.0  # full: go at once
    assert policy.wait_s(10.016, 10.017, 1, 10.005) == 0.0  # it came to an idle instance: nobody else is coming
    assert policy.wait_s(10.0, 10.02, 3) == 0.0  # no instance freed yet
    busy[0] = False
    assert policy.wait_s(10.0, 10.02, 3, 10.005) == 0.0  # CPU to spare: natural batching
    steady = fixed_policy(None, max_batch=64, busy=lambda: True)
    for i in range(200):  # a request every 0.1 ms, up to 10.0199
        steady.arrived(10.0 + i * 1e-4)
    # They keep coming: the bound is a full batch's compute (64 ms) from the free instance (9.955).
    assert steady.wait_s(9.95, 10.0185, 40, 9.955) == pytest.approx(0.0005)
    capped = fixed_policy(None, max_batch=64, target=0.080, busy=lambda: True)  # 80 - 64 ms leaves 16
    for i in range(200):
        capped.arrived(10.0 + i * 1e-4)
    assert capped.wait_s(9.99, 10.0, 3, 9.995) == pytest.approx(0.011)
    assert fixed_policy(0.002, busy=lambda: True).wait_s(10.0, 10.001, 3, 10.0005) == pytest.approx(0.001)  # fixed


def test_cpu_busy_compares_the_process_cpu_with_its_share_over_the_last_interval() -> None:
    from gateway.batching.cpu import CpuBusy

    wall, cpu = [100.0], [5.0]
    probe = CpuBusy(2.0, threshold=0.75, interval_s=0.1, cpu_clock=lambda: cpu[0], clock=lambda: wall[0])
    assert not probe()
    wall[0], cpu[0] = 100.2, 5.32  # 0.32 s of CPU in 0.2 s: 1.6 of 2 CPUs >= 1.5
    assert probe()
    wall[0], cpu[0] = 100.25, 5.32  # within the interval: the last answer stands
    assert probe()
    wall[0], cpu[0] = 100.4, 5.5  # 0.18 s in 0.2 s: 0.9 of 2
    assert not probe()
    wall[0], cpu[0] = 110.4, 6.9  # a long idle stretch since the last call counts in
    assert not probe()


def test_compute_times_learn_per_batch_size() -> None:
    times = ComputeTimes(lambda rows: 1.0)
    assert times.predict(8) == 1.0
    times.observe(8, 0.008)
    times.observe(8, 0.010)
    assert times.predict(8) == pytest.approx(0.0084)
    assert times.predict(16) == pytest.approx(0.0168)  # scaled from the nearest observed size


# -- the batcher on a real ONNX Runtime session -----------------------------------------------


@pytest.fixture
def runtime(tmp_path: Path) -> GatedRuntime:
    path = write_model(tmp_path, "m", 1, identity("FP32", ["batch", "width"]))
    return GatedRuntime(OnnxRuntime.load(path, OnnxOptions(), Devices(0, False)))


def make_batcher(
    runtime: GatedRuntime,
    *,
    max_batch: int = 8,
    delay_s: float | None = 0.002,
    max_queue: int = 1000,
    levels: int = 1,
    instances: int = 1,
    timeout_s: float = 0.0,
    failures: list[BaseException] | None = None,
    stats: VersionStats | None = None,
    clock: FakeClock | None = None,
    busy: Callable[[], bool] = lambda: False,
) -> Batcher:
    # inline_threshold 0: every batch runs in a thread, so a held gate never blocks the loop.
    executor = Executor(
        runtime, concurrency=instances, inline_threshold_s=0.0, cost=CostModel(1e-3, 0.0, 4), name="test"
    )
    batcher = Batcher(
        executor,
        fixed_policy(delay_s, max_batch, busy=busy),
        stats or VersionStats(),
        name="test",
        max_queue_size=max_queue,
        priority_levels=levels,
        instance_count=instances,
        default_timeout_s=timeout_s,
        on_failure=(failures if failures is not None else []).append,
        clock=clock,
    )
    batcher.start()
    return batcher


def rows_of(value: float, rows: int, width: int = 4) -> np.ndarray:
    return np.full((rows, width), value, dtype=np.float32)


async def until(condition: Callable[[], bool], turns: int = 10_000) -> None:
    """Let the event loop run until ``condition`` holds (no wall-clock sleep)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def wait_entered(runtime: GatedRuntime) -> None:
    await asyncio.to_thread(runtime.wait_entered)


async def occupy(batcher: Batcher, runtime: GatedRuntime, value: float = 1.0) -> asyncio.Future[list[np.ndarray]]:
    """Hold the gate and start one request: it runs (held), so the instance is busy."""
    runtime.hold()
    first = asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(value, 1)}, ["OUTPUT0"], 1))
    await wait_entered(runtime)
    return first


async def test_concurrent_requests_are_merged_and_each_gets_exactly_its_rows(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=16, delay_s=0.005)
    rng = random.Random(5)
    payloads = [rows_of(i + 0.5, rng.randint(1, 3)) for i in range(300)]
    results = await asyncio.gather(*(batcher.submit({"INPUT0": p}, ["OUTPUT0"], len(p)) for p in payloads))
    for payload, (output,) in zip(payloads, results, strict=True):
        assert np.array_equal(output, payload)
    sizes = runtime.rows_per_call()
    assert sum(sizes) == sum(len(p) for p in payloads)
    assert max(sizes) > 1 and max(sizes) <= 16
    assert len(sizes) < len(payloads) / 3
    await batcher.close()


async def test_different_trailing_shapes_are_never_merged(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=32, delay_s=0.005)
    payloads = [rows_of(i, 1, width=4 if i % 2 else 6) for i in range(40)]
    results = await asyncio.gather(*(batcher.submit({"INPUT0": p}, ["OUTPUT0"], 1) for p in payloads))
    for payload, (output,) in zip(payloads, results, strict=True):
        assert np.array_equal(output, payload)
    for call in runtime.calls:
        assert len({call["INPUT0"].shape[1]}) == 1
    await batcher.close()


async def test_a_full_queue_refuses_exactly_the_excess(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=1, delay_s=0.0, max_queue=2)
    first = await occupy(batcher, runtime, 0)  # the first request runs (held): it no longer waits
    rest = [asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(i, 1)}, ["OUTPUT0"], 1)) for i in range(1, 11)]
    await asyncio.sleep(0)
    refused = [t for t in rest if t.done() and isinstance(t.exception(), Unavailable)]
    assert len(refused) == 8
    assert "queue is full" in str(refused[0].exception())
    assert refused[0].exception().headers["Retry-After"]  # type: ignore[union-attr]
    runtime.release()
    served = await asyncio.gather(first, *(t for t in rest if t not in refused))
    assert len(served) == 3
    await batcher.close()


async def test_a_deadline_that_passes_while_queued_is_504_and_never_computed(runtime: GatedRuntime) -> None:
    clock = FakeClock()
    batcher = make_batcher(runtime, max_batch=1, delay_s=0.0, timeout_s=10.0, clock=clock)
    first = await occupy(batcher, runtime, 1)
    # The request may shorten the model's 10 s timeout to 50 ms ...
    late = asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(2, 1)}, ["OUTPUT0"], 1, timeout_s=0.05))
    await until(lambda: batcher.queued == 1)
    clock.advance(0.0499)
    await asyncio.sleep(0)
    assert not late.done()  # not a moment early
    clock.advance(0.0001)
    with pytest.raises(DeadlineExceeded, match="deadline of 50 ms"):
        await late
    assert batcher.queued == 0
    runtime.release()
    await first
    await batcher.close()
    assert [float(c["INPUT0"][0, 0]) for c in runtime.calls] == [1.0]


async def test_a_request_cannot_extend_the_model_timeout(runtime: GatedRuntime) -> None:
    clock = FakeClock()
    batcher = make_batcher(runtime, max_batch=1, delay_s=0.0, timeout_s=0.05, clock=clock)
    first = await occupy(batcher, runtime, 1)
    late = asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(2, 1)}, ["OUTPUT0"], 1, timeout_s=60.0))
    await until(lambda: batcher.queued == 1)
    clock.advance(0.05)
    with pytest.raises(DeadlineExceeded, match="deadline of 50 ms"):
        await late
    runtime.release()
    await first
    await batcher.close()


class Waiting:
    """A client whose departure can only be awaited (as with a plain ASGI server)."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    def gone(self) -> bool | None:
        return None

    async def wait_gone(self) -> None:
        await self.event.wait()


class Flagged:
    """A client whose departure is a flag the batcher can read (as with uvicorn)."""

    def __init__(self, flags: dict[str, bool], name: str) -> None:
        self.flags, self.name = flags, name

    def gone(self) -> bool | None:
        return self.flags[self.name]

    async def wait_gone(self) -> None:
        raise AssertionError("a flagged client is never awaited")


async def test_a_client_that_leaves_while_queued_is_removed_before_its_batch(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=1, delay_s=0.0)
    first = await occupy(batcher, runtime, 1)
    gone = asyncio.Event()
    leaving = asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(2, 1)}, ["OUTPUT0"], 1, client=Waiting(gone)))
    cancelled = asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(3, 1)}, ["OUTPUT0"], 1))
    await until(lambda: batcher.queued == 2)
    gone.set()
    cancelled.cancel()
    with pytest.raises(ClientDisconnected):
        await leaving
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert batcher.queued == 0
    runtime.release()
    await first
    await batcher.submit({"INPUT0": rows_of(4, 1)}, ["OUTPUT0"], 1)
    assert [float(c["INPUT0"][0, 0]) for c in runtime.calls] == [1.0, 4.0]
    await batcher.close()


async def test_a_gone_client_found_by_probe_is_withdrawn_without_a_task(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=1, delay_s=0.0, max_queue=2)
    first = await occupy(batcher, runtime, 1)
    gone = {"a": False, "b": False}
    tasks = {
        name: asyncio.ensure_future(
            batcher.submit({"INPUT0": rows_of(value, 1)}, ["OUTPUT0"], 1, client=Flagged(gone, name))
        )
        for name, value in (("a", 2.0), ("b", 3.0))
    }
    await until(lambda: batcher.queued == 2)
    gone["a"] = True
    # The queue is full (2), but a gone client's place is given to the newcomer.
    newcomer = asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(4, 1)}, ["OUTPUT0"], 1))
    with pytest.raises(ClientDisconnected):
        await tasks["a"]
    gone["b"] = True  # found when the next batch forms
    runtime.release()
    await first
    await newcomer
    with pytest.raises(ClientDisconnected):
        await tasks["b"]
    assert [float(c["INPUT0"][0, 0]) for c in runtime.calls] == [1.0, 4.0]
    await batcher.close()


async def test_a_refused_batch_is_retried_one_by_one(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=8, delay_s=0.05)
    runtime.fail_next = True  # the batch's call fails; each member alone succeeds
    outcomes = await asyncio.gather(*(batcher.submit({"INPUT0": rows_of(i, 1)}, ["OUTPUT0"], 1) for i in range(5)))
    assert runtime.rows_per_call() == [5, 1, 1, 1, 1, 1]
    assert [float(o[0][0, 0]) for o in outcomes] == [0, 1, 2, 3, 4]


async def test_an_error_every_member_causes_reaches_every_member(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=8, delay_s=0.05)
    runtime.fail_always = True
    outcomes = await asyncio.gather(
        *(batcher.submit({"INPUT0": rows_of(i, 1)}, ["OUTPUT0"], 1) for i in range(5)), return_exceptions=True
    )
    assert runtime.rows_per_call() == [5, 1, 1, 1, 1, 1]  # bounded: one retry per member
    assert all(isinstance(o, InferenceFailedError) for o in outcomes)
    runtime.fail_always = False
    (after,) = await batcher.submit({"INPUT0": rows_of(9, 1)}, ["OUTPUT0"], 1)  # the batcher lives on
    assert after[0, 0] == 9
    await batcher.close()


async def test_a_refused_batch_is_not_retried_past_a_deadline(runtime: GatedRuntime) -> None:
    clock = FakeClock()
    batcher = make_batcher(runtime, max_batch=8, delay_s=0.02, timeout_s=0.3, clock=clock)
    runtime.hold()
    runtime.fail_next = True
    calls = [asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(i, 1)}, ["OUTPUT0"], 1)) for i in range(3)]
    await until(lambda: batcher.queued == 3 and clock.pending() >= 4)  # three deadlines and the delay
    clock.advance(0.02)  # the delay is up: the batch of three computes (held)
    await wait_entered(runtime)
    clock.advance(0.4)  # it computes past every member's deadline, then fails
    runtime.release()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, DeadlineExceeded) for o in outcomes)
    assert runtime.rows_per_call() == [3]  # nobody was computed again
    await batcher.close()


@pytest.fixture
def lookup(tmp_path: Path) -> Iterator[Batcher]:
    path = write_model(tmp_path, "lookup", 1, gather_lookup(10))
    runtime = OnnxRuntime.load(path, OnnxOptions(), Devices(0, False))
    executor = Executor(runtime, concurrency=1, inline_threshold_s=0.0, cost=CostModel(1e-3, 0.0, 4), name="lookup")
    yield Batcher(
        executor,
        fixed_policy(0.05, 8),
        VersionStats(),
        name="lookup",
        max_queue_size=100,
        priority_levels=1,
        instance_count=1,
        default_timeout_s=0.0,
        on_failure=lambda exc: None,
    )


async def test_only_the_culprit_of_a_batch_onnx_runtime_refuses_gets_the_error(lookup: Batcher) -> None:
    lookup.start()
    # Valid by shape and type; index 99 is outside the table: ONNX Runtime refuses the whole call.
    rows = [[0, 1, 2, 3], [4, 5, 6, 7], [1, 2, 3, 99], [9, 9, 9, 9], [0, 0, 0, 0]]
    outcomes = await asyncio.gather(
        *(lookup.submit({"INPUT0": np.array([r], dtype=np.int64)}, ["OUTPUT0"], 1) for r in rows),
        return_exceptions=True,
    )
    culprit = outcomes.pop(2)
    assert isinstance(culprit, InvalidInputError) and "idx=99" in str(culprit)
    for row, outcome in zip(rows[:2] + rows[3:], outcomes, strict=True):
        assert not isinstance(outcome, BaseException), outcome
        assert outcome[0].tolist() == [[v / 2 for v in row]]
    await lookup.close()


async def test_higher_priority_is_batched_first(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=1, delay_s=0.0, levels=3)
    first = await occupy(batcher, runtime, 0)
    order = [(10, 0), (11, 3), (12, 2), (13, 1), (14, 2)]  # (payload, priority); 0 = the lowest level
    tasks = [
        asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(v, 1)}, ["OUTPUT0"], 1, priority=p)) for v, p in order
    ]
    await until(lambda: batcher.queued == 5)
    runtime.release()
    await asyncio.gather(first, *tasks)
    assert [float(c["INPUT0"][0, 0]) for c in runtime.calls] == [0, 13, 12, 14, 10, 11]
    await batcher.close()


async def test_a_lone_request_waits_out_the_delay(runtime: GatedRuntime) -> None:
    clock = FakeClock(1024.0)
    # Binary fractions (1/16 s, 1/1024 s): the sums are exact, so the delay ends exactly at the tick.
    batcher = make_batcher(runtime, max_batch=4, delay_s=2**-4, clock=clock)
    lone = asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(1, 1)}, ["OUTPUT0"], 1))
    await until(lambda: clock.pending() == 1)  # the batch loop waits on its delay timer
    clock.advance(2**-4 - 2**-10)
    for _ in range(100):
        await asyncio.sleep(0)
    assert not lone.done() and not runtime.calls
    clock.advance(2**-10)
    (output,) = await lone
    assert output[0, 0] == 1 and runtime.rows_per_call() == [1]
    await batcher.close()


async def test_a_full_batch_does_not_wait_for_the_delay(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=4, delay_s=600.0)  # waiting would time the test out
    batch = asyncio.gather(*(batcher.submit({"INPUT0": rows_of(i, 1)}, ["OUTPUT0"], 1) for i in range(4)))
    await asyncio.wait_for(batch, 30)
    assert runtime.rows_per_call() == [4]
    await batcher.close()


async def test_auto_delay_dispatches_at_once_when_an_instance_is_free(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=8, delay_s=None)
    first = await occupy(batcher, runtime, 0)  # went alone, at once
    rest = [asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(i, 1)}, ["OUTPUT0"], 1)) for i in range(1, 6)]
    await until(lambda: batcher.queued == 5)
    runtime.release()
    await asyncio.gather(first, *rest)
    assert runtime.rows_per_call() == [1, 5]  # the rest piled up while the instance was busy
    await batcher.close()


async def test_a_cpu_bound_auto_batch_waits_for_rows_and_goes_when_full(runtime: GatedRuntime) -> None:
    clock = FakeClock(1024.0)
    batcher = make_batcher(runtime, max_batch=4, delay_s=None, clock=clock, busy=lambda: True)

    async def submit(value: float, gap: float = 2**-9) -> asyncio.Future[list[np.ndarray]]:
        clock.advance(gap)  # requests 2 ms apart unless told
        before = batcher.queued
        future = asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(value, 1)}, ["OUTPUT0"], 1))
        await until(lambda: batcher.queued != before)  # queued at this time (or taken at once)
        return future

    # A request that finds the instance idle runs at once, CPU-bound or not (one client at a time).
    (output,) = await batcher.submit({"INPUT0": rows_of(5, 1)}, ["OUTPUT0"], 1)
    assert output[0, 0] == 5 and runtime.rows_per_call() == [1]
    # Two wait for a busy instance; when it frees, requests are still coming: wait for them.
    first = await occupy(batcher, runtime, 0)
    waiting = [await submit(1), await submit(2)]
    await until(lambda: batcher.queued == 2)
    clock.advance(2**-10)  # the running call ends 1 ms after the last arrival
    runtime.release()
    await first
    await until(lambda: clock.pending() == 1)  # held on a timer, not dispatched
    assert runtime.rows_per_call() == [1, 1]
    late = [await submit(3, 2**-10), await submit(4, 2**-10)]  # within the hold
    await asyncio.gather(*waiting, *late)  # the fourth row fills the batch: it goes before the timer
    assert runtime.rows_per_call() == [1, 1, 4]
    await batcher.close()
    # Two waiting, then nobody: they go once twice the usual gap has passed without an arrival
    # (a new batcher: the one above learned that 4 rows take 0 s on this clock).
    batcher = make_batcher(runtime, max_batch=4, delay_s=None, clock=clock, busy=lambda: True)
    first = await occupy(batcher, runtime, 0)
    waiting = [await submit(6), await submit(7)]
    await until(lambda: batcher.queued == 2)
    clock.advance(2**-10)
    runtime.release()
    await first
    await until(lambda: clock.pending() == 1)
    for _ in range(100):
        await asyncio.sleep(0)
    assert runtime.rows_per_call() == [1, 1, 4, 1]  # still held
    clock.advance(2**-8)  # 4 ms: past twice the gap
    outputs = await asyncio.gather(*waiting)
    assert [o[0][0, 0] for o in outputs] == [6, 7] and runtime.rows_per_call() == [1, 1, 4, 1, 2]
    await batcher.close()


async def test_a_cpu_bound_hold_never_keeps_a_request_past_its_deadline(runtime: GatedRuntime) -> None:
    clock = FakeClock(1024.0)
    batcher = make_batcher(runtime, max_batch=4, delay_s=None, clock=clock, busy=lambda: True)
    first = await occupy(batcher, runtime, 0)
    waiting = []
    for value in (1.0, 2.0):  # 2 ms apart, each with a 6 ms deadline
        clock.advance(2**-9)
        before = batcher.queued
        waiting.append(
            asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(value, 1)}, ["OUTPUT0"], 1, timeout_s=0.006))
        )
        await until(lambda before=before: batcher.queued != before)
    clock.advance(2**-10)  # the running call took 5 ms: 2 rows are predicted to take 10
    runtime.release()
    await first
    # Held, the head would miss its deadline (it has 3 ms left): the two go at once, no clock moved.
    outputs = await asyncio.wait_for(asyncio.gather(*waiting), 30)
    assert [o[0][0, 0] for o in outputs] == [1, 2] and runtime.rows_per_call() == [1, 2]
    await batcher.close()


async def test_if_the_loop_dies_every_waiting_request_fails_cleanly(runtime: GatedRuntime) -> None:
    failures: list[BaseException] = []
    batcher = make_batcher(runtime, max_batch=1, delay_s=0.0, failures=failures)
    first = await occupy(batcher, runtime, 0)
    waiting = asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(1, 1)}, ["OUTPUT0"], 1))
    await until(lambda: batcher.queued == 1)

    def broken(*args: object) -> None:
        raise RuntimeError("bug in batch formation")

    batcher._queue.take = broken  # type: ignore[method-assign]  # the next batch formation crashes
    runtime.release()
    await first
    with pytest.raises(Unavailable, match="batcher stopped"):
        await waiting
    assert len(failures) == 1 and "bug in batch formation" in repr(failures[0])
    with pytest.raises(Unavailable):
        await batcher.submit({"INPUT0": rows_of(2, 1)}, ["OUTPUT0"], 1)
    await batcher.close()


async def test_statistics_count_requests_and_executions(runtime: GatedRuntime) -> None:
    stats = VersionStats()
    batcher = make_batcher(runtime, max_batch=8, delay_s=0.05, stats=stats)
    await asyncio.gather(*(batcher.submit({"INPUT0": rows_of(i, 2)}, ["OUTPUT0"], 2) for i in range(4)))
    assert stats.execution_count == 1 and stats.queue.count == 4
    assert list(stats.batches) == [8] and stats.compute_infer.count == 4
    doc = stats.to_triton("m", "1")
    assert doc["batch_stats"][0]["batch_size"] == 8 and doc["batch_stats"][0]["compute_infer"]["count"] == 1
    await batcher.close()


async def test_drain_waits_for_queued_and_running_batches(runtime: GatedRuntime) -> None:
    batcher = make_batcher(runtime, max_batch=1, delay_s=0.0)
    first = await occupy(batcher, runtime, 1)
    queued = [asyncio.ensure_future(batcher.submit({"INPUT0": rows_of(v, 1)}, ["OUTPUT0"], 1)) for v in (2, 3)]
    await until(lambda: batcher.queued == 2)
    drained = asyncio.ensure_future(batcher.drain())
    await asyncio.sleep(0.05)  # drain polls on the loop's clock: give it a few rounds
    assert not drained.done()  # a batch runs (held) and two wait
    runtime.release()
    await asyncio.wait_for(drained, 10)
    assert [r[0][0, 0] for r in await asyncio.gather(first, *queued)] == [1, 2, 3]
    await batcher.close()
