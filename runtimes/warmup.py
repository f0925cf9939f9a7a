"""Warm-up: run a fresh model on sample inputs, and measure what one call costs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtimes.base import Runtime, TensorSpec
from runtimes.datatypes import NUMPY_DTYPES

#: The second batch size timed to learn the per-element cost.
PROBE_BATCH = 16
_REPEATS = 7


def sample_inputs(specs: tuple[TensorSpec, ...], batch: int) -> dict[str, np.ndarray]:
    """Zeros (empty strings for BYTES) for every input; the first dynamic dim is ``batch``."""
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple((batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(spec.shape))
        if spec.datatype == "BYTES":
            array = np.empty(shape, dtype=object)
            array.fill(b"")
        else:
            array = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
        feed[spec.name] = array
    return feed


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds per call, as a line in the number of input elements, fitted at warm-up."""

    base_s: float
    per_element_s: float
    base_elements: int

    def predict(self, elements: int) -> float:
        """Predicted seconds for one call over ``elements`` input elements."""
        return self.base_s + self.per_element_s * max(0, elements - self.base_elements)


def _elements(feed: dict[str, np.ndarray]) -> int:
    return sum(a.size for a in feed.values())


def _median_seconds(call: Callable[[], object], clock: Callable[[], float]) -> float:
    samples = []
    for _ in range(_REPEATS):
        start = clock()
        call()
        samples.append(clock() - start)
    return statistics.median(samples)


def warm_up(runtime: Runtime, clock: Callable[[], float] = time.perf_counter) -> CostModel:
    """Run the model at batch 1 (and 16 when the batch dim is dynamic); fit a cost line. Blocking."""
    outputs = [s.name for s in runtime.outputs]
    small = sample_inputs(runtime.inputs, 1)
    runtime.run(small, outputs)  # the first run allocates: not timed
    base = _median_seconds(lambda: runtime.run(small, outputs), clock)
    dynamic = any(s.shape and s.shape[0] < 0 for s in runtime.inputs)
    if not dynamic:
        return CostModel(base, 0.0, _elements(small))
    large = sample_inputs(runtime.inputs, PROBE_BATCH)
    runtime.run(large, outputs)
    big = _median_seconds(lambda: runtime.run(large, outputs), clock)
    extra = _elements(large) - _elements(small)
    per_element = max(0.0, big - base) / extra if extra > 0 else 0.0
    return CostModel(base, per_element, _elements(small))
