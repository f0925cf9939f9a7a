"""The dynamic batcher of one model version.

Requests wait in a bounded priority queue. One loop task owns dispatching: when an instance
is free it forms a batch (waiting per the DelayPolicy), takes compatible requests by priority
and age, and runs the batch (in its own task when ``instance_count`` allows several at once).
A batch concatenates its requests' rows, runs them in one runtime call and hands each request
exactly its own rows back. With the "auto" delay, a request that finds an instance idle and
nobody waiting skips the queue and runs at once.

Every request gets a definite answer: its rows, the runtime's error, 503 when the queue is
full, 504 when its deadline passes while queued, or nothing when its client has left (it is
removed from the queue and never computed). If the loop itself ever dies, every pending
request fails with 503 and ``on_failure`` marks the version not ready.

When the model refuses a batch (an input valid by shape that it cannot compute), one
request's values may be to blame: each member is then run once on its own, so only the
culprit gets the error and the others their rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np

from gateway.batching.clock import Clock, LoopClock
from gateway.batching.policy import DelayPolicy
from gateway.batching.queue import ClientWatch, PendingRequest, RequestQueue
from gateway.errors import ClientDisconnected, DeadlineExceeded, InternalError, Unavailable
from gateway.stats import VersionStats
from runtimes.base import InferenceFailedError, InvalidInputError
from runtimes.executor import AnyExecutor

log = logging.getLogger(__name__)


class Batcher:
    """Merges concurrent requests for one version into runtime calls of up to ``max_batch_size`` rows."""

    def __init__(
        self,
        executor: AnyExecutor,
        policy: DelayPolicy,
        stats: VersionStats,
        *,
        name: str,
        max_queue_size: int,
        priority_levels: int,
        instance_count: int,
        default_timeout_s: float,
        on_failure: Callable[[BaseException], None],
        clock: Clock | None = None,
    ) -> None:
        self._executor = executor
        self._policy = policy
        self._stats = stats
        self._name = name
        self._max_queue_size = max_queue_size
        self.priority_levels = priority_levels
        self._default_timeout_s = default_timeout_s
        self._on_failure = on_failure
        clock = clock or LoopClock()
        #: Now and timers on the same clock: a fake one runs the delays and deadlines in tests.
        self._clock = clock.now
        self._call_later = clock.call_later
        self._queue = RequestQueue(priority_levels)
        self._instances = instance_count
        #: Batches (or direct calls) computing right now.
        self._active = 0
        #: When an instance last became free (a CPU-bound "auto" batch holds only requests that waited for it).
        self._freed_at = float("-inf")
        self._slots = asyncio.Semaphore(instance_count)
        self._wakeup = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopped: str | None = None
        self._output_order = [spec.name for spec in executor.runtime.outputs]
        self._input_order = [spec.name for spec in executor.runtime.inputs]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the dispatch loop (on the running event loop)."""
        self._loop_task = asyncio.create_task(self._dispatch_loop(), name=f"batcher-{self._name}")
        self._loop_task.add_done_callback(self._loop_ended)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.size

    async def drain(self, poll_s: float = 0.002) -> None:
        """Wait until nothing waits and no batch runs (callers stop new submissions first)."""
        while self._queue.size or self._active:
            await asyncio.sleep(poll_s)

    async def close(self) -> None:
        """Stop dispatching, fail what still waits (503), and let running batches finish."""
        self._stopped = "the model version is unloading"
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        self._fail_waiting(Unavailable(f"{self._name} is unloading"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopped is not None:
            return
        exc = task.exception() or RuntimeError("the batch loop returned")
        log.error("batcher of %s died: %r", self._name, exc)
        self._stopped = "the batcher stopped"
        self._fail_waiting(Unavailable(f"{self._name} is not available: its batcher stopped", 30))
        self._on_failure(exc)

    def _fail_waiting(self, error: Exception) -> None:
        for request in self._queue.drain():
            self._settle(request, error)

    # -- submitting --------------------------------------------------------------------------

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: Sequence[str],
        rows: int,
        *,
        priority: int = 0,
        timeout_s: float = 0.0,
        client: ClientWatch | None = None,
    ) -> list[np.ndarray]:
        """Queue a request and wait for its rows of the named outputs.

        ``priority`` 1 is the highest, 0 means the lowest level; ``timeout_s`` (0: none) can
        only shorten the model's own timeout. A ``client`` that goes away while the request
        waits makes it leave the queue (ClientDisconnected): where the transport can tell at
        once, it is asked when a batch forms and when the queue is full (no task per request);
        otherwise its ``wait_gone`` is awaited alongside.
        """
        if self._stopped is not None:
            raise Unavailable(f"{self._name} is not available: {self._stopped}")
        if self._queue.size >= self._max_queue_size and not self.withdraw_gone():
            raise Unavailable(f"{self._name}: the queue is full ({self._max_queue_size} requests waiting)")
        timeouts = [t for t in (timeout_s, self._default_timeout_s) if t > 0]
        timeout = min(timeouts) if timeouts else 0.0
        if self._policy.adaptive and not self._queue.size and not self._slots.locked():
            self._policy.arrived(self._clock())  # in the gaps between arrivals too
            return await self._run_now(inputs, outputs, rows, timeout)
        loop = asyncio.get_running_loop()
        now = self._clock()
        # Datatypes are the model's (validated): only the non-batch dims can differ.
        key = tuple(inputs[name].shape[1:] for name in self._input_order)
        request = PendingRequest(
            inputs=inputs,
            outputs=tuple(outputs),
            rows=rows,
            key=key,
            priority=priority or self.priority_levels,
            enqueued=now,
            deadline=now + timeout if timeout else None,
            future=loop.create_future(),
            client=client,
        )
        if timeout:
            request.timer = self._call_later(timeout, partial(self._expire, request, timeout))
        self._queue.push(request)
        self._policy.arrived(now)
        self._wakeup.set()
        watcher = None
        if client is not None and client.gone() is None:
            watcher = asyncio.ensure_future(client.wait_gone())
            watcher.add_done_callback(partial(self._client_left, request))
        try:
            return await request.future
        finally:
            if watcher is not None:
                watcher.cancel()
            if request.timer is not None:
                request.timer.cancel()
            # A cancelled await cancels the future too: "done" alone does not mean answered.
            if self._queue.discard(request) or not request.future.done():
                request.abandoned = True

    async def _run_now(
        self, inputs: dict[str, np.ndarray], outputs: Sequence[str], rows: int, timeout_s: float
    ) -> list[np.ndarray]:
        """An instance is idle and nobody waits: with "auto", this request is the batch, at once.

        It runs in the caller's task, skipping the queue and the hand-offs to and from the
        dispatch loop: at low load, batching costs (almost) nothing.
        """
        await self._slots.acquire()  # free, so this does not suspend
        self._active += 1
        try:
            start = self._clock()
            elements = sum(a.size for a in inputs.values())
            results = await self._executor.run(inputs, outputs, elements, timeout_s or None)
            computed = self._clock()
        finally:
            self._active -= 1
            self._freed_at = self._clock()
            self._slots.release()
        self._policy.compute.observe(rows, computed - start)
        self._stats.execution_done(rows, 0, _ns(computed - start), 0)
        self._stats.queued(0)
        return results

    def withdraw_gone(self) -> int:
        """Withdraw the waiting requests whose clients have gone; how many there were."""
        gone = [r for r in self._queue.waiting() if r.client is not None and r.client.gone()]
        for request in gone:
            self._queue.discard(request)
            self._settle(request, ClientDisconnected())
        return len(gone)

    def _client_left(self, request: PendingRequest, watcher: asyncio.Future[object]) -> None:
        if not watcher.cancelled() and self._queue.discard(request):
            self._settle(request, ClientDisconnected())

    def _expire(self, request: PendingRequest, timeout: float) -> None:
        if self._queue.discard(request):
            self._settle(request, DeadlineExceeded(f"deadline of {timeout * 1e3:g} ms exceeded while queued"))

    @staticmethod
    def _settle(request: PendingRequest, outcome: list[np.ndarray] | Exception) -> None:
        if request.abandoned or request.future.done():
            return
        if isinstance(outcome, Exception):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)

    # -- dispatching -------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            if not self._queue.size:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()  # an instance is free; rows keep arriving meanwhile
            try:
                batch = await self._form_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            if self._instances == 1:
                # Nothing else could be dispatched before this batch ends: run it right here.
                await self._execute(batch)
                continue
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _form_batch(self) -> list[PendingRequest]:
        policy = self._policy
        while True:
            head = self._queue.head()
            if head is None:
                return []
            now = self._clock()
            max_rows = policy.max_rows(head.enqueued, now)
            ready = self._queue.rows_ready(head.key, max_rows)
            # The CPU-bound hold is for one instance: with several, another may be free to take rows.
            wait = policy.wait_s(head.enqueued, now, ready, self._freed_at if self._instances == 1 else None)
            if policy.adaptive and head.deadline is not None:  # never held past what its deadline allows
                wait = min(wait, head.deadline - now - policy.compute.predict(ready))
            if wait <= 0 or ready >= max_rows:
                break
            # Sleep until the delay is up or a request arrives (a timer, not wait_for: no task).
            self._wakeup.clear()
            timer = self._call_later(wait, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()
        batch = self._queue.take(head.key, max_rows)
        live = []
        for request in batch:
            if request.deadline is not None and request.deadline <= now:
                self._settle(request, DeadlineExceeded("deadline exceeded while queued"))
            elif request.client is not None and request.client.gone():
                self._settle(request, ClientDisconnected())
            else:
                live.append(request)
        return live

    def _union_outputs(self, batch: list[PendingRequest]) -> list[str]:
        wanted = {name for request in batch for name in request.outputs}
        return [name for name in self._output_order if name in wanted]

    async def _execute(self, batch: list[PendingRequest]) -> None:
        self._active += 1
        try:
            start = self._clock()
            rows = sum(r.rows for r in batch)
            if len(batch) == 1:
                feed: Mapping[str, np.ndarray] = batch[0].inputs
            else:
                feed = {name: np.concatenate([r.inputs[name] for r in batch]) for name in batch[0].inputs}
            outputs = self._union_outputs(batch)
            elements = sum(a.size for a in feed.values())
            computing = self._clock()
            # A remote runtime gets the batch's tightest deadline (a local one runs to the end).
            deadlines = [r.deadline for r in batch if r.deadline is not None]
            remaining = max(1e-3, min(deadlines) - computing) if deadlines else None
            try:
                results = await self._executor.run(feed, outputs, elements, remaining)
            except (InvalidInputError, InferenceFailedError) as exc:
                if len(batch) > 1 and _member_may_be_at_fault(exc):
                    await self._retry_alone(batch, exc)
                raise  # to whoever is left: the members whose retry did not settle them
            computed = self._clock()
            index = {name: i for i, name in enumerate(outputs)}
            for name, array in zip(outputs, results, strict=True):
                if array.ndim == 0 or array.shape[0] != rows:
                    raise InferenceFailedError(f"output {name!r} is not batched along its first dimension")
            offset = 0
            for request in batch:
                end = offset + request.rows
                self._settle(request, [results[index[n]][offset:end] for n in request.outputs])
                offset = end
            done = self._clock()
            self._policy.compute.observe(rows, computed - computing)
            self._stats.execution_done(
                rows, _ns(computing - start), _ns(computed - computing), _ns(done - computed), len(batch)
            )
            for request in batch:
                self._stats.queued(_ns(start - request.enqueued))
        except (InvalidInputError, InferenceFailedError) as exc:
            for request in batch:
                self._settle(request, exc)
        except Exception:
            log.exception("batch of %d requests for %s failed", len(batch), self._name)
            for request in batch:
                self._settle(request, InternalError("inference failed"))
        finally:
            self._active -= 1
            self._freed_at = self._clock()
            self._slots.release()
            # Cancelled mid-batch (shutdown): nobody is left without an answer.
            for request in batch:
                self._settle(request, Unavailable(f"{self._name} is unloading"))

    async def _retry_alone(self, batch: list[PendingRequest], error: Exception) -> None:
        """After a refused batch, run each member once on its own, so only the culprit gets the error.

        A model may refuse a whole batch for one request's values (an index out of range, a
        string that does not parse). Bounded: one extra call per member, in order, on the
        instance the batch held; a member whose deadline has passed gets 504 and one whose
        client left is dropped, without computing.
        """
        # Debug, not info: a client could otherwise flood the log with batches it gets refused.
        log.debug("batch of %d requests for %s refused (%s): retrying each alone", len(batch), self._name, error)
        for request in batch:
            now = self._clock()
            if request.abandoned or request.future.done():
                continue
            if request.deadline is not None and request.deadline <= now:
                self._settle(request, DeadlineExceeded("deadline exceeded while retrying a refused batch"))
                continue
            if request.client is not None and request.client.gone():
                self._settle(request, ClientDisconnected())
                continue
            remaining = request.deadline - now if request.deadline is not None else None
            elements = sum(a.size for a in request.inputs.values())
            outputs = [name for name in self._output_order if name in request.outputs]
            try:
                results = await self._executor.run(request.inputs, outputs, elements, remaining)
            except (InvalidInputError, InferenceFailedError) as exc:
                self._settle(request, exc)
                continue
            index = {name: i for i, name in enumerate(outputs)}
            self._settle(request, [results[index[n]] for n in request.outputs])


def _member_may_be_at_fault(exc: Exception) -> bool:
    """Whether one request's values could explain a batch's failure (not a remote being down)."""
    return isinstance(exc, InvalidInputError) or type(exc) is InferenceFailedError


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
