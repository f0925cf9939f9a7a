"""Rollout webhooks: signed events, retried, never in the way; a real receiver on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from gateway.rollouts.events import Webhooks, sign, webhook_secret
from tests.onnx_models import write_model
from tests.server import ADMIN_TOKEN, admin, serve
from tests.test_rollout_e2e import identity, repository, wait_phase

SECRET = "a-webhook-secret-for-tests-0123456789"


@contextmanager
def receiver(fail_first: int = 0) -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A real HTTP server that records each POST; the first ``fail_first`` answer 500."""
    got: list[tuple[dict[str, str], bytes]] = []
    failures = [fail_first]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if failures[0] > 0:
                failures[0] -= 1
                self.send_response(500)
            else:
                got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def verified(headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret, headers["x-tensorgate-timestamp"].encode() + b"." + body,
                                    hashlib.sha256).hexdigest()  # fmt: skip
    return hmac.compare_digest(expected, headers["x-tensorgate-signature"])


ROLLOUT = {"model": "m", "id": "abc", "to": "2", "phase": "progressing", "step": 0, "weights": {"1": 90, "2": 10},
           "message": "", "last_analysis": None}  # fmt: skip


def test_events_are_signed_and_retried_until_delivered() -> None:
    async def scenario(url: str) -> Webhooks:
        hooks = Webhooks(SECRET.encode, backoff_s=0.01, clock=lambda: 1_800_000_000.0)
        hooks.start()
        hooks({**ROLLOUT, "spec": {"webhook": url}}, "step")
        hooks({**ROLLOUT, "spec": {"webhook": None}}, "step")  # no webhook: nothing sent
        for _ in range(500):
            if hooks.sent:
                break
            await asyncio.sleep(0.01)
        await hooks.close()
        return hooks

    with receiver(fail_first=2) as (url, got):
        hooks = asyncio.run(scenario(url))
    assert (hooks.sent, hooks.failed) == (1, 0) and len(got) == 1
    headers, body = got[0]
    assert verified(headers, body, SECRET.encode()) and headers["x-tensorgate-timestamp"] == "1800000000"
    assert orjson.loads(body)["event"] == "step" and orjson.loads(body)["weights"] == {"1": 90, "2": 10}
    assert sign(b"k", "1", b"{}") != sign(b"other", "1", b"{}")


def test_a_dead_receiver_is_given_up_after_the_attempts() -> None:
    async def scenario() -> Webhooks:
        hooks = Webhooks(lambda: b"k", backoff_s=0.001, attempts=3)
        hooks.start()
        hooks({**ROLLOUT, "spec": {"webhook": "http://127.0.0.1:9/hook"}}, "aborted")
        for _ in range(1000):
            if hooks.failed:
                break
            await asyncio.sleep(0.01)
        await hooks.close()
        return hooks

    hooks = asyncio.run(scenario())
    assert (hooks.sent, hooks.failed) == (0, 1)


def test_the_secret_comes_from_the_environment_or_a_generated_file(tmp_path: Path) -> None:
    assert webhook_secret(tmp_path, {"TENSORGATE_WEBHOOK_SECRET": " abc "}) == b"abc"
    generated = webhook_secret(tmp_path, {})
    assert len(generated) >= 32 and webhook_secret(tmp_path, {}) == generated
    assert (tmp_path / "webhook-secret").stat().st_mode & 0o777 == 0o600


def test_a_rollout_posts_its_events_to_its_webhook(tmp_path: Path) -> None:
    root, candidate = repository(tmp_path / "models", identity())
    environ = {"TENSORGATE_ADMIN_TOKEN": ADMIN_TOKEN, "TENSORGATE_WEBHOOK_SECRET": SECRET}
    with receiver(fail_first=1) as (url, got), serve(root, state_dir=tmp_path / "state", environ=environ) as server:
        write_model(root, "m", 2, candidate)
        spec = {"to": "2", "steps": [{"weight": 50, "pause_s": 0}], "analysis": {"interval_s": 0.3},
                "webhook": url}  # fmt: skip
        assert admin(server, "POST", "/admin/models/m/rollouts", spec).status == 201
        wait_phase(server, {"promoted"}, timeout_s=60)
        for _ in range(300):
            if len(got) >= 3:
                break
            time.sleep(0.05)
    events = [orjson.loads(body)["event"] for _, body in got]
    assert events == ["started", "step", "promoted"]  # in order; the first try failed and was retried
    assert all(verified(headers, body, SECRET.encode()) for headers, body in got)
