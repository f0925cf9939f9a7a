"""Online drift: a sliding window per version, PSI per feature against a reference, a webhook.

A model whose ``config.toml`` has ``[drift] reference = "..."`` is watched: the prediction
log's writer hands every record it takes to :meth:`DriftMonitor.observe`, which keeps the last
``window`` rows of the watched input per version (off the request path, in the writer's
thread). Every ``interval_s`` the monitor computes PSI per feature against the reference (in a
worker thread), exports it as ``tensorgate_drift_psi``, and when some feature has stayed over
``psi_threshold`` for ``sustain`` checks in a row, POSTs a JSON event to ``webhook`` (a
retraining trigger), at most once per ``cooldown_s``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import orjson

from gateway.drift.data import DriftDataError, read_reference
from gateway.drift.stats import psi
from gateway.models import ModelManager
from gateway.predlog.records import Entry
from gateway.registry.config import DriftConfig

log = logging.getLogger(__name__)

#: POSTs a JSON body to a URL (blocking); injected so tests and deployments can change it.
Poster = Callable[[str, bytes], None]


def post_json(url: str, body: bytes, timeout_s: float = 5.0) -> None:
    """POST ``body`` as application/json; raises OSError on failure or a non-2xx answer."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if not 200 <= response.status < 300:
            raise OSError(f"webhook answered {response.status}")


def _psi_per_column(reference: np.ndarray, rows: np.ndarray, bins: int) -> list[float]:
    return [psi(reference[:, c], rows[:, c], bins) for c in range(rows.shape[1])]


class Window:
    """The last ``size`` rows of one input of one version (a ring buffer, thread-safe)."""

    def __init__(self, size: int, width: int) -> None:
        self._rows = np.empty((size, width), np.float64)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def add(self, rows: np.ndarray) -> None:
        """Append rows (the oldest fall out)."""
        size = len(self._rows)
        rows = rows[-size:]
        with self._lock:
            end = self._next + len(rows)
            if end <= size:
                self._rows[self._next : end] = rows
            else:
                split = size - self._next
                self._rows[self._next :] = rows[:split]
                self._rows[: end - size] = rows[split:]
            self._next = end % size
            self._filled = min(size, self._filled + len(rows))

    def snapshot(self) -> np.ndarray:
        """A copy of the rows held."""
        with self._lock:
            return self._rows[: self._filled].copy() if self._filled < len(self._rows) else self._rows.copy()


@dataclass
class _Watch:
    """One watched model: its settings and reference."""

    config: DriftConfig
    input: str
    reference: np.ndarray
    windows: dict[str, Window] = field(default_factory=dict)
    over: dict[str, int] = field(default_factory=dict)  # version -> consecutive checks over the threshold
    fired: dict[str, float] = field(default_factory=dict)  # version -> when the webhook last fired
    due: float = 0.0


class DriftMonitor:
    """Watches the models that name a drift reference; owned and closed by the app's lifespan."""

    def __init__(
        self, manager: ModelManager, *, poster: Poster = post_json, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._manager = manager
        self._poster = poster
        self._clock = clock
        self._watches: dict[str, _Watch] = {}
        self._failed: set[tuple[str, DriftConfig]] = set()  # retried once the configuration changes
        self._scores: dict[tuple[str, str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the periodic checks."""
        self._task = asyncio.create_task(self._run(), name="drift-monitor")

    async def close(self) -> None:
        """Stop checking."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def psi(self) -> dict[tuple[str, str, str], float]:
        """The latest PSI per (model, version, feature), for ``tensorgate_drift_psi``."""
        return dict(self._scores)

    # -- the writer thread -------------------------------------------------------------------

    def observe(self, entry: Entry) -> None:
        """Called with every record the prediction log takes: keep the watched input's rows."""
        watch = self._watches.get(entry[2])
        inputs = entry[6]
        if watch is None or inputs is None or entry[10] != 200 or entry[4] == "shadow":
            return
        array = inputs.get(watch.input)
        if array is None or array.dtype.kind not in "fiub":
            return
        rows = array.reshape(-1, array.shape[-1] if array.ndim > 1 else 1)
        if rows.shape[1] != watch.reference.shape[1]:
            return
        window = watch.windows.get(entry[3])
        if window is None:
            window = watch.windows.setdefault(entry[3], Window(watch.config.window, rows.shape[1]))
        window.add(rows)

    # -- the event loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._refresh()
            now = self._clock()
            for name, watch in list(self._watches.items()):
                if now >= watch.due:
                    watch.due = now + watch.config.interval_s
                    await self._check(name, watch)
            await asyncio.sleep(min([w.config.interval_s for w in self._watches.values()] + [0.5]))

    async def _refresh(self) -> None:
        """Watch the models that name a reference (new ones, or a changed configuration)."""
        for model in self._manager.models():
            drift = model.config.drift
            current = self._watches.get(model.name)
            if (
                not drift.reference
                or (current is not None and current.config == drift)
                or (model.name, drift) in self._failed
            ):
                continue
            try:
                path = await asyncio.to_thread(self._manager.registry.model_file, model.name, drift.reference)
                columns = await asyncio.to_thread(read_reference, path)
            except (DriftDataError, OSError, ValueError) as exc:  # RegistryError is a ValueError
                log.error("model %r: drift reference not usable: %s", model.name, exc)
                self._failed.add((model.name, drift))
                continue
            name = drift.input or next((n for n in columns.inputs if n), "")
            if not name:  # CSV / .npy: the model's first input
                versions = [mv for mv in model.versions.values() if mv.inputs]
                name = next(iter(versions[0].inputs), "") if versions else ""
            reference = columns.inputs.get(name, columns.inputs.get(""))
            if not name or reference is None:
                continue  # no version loaded yet to name the input: try again next time
            self._watches[model.name] = _Watch(drift, name, reference)
            log.info("model %r: watching input %r for drift against %s", model.name, name, drift.reference)

    async def _check(self, model: str, watch: _Watch) -> None:
        config = watch.config
        for version, window in list(watch.windows.items()):
            rows = window.snapshot()
            if len(rows) < min(config.window, 100):
                continue
            scores = await asyncio.to_thread(_psi_per_column, watch.reference, rows, config.bins)
            features = {f"{watch.input}[{c}]": score for c, score in enumerate(scores)}
            for feature, score in features.items():
                self._scores[(model, version, feature)] = score
            over = {f: s for f, s in features.items() if s > config.psi_threshold}
            watch.over[version] = watch.over.get(version, 0) + 1 if over else 0
            if over and watch.over[version] >= config.sustain:
                await self._fire(model, version, watch, features, rows=len(rows))

    async def _fire(self, model: str, version: str, watch: _Watch, features: dict[str, float], *, rows: int) -> None:
        config = watch.config
        over = sorted(f for f, s in features.items() if s > config.psi_threshold)
        now = self._clock()
        last = watch.fired.get(version)
        if last is not None and now - last < config.cooldown_s:
            return
        watch.fired[version] = now
        log.warning(
            "model %r version %s: drift in %s (PSI over %s)", model, version, ", ".join(over), config.psi_threshold
        )
        if not config.webhook:
            return
        event = {
            "event": "drift", "model": model, "version": version, "drifted": over, "psi": features,
            "psi_threshold": config.psi_threshold, "window_rows": rows, "checks_over": watch.over[version],
        }  # fmt: skip
        try:
            await asyncio.to_thread(self._poster, config.webhook, orjson.dumps(event))
        except OSError as exc:
            log.error("model %r: the drift webhook failed: %s", model, exc)
