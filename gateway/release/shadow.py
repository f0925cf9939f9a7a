"""Shadow traffic: a copy of a routed request goes to each shadow version, is compared, and dropped.

A shadow never touches the primary's answer, status or latency: the copy is started after the
primary has been computed, as a task of its own with its own timeout; when ``max_inflight``
shadow calls are already running, the copy is dropped and counted rather than queued. The
shadow's outputs are compared with the primary's:

- ``agreement``: the fraction of rows whose label matches: the argmax of the last dimension
  for float outputs with more than one column, score > 0.5 for single-column float outputs
  (a binary classifier's probability), equality for integer, bool and bytes outputs;
- ``mean_abs_diff``: the mean absolute difference of float outputs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.models import ModelManager, ModelVersion, VersionState

log = logging.getLogger(__name__)


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

    def to_json(self) -> dict[str, Any]:
        """The counters and the two agreement figures (None until something was compared)."""
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
    """Runs shadow copies as owned background tasks, bounded and with a timeout."""

    def __init__(self, manager: ModelManager, *, timeout_s: float, max_inflight: int) -> None:
        self._manager = manager
        self._timeout_s = timeout_s
        self._max_inflight = max_inflight
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats: dict[tuple[str, int], ShadowStats] = {}

    def stats_for(self, model: str, version: int) -> ShadowStats:
        """The counters of one shadow version (created on first use)."""
        key = (model, version)
        found = self.stats.get(key)
        if found is None:
            found = self.stats[key] = ShadowStats()
        return found

    def mirror(
        self,
        model: str,
        version: int,
        decode: Callable[[ModelVersion], tuple[dict[str, np.ndarray], int]],
        outputs: Sequence[str],
        primary: Sequence[np.ndarray],
    ) -> None:
        """Start a shadow copy unless too many are running; never raises, never waits."""
        stats = self.stats_for(model, version)
        stats.mirrored += 1
        if len(self._tasks) >= self._max_inflight:
            stats.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow(model, version, decode, outputs, primary, stats=stats)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shadow(
        self,
        model: str,
        version: int,
        decode: Callable[[ModelVersion], tuple[dict[str, np.ndarray], int]],
        outputs: Sequence[str],
        primary: Sequence[np.ndarray],
        *,
        stats: ShadowStats,
    ) -> None:
        try:
            found = self._manager.model(model).versions.get(version)
            if found is None or found.state is not VersionState.READY:
                stats.dropped += 1
                return
            mv = found
            inputs, rows = decode(mv)
            wanted = [name for name in outputs if name in mv.outputs]
            async with asyncio.timeout(self._timeout_s):
                if mv.batcher is not None:
                    results = await mv.batcher.submit(inputs, wanted, rows)
                else:
                    assert mv.executor is not None
                    results = await mv.executor.run(inputs, wanted, sum(a.size for a in inputs.values()))
        except TimeoutError:
            stats.timed_out += 1
            return
        except Exception as exc:  # a shadow's failure is counted and logged, never raised
            stats.failed += 1
            log.debug("shadow %s/%d failed: %r", model, version, exc)
            return
        stats.completed += 1
        by_name = dict(zip(wanted, results, strict=True))
        for name, array in zip(outputs, primary, strict=True):
            theirs = by_name.get(name)
            if theirs is not None:
                compare(stats, array, theirs)

    async def close(self) -> None:
        """Cancel the shadows still running and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
