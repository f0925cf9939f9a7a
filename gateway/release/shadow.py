"""Shadow traffic: a copy of a routed request goes to each shadow version, is compared, and dropped.

A shadow never touches the primary's answer, status or latency: the copy is queued only once
the primary's response has been sent, and runs as a task of its own under its own timeout;
copies of one turn of the event loop share one runtime call; when ``max_inflight`` copies are
already queued or running, or their inputs and the primary's answers they hold reach
``max_inflight_bytes``, the copy is dropped and counted rather than queued. The shadow's
outputs are compared with the primary's, in bulk every few hundred pairs (numpy's per-call cost would
otherwise dominate a small model's shadow):

- ``agreement``: the fraction of rows whose label matches: the argmax of the last dimension
  for float outputs with more than one column, score > 0.5 for single-column float outputs
  (a binary classifier's probability), equality for integer, bool and bytes outputs;
- ``mean_abs_diff``: the mean absolute difference of float outputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.models import ModelVersion, VersionState
from gateway.predlog.records import prediction_record
from gateway.predlog.writer import PredictionLog
from gateway.protocol.codec import decode_request
from routing.router import Role
from runtimes.base import RemoteTimeoutError

log = logging.getLogger(__name__)

_FOLD_EVERY = 256


@dataclass
class ShadowStats:
    """Counters of one shadow version of one model."""

    mirrored: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    dropped: int = 0
    agree_rows: float = 0.0
    compared_rows: int = 0
    abs_diff_sum: float = 0.0
    abs_diff_count: int = 0
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    def add_pair(self, primary: np.ndarray, shadow: np.ndarray) -> None:
        """Queue one output pair for comparison; folded in bulk."""
        self.pending.append((primary, shadow))
        if len(self.pending) >= _FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Compare every queued pair, grouped so that each group is one concatenation."""
        groups: dict[tuple[Any, ...], list[tuple[np.ndarray, np.ndarray]]] = {}
        for pair in self.pending:
            primary, shadow = pair
            if primary.shape != shadow.shape or primary.ndim == 0:
                continue
            groups.setdefault((primary.shape[1:], primary.dtype, shadow.dtype), []).append(pair)
        self.pending.clear()
        for pairs in groups.values():
            compare(self, np.concatenate([p for p, _ in pairs]), np.concatenate([s for _, s in pairs]))

    def to_json(self) -> dict[str, Any]:
        """The counters and the two agreement figures (None until something was compared)."""
        self.fold()
        return {
            "mirrored": self.mirrored,
            "completed": self.completed,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "dropped": self.dropped,
            "agreement": self.agree_rows / self.compared_rows if self.compared_rows else None,
            "mean_abs_diff": self.abs_diff_sum / self.abs_diff_count if self.abs_diff_count else None,
        }


def _labels(array: np.ndarray) -> np.ndarray:
    rows = array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, -1)
    if array.dtype.kind == "f":
        return rows.argmax(axis=1) if rows.shape[1] > 1 else rows[:, 0] > 0.5
    return rows


def compare(stats: ShadowStats, primary: np.ndarray, shadow: np.ndarray) -> None:
    """Fold one output's comparison into ``stats`` (shapes must agree, else nothing is counted)."""
    if primary.shape != shadow.shape or primary.size == 0:
        return
    mine, theirs = _labels(primary), _labels(shadow)
    same = mine == theirs
    rows = len(same) if same.ndim == 1 else same.shape[0]
    stats.agree_rows += float(same.all(axis=1).sum()) if same.ndim > 1 else float(same.sum())
    stats.compared_rows += rows
    if primary.dtype.kind == "f" and shadow.dtype.kind == "f":
        stats.abs_diff_sum += float(np.abs(primary.astype(np.float64) - shadow.astype(np.float64)).sum())
        stats.abs_diff_count += primary.size


class ShadowRunner:
    """Runs shadow copies after the primary has answered, bounded and with a timeout."""

    def __init__(
        self,
        *,
        timeout_s: float,
        max_inflight: int,
        max_inflight_bytes: int = 256 * 1024 * 1024,
        predlog: PredictionLog | None = None,
    ) -> None:
        self.predlog = predlog
        self._timeout_s = timeout_s
        self._max_inflight = max_inflight
        self._max_inflight_bytes = max_inflight_bytes
        self._inflight = 0
        self._inflight_bytes = 0
        self._pending: dict[tuple[Any, ...], _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats: dict[tuple[str, int], ShadowStats] = {}

    def admit(self, model: str, version: int) -> ShadowStats | None:
        """Count a copy for ``version``; its stats if it may run, None if it is dropped."""
        stats = self.stats.get((model, version))
        if stats is None:
            stats = self.stats[(model, version)] = ShadowStats()
        stats.mirrored += 1
        if self._inflight >= self._max_inflight:
            stats.dropped += 1
            return None
        self._inflight += 1
        return stats

    def run_all(
        self,
        admitted: list[tuple[ModelVersion | None, ShadowStats]],
        primary: ModelVersion,
        inputs: dict[str, np.ndarray],
        redecode: tuple[bytes, str | None, str],
        *,
        outputs: Sequence[str],
        answers: Sequence[np.ndarray],
        origin: tuple[str, int] = ("", 0),
    ) -> None:
        """Queue the admitted copies; they run, coalesced, on the event loop's next turn.

        Copies for one version produced in the same turn (under load, dozens) share one
        runtime call when their trailing shapes agree: a small model's shadow then costs a
        fraction of its own call, not a whole one. A shadow whose inputs differ from the
        primary's gets the body (``redecode``: body, header length, model) decoded again.
        """
        for mv, stats in admitted:
            if mv is None or mv.state is not VersionState.READY or mv.executor is None:
                stats.dropped += 1
                self._inflight -= 1
                continue
            feed = inputs
            if mv.signature is not primary.signature:
                body, header_length, model = redecode
                try:
                    feed = decode_request(
                        body, header_length, mv.inputs, mv.outputs, model_name=model,
                        max_batch_size=mv.config.max_batch_size,
                    ).inputs  # fmt: skip
                except Exception:  # the body does not fit this version's signature
                    stats.failed += 1
                    self._inflight -= 1
                    if self.predlog is not None:  # logged like any copy: what that version would answer
                        request_id, seq = origin
                        record = prediction_record(time.time(), request_id, mv, Role.SHADOW, seq, None, None, 400, 0.0)
                        self.predlog.offer(record)
                    continue
            # What the copy keeps alive until it is done: counted per copy even where copies of
            # one request share arrays (an over-estimate, never an under-estimate).
            size = sum(a.nbytes for a in feed.values()) + sum(a.nbytes for a in answers)
            if self._inflight_bytes and self._inflight_bytes + size > self._max_inflight_bytes:
                stats.dropped += 1
                self._inflight -= 1
                continue
            self._inflight_bytes += size
            key = (id(mv), tuple([a.shape[1:] for a in feed.values()]), tuple(outputs))
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Pending(mv, stats, list(outputs))
                asyncio.get_running_loop().call_soon(self._flush, key)
            pending.sizes.append(size)
            pending.inputs.append(feed)
            pending.answers.append(answers)
            pending.origins.append(origin)

    def _flush(self, key: tuple[Any, ...]) -> None:
        pending = self._pending.pop(key)
        batchable = all(spec.shape and spec.shape[0] < 0 for spec in pending.mv.inputs.values())
        groups = [pending] if batchable or len(pending.inputs) == 1 else pending.split()
        for group in groups:
            task = asyncio.get_running_loop().create_task(self._compute(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _compute(self, pending: _Pending) -> None:
        mv, stats, copies = pending.mv, pending.stats, len(pending.inputs)
        started = time.perf_counter()
        try:
            first = pending.inputs[0]
            feed = first if copies == 1 else {n: np.concatenate([i[n] for i in pending.inputs]) for n in first}
            wanted = [name for name in pending.outputs if name in mv.outputs]
            executor = mv.executor
            assert executor is not None
            rows = next(iter(feed.values())).shape[0] if feed else 1
            async with asyncio.timeout(self._timeout_s):
                if mv.batcher is not None:
                    results = await mv.batcher.submit(feed, wanted, rows)
                else:
                    called = time.perf_counter_ns()
                    results = await executor.run(feed, wanted, sum(a.size for a in feed.values()), self._timeout_s)
                    # A runtime call like any other: in the version's compute time and batch sizes.
                    mv.stats.execution_done(max(1, rows), 0, time.perf_counter_ns() - called, 0, copies)
        except (TimeoutError, RemoteTimeoutError):
            stats.timed_out += copies
            self._log(pending, None, 504, time.perf_counter() - started)
            return
        except Exception as exc:  # a shadow's failure is counted and logged, never raised
            stats.failed += copies
            log.debug("shadow %s/%d failed: %r", mv.model, mv.version, exc)
            self._log(pending, None, 500, time.perf_counter() - started)
            return
        finally:
            self._inflight -= copies
            self._inflight_bytes -= sum(pending.sizes)
        stats.completed += copies
        self._log(pending, list(zip(wanted, results, strict=True)), 200, time.perf_counter() - started)
        by_name = dict(zip(wanted, results, strict=True))
        for index, name in enumerate(pending.outputs):
            theirs = by_name.get(name)
            if theirs is not None:
                mine = [answers[index] for answers in pending.answers]
                stats.add_pair(mine[0] if copies == 1 else np.concatenate(mine), theirs)

    def _log(
        self, pending: _Pending, results: list[tuple[str, np.ndarray]] | None, status: int, seconds: float
    ) -> None:
        """One prediction-log record per copy, role ``shadow``, its rows cut from the shared call."""
        predlog = self.predlog
        if predlog is None:
            return
        mv, now, offset = pending.mv, time.time(), 0
        for feed, (request_id, seq) in zip(pending.inputs, pending.origins, strict=True):
            rows = next(iter(feed.values())).shape[0] if feed and len(pending.inputs) > 1 else 0
            outputs = None
            if results is not None:
                outputs = results if len(pending.inputs) == 1 else [(n, a[offset : offset + rows]) for n, a in results]
            offset += rows
            predlog.offer(prediction_record(now, request_id, mv, Role.SHADOW, seq, feed, outputs, status, seconds))

    def inflight_bytes(self) -> int:
        """Bytes held by the shadow copies queued or running."""
        return self._inflight_bytes

    async def close(self) -> None:
        """Cancel the shadow calls still running and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(slots=True)
class _Pending:
    """Copies for one shadow version, one input shape and one output list, made in one turn."""

    mv: ModelVersion
    stats: ShadowStats
    outputs: list[str]
    inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    answers: list[Sequence[np.ndarray]] = field(default_factory=list)
    #: (request id, route seq) of each copy's primary request, for the prediction log.
    origins: list[tuple[str, int]] = field(default_factory=list)
    #: The bytes each copy was admitted with (given back when the group is done).
    sizes: list[int] = field(default_factory=list)

    def split(self) -> list[_Pending]:
        """One group per copy (for models without a batch dimension)."""
        return [
            _Pending(self.mv, self.stats, self.outputs, [inputs], [answers], [origin], [size])
            for inputs, answers, origin, size in zip(self.inputs, self.answers, self.origins, self.sizes, strict=True)
        ]
