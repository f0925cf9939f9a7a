"""Rollout events to a webhook: signed with HMAC-SHA256, retried with back-off, never blocking.

A rollout whose spec names a ``webhook`` URL has ``started``, ``step``, ``paused``, ``resumed``,
``aborted`` and ``promoted`` POSTed to it as JSON. Each body is signed:
``X-Tensorgate-Signature: sha256=<hex HMAC of "<timestamp>.<body>">`` with the timestamp in
``X-Tensorgate-Timestamp`` (a receiver refuses old ones: no replays). The key is
``TENSORGATE_WEBHOOK_SECRET``, else a 0600 file generated in the state directory
(``webhook-secret``). Events queue (bounded) for one sender task: a slow or dead receiver
delays only the events, never a rollout decision or a request; a full queue drops and logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.auth import write_secret

log = logging.getLogger(__name__)

SECRET_FILE = "webhook-secret"
SECRET_ENV = "TENSORGATE_WEBHOOK_SECRET"
#: One POST's whole deadline, and the attempts before an event is given up.
POST_TIMEOUT_S = 10.0
ATTEMPTS = 5
QUEUE_SIZE = 1000

#: (url, body, headers) -> None; OSError unless the receiver answered 2xx.
Poster = Callable[[str, bytes, Mapping[str, str]], Awaitable[None]]


def webhook_secret(state_dir: Path, environ: Mapping[str, str]) -> bytes:
    """The signing key: the environment's, else the state directory's (generated on first use)."""
    given = environ.get(SECRET_ENV, "").strip()
    if given:
        return given.encode()
    path = state_dir / SECRET_FILE
    if not path.exists() and write_secret(path, secrets.token_urlsafe(32).encode() + b"\n"):
        log.info("rollout webhooks: generated a signing key into %s (mode 0600)", path)
    return path.read_bytes().strip()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` of ``"<timestamp>.<body>"`` (what a receiver recomputes and compares)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def post(url: str, body: bytes, headers: Mapping[str, str]) -> None:
    """POST within ``POST_TIMEOUT_S`` in all, no redirect followed; OSError unless 2xx."""
    try:
        async with asyncio.timeout(POST_TIMEOUT_S):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S), trust_env=True) as session,
                session.post(url, data=body, headers=dict(headers), allow_redirects=False) as response,
            ):
                status = response.status
    except TimeoutError:
        raise OSError(f"no answer within {POST_TIMEOUT_S:g} s") from None
    except (aiohttp.ClientError, ValueError) as exc:
        raise OSError(str(exc) or type(exc).__name__) from None
    if not 200 <= status < 300:
        raise OSError(f"answered {status}")


class Webhooks:
    """Queues signed events and sends them from one task, retrying each with back-off."""

    def __init__(
        self,
        secret: Callable[[], bytes],
        *,
        poster: Poster = post,
        clock: Callable[[], float] = time.time,
        backoff_s: float = 1.0,
        attempts: int = ATTEMPTS,
    ) -> None:
        self._secret_source = secret  # read (or generated) in a thread at the first event
        self._secret: bytes | None = None
        self._post = poster
        self._clock = clock
        self._backoff_s = backoff_s
        self._attempts = attempts
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        #: Events delivered, given up after every attempt, and dropped on a full queue.
        self.sent = self.failed = self.dropped = 0

    def start(self) -> None:
        """Start the sender task."""
        self._task = asyncio.create_task(self._run(), name="rollout-webhooks")

    async def close(self) -> None:
        """Stop sending (events still queued are dropped: a webhook is a notification, not a log)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def __call__(self, rollout: dict[str, Any], event: str) -> None:
        """Queue ``event`` of ``rollout`` if its spec names a webhook; never blocks."""
        url = (rollout.get("spec") or {}).get("webhook")
        if not url:
            return
        body = orjson.dumps({
            "event": event, "model": rollout["model"], "rollout": rollout["id"], "to": rollout["to"],
            "phase": rollout["phase"], "step": rollout["step"], "weights": rollout["weights"],
            "message": rollout["message"], "last_analysis": rollout["last_analysis"], "time": self._clock(),
        })  # fmt: skip
        try:
            self._queue.put_nowait((url, body))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("rollout webhook queue full: %s event of %r dropped", event, rollout["model"])

    async def _run(self) -> None:
        while True:
            url, body = await self._queue.get()
            if self._secret is None:
                self._secret = await asyncio.to_thread(self._secret_source)
            for attempt in range(self._attempts):
                timestamp = str(int(self._clock()))
                headers = {
                    "Content-Type": "application/json",
                    "X-Tensorgate-Timestamp": timestamp,
                    "X-Tensorgate-Signature": sign(self._secret, timestamp, body),
                }
                try:
                    await self._post(url, body, headers)
                    self.sent += 1
                    break
                except OSError as exc:
                    log.warning("rollout webhook %s: attempt %d failed: %s", url, attempt + 1, exc)
                    if attempt + 1 < self._attempts:
                        await asyncio.sleep(self._backoff_s * 2**attempt)
            else:
                self.failed += 1
