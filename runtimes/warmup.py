"""Warm-up: run a fresh model on sample inputs, and measure what one call costs.

Two kinds of samples. A version may ship its own (real requests, ``warmup/*.json``): they
must run, or the version fails to load. Without them, synthetic zeros (empty strings for
BYTES) are fed; those cannot suit every model (a ``Cast`` of "" to a number throws), so when
they fail the caller loads the version anyway with an ``unmeasured`` cost model, and the
executor fits the real one from the first real calls (``CostLearner``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

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
    #: False while nothing has been measured (synthetic warm-up failed): never run inline.
    measured: bool = True

    def predict(self, elements: int) -> float:
        """Predicted seconds for one call over ``elements`` input elements."""
        return self.base_s + self.per_element_s * max(0, elements - self.base_elements)


def unmeasured(specs: tuple[TensorSpec, ...]) -> CostModel:
    """A placeholder until real calls are timed: 1 ms per call, far above any inline threshold."""
    return CostModel(1e-3, 0.0, _elements(sample_inputs(specs, 1)), measured=False)


#: Real calls timed before an unmeasured version's cost line is fitted.
SEED_CALLS = 8


def fit(samples: Sequence[tuple[int, float]]) -> CostModel:
    """A cost line through timed calls ``(elements, seconds)``: the smallest size's median, then a slope."""
    smallest = min(e for e, _ in samples)
    base = statistics.median(s for e, s in samples if e == smallest)
    slopes = [(s - base) / (e - smallest) for e, s in samples if e > smallest]
    # Noise can make a bigger call look faster; a negative slope would mean "free": clamp it.
    per_element = max(0.0, statistics.median(slopes)) if slopes else 0.0
    return CostModel(base, per_element, smallest)


class CostLearner:
    """Collects the times of real calls and fits a cost line once it has ``calls`` of them."""

    def __init__(self, calls: int = SEED_CALLS) -> None:
        self._calls = calls
        self._samples: list[tuple[int, float]] = []

    def observe(self, elements: int, seconds: float) -> CostModel | None:
        """Record one call; the fitted model once enough calls are in, else None."""
        self._samples.append((elements, seconds))
        if len(self._samples) < self._calls:
            return None
        return fit(self._samples)


def _elements(feed: Mapping[str, np.ndarray]) -> int:
    return sum(a.size for a in feed.values())


def _median_seconds(call: Callable[[], object], clock: Callable[[], float]) -> float:
    samples = []
    for _ in range(_REPEATS):
        start = clock()
        call()
        samples.append(clock() - start)
    return statistics.median(samples)


class SampleFailedError(Exception):
    """One of a version's own warm-up samples failed: the version must not load."""


def warm_up_samples(
    runtime: Runtime,
    samples: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    clock: Callable[[], float] = time.perf_counter,
) -> CostModel:
    """Run a version's own samples (``(label, inputs)``), each timed; fit a cost line. Blocking.

    Any failure raises SampleFailedError naming the sample: these are real requests the
    model's owner says it serves, so a model that refuses them is broken.
    """
    outputs = [s.name for s in runtime.outputs]
    timed: list[tuple[int, float]] = []
    for label, feed in samples:
        try:
            runtime.run(feed, outputs)  # the first run of each shape allocates: not timed
            timed.append((_elements(feed), _median_seconds(partial(runtime.run, feed, outputs), clock)))
        except Exception as exc:
            raise SampleFailedError(f"warm-up sample {label} failed: {exc}") from exc
    return fit(timed)


def warm_up(runtime: Runtime, clock: Callable[[], float] = time.perf_counter) -> CostModel:
    """Run the model at batch 1 (and 16 when the batch dim is dynamic) on synthetic data; fit a cost line.

    Blocking; raises what the runtime raises (synthetic data may not suit the model).
    """
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
