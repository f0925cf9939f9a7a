"""Online drift: a sliding window per version, PSI per feature against a reference, a webhook.

A model whose ``config.toml`` has ``[drift] reference = "..."`` is watched: the prediction
log's writer hands every record it takes to :meth:`DriftMonitor.observe`, which keeps the last
``window`` rows of the watched input per version (off the request path, in the writer's
thread). Every ``interval_s`` the monitor computes PSI per feature against the reference (in a
worker thread), exports it as ``tensorgate_drift_psi``, and when some feature has stayed over
``psi_threshold`` for ``sustain`` checks in a row, POSTs a JSON event to ``webhook`` (a
retraining trigger), at most once per ``cooldown_s``.

Nothing one model does stops the monitor: a reference that cannot be read or is malformed is
logged, counted (``tensorgate_drift_errors_total{stage="reference"}``) and tried again once its
file or the ``[drift]`` table changes; a failing check or webhook is logged and counted too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import orjson

from gateway.drift.data import DriftDataError, read_reference
from gateway.drift.stats import psi
from gateway.models import Model, ModelManager
from gateway.predlog.records import PredictionRecord
from gateway.registry.config import DriftConfig

log = logging.getLogger(__name__)

#: The webhook call's deadline by default (``[drift] webhook_timeout_s``), all included.
WEBHOOK_TIMEOUT_S = 10.0

#: POSTs a JSON body to a URL; injected so tests and deployments can change it.
Poster = Callable[[str, bytes], Awaitable[None]]

#: What identifies a reference file's content: (path, mtime_ns, size, inode), or why it cannot be found.
Signature = tuple[object, ...]


async def post_json(url: str, body: bytes, timeout_s: float = WEBHOOK_TIMEOUT_S) -> None:
    """POST ``body`` as application/json within ``timeout_s`` in all; OSError unless answered 2xx.

    Redirects are not followed: a 3xx is a failure (a moved hook is a configuration to fix, and
    following it would send the event wherever the answer points). The deadline covers the
    whole call, so a receiver that accepts the connection and then stalls, or trickles its
    answer, cannot hold it. Proxies come from the usual environment (``HTTPS_PROXY``, ...).
    """
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            async with (
                aiohttp.ClientSession(timeout=timeout, trust_env=True) as session,
                session.post(
                    url, data=body, headers={"Content-Type": "application/json"}, allow_redirects=False
                ) as response,
            ):
                status = response.status
    except TimeoutError:
        raise OSError(f"no answer within {timeout_s:g} s") from None
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a URL aiohttp cannot use
        raise OSError(str(exc) or type(exc).__name__) from None
    if 300 <= status < 400:
        raise OSError(f"answered {status}, a redirect: not followed (configure the final URL)")
    if not 200 <= status < 300:
        raise OSError(f"answered {status}")


def _input_width(model: Model, name: str) -> int | None:
    """The features per row of a loaded version's input (its last dimension), when fixed."""
    for mv in model.versions.values():
        spec = mv.inputs.get(name)
        if spec is not None:
            width = spec.shape[-1] if len(spec.shape) > 1 else 1
            return width if width > 0 else None
    return None


def _psi_per_column(reference: np.ndarray, rows: np.ndarray, bins: int) -> list[float]:
    return [psi(reference[:, c], rows[:, c], bins) for c in range(rows.shape[1])]


class Window:
    """The last ``size`` rows of one input of one version (a ring buffer, thread-safe)."""

    def __init__(self, size: int, width: int) -> None:
        self.width = width
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
    signature: Signature = ()
    windows: dict[str, Window] = field(default_factory=dict)
    over: dict[str, int] = field(default_factory=dict)  # version -> consecutive checks over the threshold
    fired: dict[str, float] = field(default_factory=dict)  # version -> when the webhook last fired
    due: float = 0.0
    failing: bool = False  # the last check failed (logged once, counted each time)


class DriftMonitor:
    """Watches the models that name a drift reference; owned and closed by the app's lifespan."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        poster: Poster | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._manager = manager
        self._poster = poster
        self._clock = clock
        self._watches: dict[str, _Watch] = {}
        # model -> the (configuration, file signature) whose reference failed: retried when either changes
        self._failed: dict[str, tuple[DriftConfig, Signature]] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._scores: dict[tuple[str, str, str], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._hooks: set[asyncio.Task[None]] = set()  # webhook calls under way

    def start(self) -> None:
        """Start the periodic checks."""
        self._task = asyncio.create_task(self._run(), name="drift-monitor")

    async def close(self) -> None:
        """Stop checking, and cancel the webhook calls under way."""
        tasks = [t for t in (self._task, *self._hooks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def psi(self) -> dict[tuple[str, str, str], float]:
        """The latest PSI per (model, version, feature), for ``tensorgate_drift_psi``."""
        return dict(self._scores)

    def errors(self) -> dict[tuple[str, str], int]:
        """Failures per (model, stage): ``reference``, ``check``, ``webhook``."""
        return dict(self._errors)

    def references(self) -> dict[str, bool]:
        """Per model naming a reference: True while it is watched, False while its reference is unusable."""
        return {**{name: False for name in self._failed}, **{name: True for name in self._watches}}

    # -- the writer thread -------------------------------------------------------------------

    def observe(self, entry: PredictionRecord) -> None:
        """Called with every record the prediction log takes: keep the watched input's rows."""
        watch = self._watches.get(entry.model)
        inputs = entry.inputs
        if watch is None or inputs is None or entry.status != 200 or entry.role == "shadow":
            return
        array = inputs.get(watch.input)
        if array is None or array.dtype.kind not in "fiub":
            return
        rows = array.reshape(-1, array.shape[-1] if array.ndim > 1 else 1)
        if rows.shape[1] != watch.reference.shape[1]:
            return
        window = watch.windows.get(entry.version)
        if window is None:
            window = watch.windows.setdefault(entry.version, Window(watch.config.window, rows.shape[1]))
        window.add(rows)

    # -- the event loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self._refresh()
                now = self._clock()
                for name, watch in list(self._watches.items()):
                    if now >= watch.due:
                        watch.due = now + watch.config.interval_s
                        await self._guarded_check(name, watch)
            except Exception:  # a bug must not end online drift for every model: log, go on
                log.exception("online drift: a round of checks failed")
            await asyncio.sleep(min([w.config.interval_s for w in self._watches.values()] + [0.5]))

    async def _refresh(self) -> None:
        """Watch the models that name a reference: new ones, and those whose configuration or file changed."""
        wanted = {model.name: model for model in self._manager.models() if model.config.drift.reference}
        for name in [n for n in self._watches if n not in wanted]:
            del self._watches[name]
        for name in [n for n in self._failed if n not in wanted]:
            del self._failed[name]
        if not wanted:
            return
        references = {name: model.config.drift.reference for name, model in wanted.items()}
        signatures = await asyncio.to_thread(self._signatures, references)
        for name, model in wanted.items():
            drift, signature = model.config.drift, signatures[name]
            current = self._watches.get(name)
            if current is not None and current.config == drift and current.signature == signature:
                continue
            if self._failed.get(name) == (drift, signature):
                continue  # still the reference that failed: wait for a change
            try:
                watch = await self._load(model, drift, signature)
            except Exception as exc:  # any malformed file: this model waits, the others go on
                self._watches.pop(name, None)
                self._failed[name] = (drift, signature)
                self._count(name, "reference")
                log.error(
                    "model %r: drift reference %r not usable (tried again when the file or [drift] changes): %s",
                    name, drift.reference, exc,
                )  # fmt: skip
                continue
            if watch is None:
                continue  # no version loaded yet to name the input: try again next time
            if current is not None and current.input == watch.input:
                # A new reference or configuration: the rows seen so far and the cool-down still count.
                width = watch.reference.shape[1]
                watch.windows = {v: w for v, w in current.windows.items() if w.width == width}
                watch.fired = current.fired
            self._failed.pop(name, None)
            self._watches[name] = watch
            log.info("model %r: watching input %r for drift against %s", name, watch.input, drift.reference)

    def _signatures(self, references: Mapping[str, str]) -> dict[str, Signature]:
        """Each reference file's identity (blocking): a change in it means the file changed."""
        found: dict[str, Signature] = {}
        for name, reference in references.items():
            try:
                path = self._manager.registry.model_file(name, reference)
                stat = path.stat()
                found[name] = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
            except Exception as exc:  # missing, outside the model's directory, ...: retried on change
                found[name] = ("unusable", str(exc))
        return found

    async def _load(self, model: Model, drift: DriftConfig, signature: Signature) -> _Watch | None:
        """The watch for ``model``; None while no version is loaded to name its input; raises if malformed."""
        if not any(mv.inputs for mv in model.versions.values()):
            return None  # nothing to watch yet, nor to check the reference against
        path = await asyncio.to_thread(self._manager.registry.model_file, model.name, drift.reference)
        columns = await asyncio.to_thread(read_reference, path)
        name = drift.input or next((n for n in columns.inputs if n), "")
        if not name:  # CSV / .npy: the model's first input
            versions = [mv for mv in model.versions.values() if mv.inputs]
            if not versions:
                return None
            name = next(iter(versions[0].inputs), "")
        reference = columns.inputs.get(name, columns.inputs.get(""))
        if reference is None:
            raise DriftDataError(f"it has no values for the input {name!r}")
        if reference.ndim != 2 or reference.shape[0] == 0 or reference.shape[1] == 0:
            raise DriftDataError(f"expected rows of features, got an array of shape {reference.shape}")
        if not np.isfinite(reference).any():
            raise DriftDataError("it holds no finite number")
        width = _input_width(model, name)
        if width is not None and reference.shape[1] != width:  # else no row would ever be compared
            raise DriftDataError(f"it has {reference.shape[1]} features; the input {name!r} has {width}")
        return _Watch(drift, name, np.asarray(reference, np.float64), signature)

    def _count(self, model: str, stage: str) -> None:
        self._errors[(model, stage)] = self._errors.get((model, stage), 0) + 1

    async def _guarded_check(self, model: str, watch: _Watch) -> None:
        """One model's check; its failure is logged (once until it recovers) and counted."""
        try:
            await self._check(model, watch)
        except Exception:
            self._count(model, "check")
            if not watch.failing:
                log.exception("model %r: the drift check failed (counted; retried every interval)", model)
            watch.failing = True
        else:
            watch.failing = False

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
        # A task of its own: a slow receiver must not hold the other models' checks.
        post = self._post(model, config.webhook, orjson.dumps(event), config.webhook_timeout_s)
        task = asyncio.create_task(post, name="drift-webhook")
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)

    async def _post(self, model: str, url: str, body: bytes, timeout_s: float) -> None:
        try:
            if self._poster is not None:
                await self._poster(url, body)
            else:
                await post_json(url, body, timeout_s)
        except Exception as exc:
            self._count(model, "webhook")
            log.error("model %r: the drift webhook failed: %s", model, exc)
