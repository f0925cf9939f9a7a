"""Locust users for tensorgate: V2 JSON and binary clients, and a release pipeline.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 64 -r 16 -t 60s

Environment (all optional):

| variable | default | meaning |
| --- | --- | --- |
| `TG_MODEL` | `fraud` | the model to call (inputs: one FP32 tensor of `TG_FEATURES` values per row) |
| `TG_INPUT` | `features` | its input's name |
| `TG_FEATURES` | `16` | values per row |
| `TG_MIX` | `json=3,binary=1,pinned=1` | task weights: routed JSON, routed binary, pinned JSON |
| `TG_PINNED_VERSION` | `1` | the version pinned requests name |
| `TG_STICKY_HEADER` | `x-user-id` | header carrying each simulated user's id (for sticky canaries) |
| `TG_RELEASE_VERSIONS` | `1,2` | stable and candidate versions the release pipeline moves between |
| `TG_RELEASE_PAUSE_S` | `5` | seconds between the pipeline's steps |
| `TENSORGATE_ADMIN_TOKEN` | (none) | the admin token; without it, the release pipeline user does nothing |

A failure is any answer other than 200, except 503 (overload, with `Retry-After`), which is
counted apart, under the name `overloaded (503)`, and does not fail the run. The pipeline user
(one of them, whatever ``-u``) cycles: canary at 10%, 50%, swap to the candidate, roll back.
"""

from __future__ import annotations

import json
import os
import random
import struct
import uuid
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.env import Environment

MODEL = os.environ.get("TG_MODEL", "fraud")
INPUT = os.environ.get("TG_INPUT", "features")
FEATURES = int(os.environ.get("TG_FEATURES", "16"))
PINNED = os.environ.get("TG_PINNED_VERSION", "1")
STICKY = os.environ.get("TG_STICKY_HEADER", "x-user-id")
STABLE, CANDIDATE = (v.strip() for v in os.environ.get("TG_RELEASE_VERSIONS", "1,2").split(","))
PAUSE_S = float(os.environ.get("TG_RELEASE_PAUSE_S", "5"))
TOKEN = os.environ.get("TENSORGATE_ADMIN_TOKEN", "")
OVERLOADED = "overloaded (503)"


def _mix() -> dict[str, int]:
    weights = {"json": 3, "binary": 1, "pinned": 1}
    for part in os.environ.get("TG_MIX", "").split(","):
        if "=" in part:
            name, _, weight = part.partition("=")
            weights[name.strip()] = int(weight)
    return weights


MIX = _mix()


def json_body(rng: random.Random) -> bytes:
    data = [round(rng.random(), 4) for _ in range(FEATURES)]
    return json.dumps({"inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1, FEATURES], "data": data}]}).encode()


def binary_body(rng: random.Random) -> tuple[bytes, int]:
    """A request with its input as raw little-endian float32 (Triton's binary tensor extension)."""
    raw = struct.pack(f"<{FEATURES}f", *(rng.random() for _ in range(FEATURES)))
    tensor = {"name": INPUT, "datatype": "FP32", "shape": [1, FEATURES], "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + raw, len(header)


class InferenceUser(FastHttpUser):
    """A client app: routed JSON, routed binary and pinned requests, with its own sticky id."""

    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.user_id = uuid.uuid4().hex

    def _post(self, path: str, body: bytes, name: str, headers: dict[str, str]) -> None:
        headers = {STICKY: self.user_id, **headers}
        with self.client.post(path, data=body, headers=headers, name=name, catch_response=True) as response:
            if response.status_code == 200:
                response.success()
            elif response.status_code == 503:
                response.success()  # overload is the server protecting itself: counted apart
                events.request.fire(
                    request_type="POST", name=OVERLOADED, response_time=response.request_meta["response_time"],
                    response_length=0, exception=None, context={},
                )  # fmt: skip
            else:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")

    @task(MIX.get("json", 0))
    def routed_json(self) -> None:
        self._post(
            f"/v2/models/{MODEL}/infer", json_body(self.rng), "routed json", {"Content-Type": "application/json"}
        )

    @task(MIX.get("binary", 0))
    def routed_binary(self) -> None:
        body, header_length = binary_body(self.rng)
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
        self._post(f"/v2/models/{MODEL}/infer", body, "routed binary", headers)

    @task(MIX.get("pinned", 0))
    def pinned_json(self) -> None:
        path = f"/v2/models/{MODEL}/versions/{PINNED}/infer"
        self._post(path, json_body(self.rng), f"pinned v{PINNED}", {"Content-Type": "application/json"})


class ReleasePipelineUser(FastHttpUser):
    """A release pipeline: canary 10%, 50%, swap, roll back; every call audited as locust's."""

    fixed_count = 1
    wait_time = between(PAUSE_S, PAUSE_S)

    def on_start(self) -> None:
        self.step = 0
        if TOKEN:
            self._admin("POST", f"/admin/models/{MODEL}/versions/{CANDIDATE}/load", {}, "load candidate")
            self._admin("POST", f"/admin/models/{MODEL}/versions/{STABLE}/load", {}, "load stable")

    def _admin(self, method: str, path: str, doc: dict[str, Any], name: str) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "x-actor": "locust"}
        with self.client.request(
            method, path, data=json.dumps({**doc, "reason": f"locust: {name}"}), headers=headers,
            name=f"admin: {name}", catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code == 200:
                response.success()
            else:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")

    @task
    def next_step(self) -> None:
        if not TOKEN:
            return
        steps = [
            ("PUT", "route", {"weights": {STABLE: 90, CANDIDATE: 10}, "sticky_header": STICKY}, "canary 10%"),
            ("PUT", "route", {"weights": {STABLE: 50, CANDIDATE: 50}, "sticky_header": STICKY}, "canary 50%"),
            ("POST", "swap", {"version": CANDIDATE}, "swap"),
            ("POST", "rollback", {}, "rollback"),
        ]
        method, action, doc, name = steps[self.step % len(steps)]
        self.step += 1
        self._admin(method, f"/admin/models/{MODEL}/{action}", doc, name)


@events.quitting.add_listener
def _summary(environment: Environment, **_: Any) -> None:
    stats = environment.stats
    overloaded = stats.get(OVERLOADED, "POST").num_requests if (OVERLOADED, "POST") in stats.entries else 0
    total = stats.total
    print(
        f"tensorgate: {total.num_requests - overloaded:,} answered requests, {total.num_failures:,} failures, "
        f"{overloaded:,} overloaded (503); p50 {total.get_response_time_percentile(0.5):.0f} ms, "
        f"p95 {total.get_response_time_percentile(0.95):.0f} ms, p99 {total.get_response_time_percentile(0.99):.0f} ms"
    )
