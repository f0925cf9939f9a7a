"""The operator console (/console): its headers and weight, /admin/stats, and a real browser driving it."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import pytest

from tests.onnx_models import add_sub, identity, write_model
from tests.rawhttp import request
from tests.required import import_or_unavailable, server_unavailable
from tests.server import ADMIN_TOKEN, RunningServer, admin, serve

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup-chromium): Playwright cannot download its own
FILES = ("/console", "/console/console.js", "/console/console.css")
INPUTS = orjson.dumps(
    {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": [1] * 16} for n in ("INPUT0", "INPUT1")]}
)
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script> & done'


def build_repository(root: Path) -> Path:
    write_model(root, "simple", 1, add_sub(0), config='version_policy = "all"\n')
    write_model(root, "simple", 2, add_sub(100))
    return root


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return build_repository(tmp_path / "models")


@pytest.fixture
def server(repository: Path) -> Iterator[RunningServer]:
    with serve(repository) as running:
        yield running


def route_of(server: RunningServer) -> dict[str, Any]:
    reply = admin(server, "GET", "/admin/models/simple/route")
    assert reply.status == 200, reply.body
    doc: dict[str, Any] = reply.json()
    return doc


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the files, their headers, the setting -------------------------------------------------


def test_the_page_is_small_and_served_with_a_strict_policy(server: RunningServer) -> None:
    total = 0
    for path in FILES:
        reply = request(server.port, "GET", path)
        assert reply.status == 200, (path, reply.body)
        total += len(reply.body)
        policy = reply.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "script-src 'self'" in policy and "style-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["cache-control"] == "no-cache"
        # A revalidation by ETag costs no body.
        again = request(server.port, "GET", path, b"", {"If-None-Match": reply.headers["etag"]})
        assert again.status == 304 and again.body == b""
    assert total < 100_000, f"the console weighs {total} bytes"
    assert request(server.port, "GET", "/console").headers["content-type"] == "text/html; charset=utf-8"
    assert request(server.port, "GET", "/console/console.js").headers["content-type"].startswith("text/javascript")
    html = request(server.port, "GET", "/console").body.decode()
    # No inline script or style for the CSP to have to allow; no other origin named.
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None
    assert "<style" not in html and " style=" not in html
    assert re.search(r"(src|href)=\"(https?:)?//", html) is None
    missing = request(server.port, "GET", "/console/other.js")
    assert missing.status == 404 and "error" in missing.json()


def test_console_false_turns_it_off(repository: Path) -> None:
    with serve(repository, console=False) as running:
        for path in FILES:
            reply = request(running.port, "GET", path)
            assert reply.status == 404 and "error" in reply.json()


def test_with_an_admin_port_the_console_is_served_there(repository: Path) -> None:
    with serve(repository, admin_listener=True) as running:
        assert request(running.admin_port, "GET", "/console").status == 200
        elsewhere = request(running.port, "GET", "/console")
        assert elsewhere.status == 404 and "admin port" in elsewhere.json()["error"]
        assert admin(running, "GET", "/admin/stats").status == 200


def test_stats_needs_the_token_and_counts_what_metrics_counts(server: RunningServer) -> None:
    assert admin(server, "GET", "/admin/stats", headers={"Authorization": "Bearer wrong-token-wrong"}).status == 401
    for _ in range(7):
        assert request(server.port, "POST", "/v2/models/simple/infer", INPUTS).status == 200
    assert request(server.port, "POST", "/v2/models/simple/infer", b"{").status == 400
    reply = admin(server, "GET", "/admin/stats")
    assert reply.status == 200 and reply.headers["cache-control"] == "no-store"
    doc = reply.json()
    assert doc["time"] == pytest.approx(time.time(), abs=60)
    by_version = {v["version"]: v for v in doc["versions"] if v["model"] == "simple"}
    assert set(by_version) == {"1", "2"}
    served = by_version["2"]
    assert served["requests"]["primary"] == {"200": 7, "400": 1}
    assert served["latency"]["le"][-1] == "+Inf" and served["latency"]["cumulative"][-1] == 8
    assert served["batch"]["count"] == 7 and served["queue_depth"] == 0
    assert by_version["1"]["requests"] == {}
    metrics = request(server.port, "GET", "/metrics").body.decode()
    line = 'tensorgate_requests_total{code="200",model="simple",role="primary",version="2"} 7.0'
    assert line in metrics
    assert doc["drift"] == []


# -- a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = import_or_unavailable("playwright.sync_api", "playwright is not installed (pip install -e '.[test]')")
    if not os.path.exists(CHROMIUM) and shutil.which("chromium") is None:
        server_unavailable("headless Chromium not installed (scripts/setup-chromium)")
    with sync_api.sync_playwright() as playwright:
        # Debian's chromium is a shell wrapper around the real binary; Playwright runs either.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


class Console:
    """One browser page on the console, with what it requested and any script error it hit."""

    def __init__(self, browser: Any, server: RunningServer, width: int = 1280, height: int = 800) -> None:
        # Playwright's expect() polls the DOM; wait_for_function would evaluate a string, which
        # the page's CSP (no 'unsafe-eval') refuses, as it should.
        self.expect = import_or_unavailable("playwright.sync_api", "playwright").expect
        self.expect.set_options(timeout=30_000)  # a loaded CI machine; the page polls every 3 s
        self.server = server
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", self._console_message)
        self.page.goto(f"http://127.0.0.1:{server.admin_port}/console")

    def _console_message(self, message: Any) -> None:
        # Chromium logs every 404 it fetches; GET .../rollouts/current answers 404 for a model
        # that never had a rollout, which the page expects.
        if message.type == "error" and "status of 404" not in message.text:
            self.errors.append(message.text)

    def sign_in(self, token: str = ADMIN_TOKEN, actor: str = "alice") -> None:
        self.page.fill("#actor", actor)
        self.page.fill("#token", token)
        self.page.click("#signin button[type=submit]")

    def model(self, name: str = "simple") -> Any:
        return self.page.locator(f'section[data-model="{name}"]')

    def confirm(self, reason: str) -> None:
        self.page.wait_for_selector("#confirm[open]")
        self.page.fill("#confirm-reason", reason)
        self.page.click("#confirm-ok")

    def foreign_requests(self) -> list[str]:
        origin = f"http://127.0.0.1:{self.server.admin_port}"
        return [u for u in self.requests if urlsplit(u).scheme != "data" and not u.startswith(origin + "/")]

    def close(self) -> None:
        self.context.close()


def screenshot(console: Console, tmp_path: Path, name: str) -> Path:
    path = tmp_path / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    console.page.screenshot(path=str(path))
    return path


def test_the_console_shows_the_route_changes_it_and_rolls_it_back(
    browser: Any, server: RunningServer, tmp_path: Path
) -> None:
    for _ in range(20):  # figures for the table
        request(server.port, "POST", "/v2/models/simple/infer", INPUTS)
    console = Console(browser, server)
    try:
        console.sign_in()
        model = console.model()
        model.wait_for()
        assert model.locator("h2").inner_text() == "simple"
        assert model.locator(".weights").inner_text().strip() == "v2 100%"
        assert model.locator("tr[data-version='1'] .state").inner_text() == "READY"
        assert (
            model.locator("tr[data-version='2'] td[data-label=sha256]").get_attribute("title")
            == (admin(server, "GET", "/admin/models").json()["models"][0]["versions"]["2"]["sha256"])
        )
        # A second poll gives the figures something to difference.
        for _ in range(10):
            request(server.port, "POST", "/v2/models/simple/infer", INPUTS)
        model.locator("tr[data-version='2'] polyline").first.wait_for()
        screenshot(console, tmp_path, "overview-1280x800")

        # 90/10 from the page, with a reason that holds HTML.
        model.locator("input[name=w1]").fill("90")
        model.locator("input[name=w2]").fill("10")
        model.get_by_role("button", name="Set weights").click()
        assert "v1 90%" in console.page.locator("#confirm-text").inner_text()
        console.confirm(HOSTILE)
        wait_until(lambda: route_of(server)["weights"] == {"1": 90, "2": 10}, "the route 90/10")
        console.expect(model.locator(".weights")).to_contain_text("v1 90%")
        reason = model.locator("td.reason").first
        assert reason.inner_text() == HOSTILE  # shown as text: the markup did not become elements
        assert console.page.locator("main img, main script").count() == 0
        assert console.page.evaluate("window.pwned === undefined")
        history = admin(server, "GET", "/admin/models/simple/history").json()["history"]
        assert history[-1]["actor"] == "alice" and history[-1]["reason"] == HOSTILE
        assert history[-1]["after"]["weights"] == {"1": 90, "2": 10}
        canary = screenshot(console, tmp_path, "canary-1280x800")
        if os.environ.get("TENSORGATE_CONSOLE_DOCS_SCREENSHOT"):  # the tree is written to on purpose only
            shutil.copyfile(canary, ROOT / "docs" / "console.png")
        model.locator(".history").scroll_into_view_if_needed()
        screenshot(console, tmp_path, "history")

        # Roll back from the page: the route before the change is back.
        model.get_by_role("button", name="Roll back the last change").click()
        assert "v2 100%" in console.page.locator("#confirm-text").inner_text()
        console.confirm("canary looked wrong")
        wait_until(lambda: route_of(server)["weights"] == {"2": 100}, "the rollback")
        console.expect(model.locator(".weights")).to_have_text("v2 100%")
        assert admin(server, "GET", "/admin/models/simple/history").json()["history"][-1]["action"] == "rollback"

        # A chosen change: the route in force after it comes back.
        seq = next(e["seq"] for e in admin(server, "GET", "/admin/models/simple/history").json()["history"]
                   if e["action"] == "route")  # fmt: skip
        model.get_by_role("button", name=f"Restore #{seq}").click()
        console.confirm("try the canary again")
        wait_until(lambda: route_of(server)["weights"] == {"1": 90, "2": 10}, f"the route of change #{seq}")
        console.expect(model.locator(".weights")).to_contain_text("v1 90%")

        assert console.foreign_requests() == []
        assert any(u.endswith("/admin/stats") for u in console.requests)
        assert console.errors == []
    finally:
        console.close()


def test_a_wrong_token_shows_a_clear_error_and_changes_nothing(
    browser: Any, server: RunningServer, tmp_path: Path
) -> None:
    before = route_of(server)
    console = Console(browser, server)
    try:
        console.sign_in("not-the-admin-token-at-all")
        error = console.page.locator("#error")
        error.wait_for()
        assert "admin token was refused" in error.inner_text()
        assert console.page.locator("section[data-model]").count() == 0

        # Signed in, then the token changes (rotated, mistyped): the last figures stay, actions are refused.
        console.sign_in()
        console.model().wait_for()
        console.expect(error).to_be_hidden()
        console.sign_in("not-the-admin-token-at-all")
        console.model().locator("input[name=w1]").fill("50")
        console.model().locator("input[name=w2]").fill("50")
        console.model().get_by_role("button", name="Set weights").click()
        console.confirm("should not happen")
        console.expect(error).to_contain_text("Refused: set the route")
        assert "admin token was refused" in error.inner_text()
        screenshot(console, tmp_path, "wrong-token")
        assert route_of(server) == before
        assert all(
            e["action"] != "route" for e in admin(server, "GET", "/admin/models/simple/history").json()["history"]
        )
        assert console.foreign_requests() == []
        # The token never leaves the header: not in a URL, not in a cookie.
        assert all(ADMIN_TOKEN not in u for u in console.requests)
        assert console.context.cookies() == []
    finally:
        console.close()


def test_weights_that_do_not_sum_to_100_are_refused_in_the_page(
    browser: Any, server: RunningServer, tmp_path: Path
) -> None:
    console = Console(browser, server, width=390, height=844)  # a phone
    try:
        console.sign_in()
        console.model().wait_for()
        screenshot(console, tmp_path, "phone-390x844")
        console.model().locator("input[name=w1]").fill("30")
        console.model().get_by_role("button", name="Set weights").click()
        assert "sum to 130" in console.page.locator("#error").inner_text()
        assert console.page.locator("#confirm[open]").count() == 0
        assert route_of(server)["weights"] == {"2": 100}
        # A refresh (every 3 s) keeps what is being typed, and the focus and cursor in it.
        sticky = console.model().locator("input[name=sticky]")
        sticky.click()
        console.page.keyboard.type("x-us")
        status = console.page.locator("#status")
        console.expect(status).to_contain_text("updated")
        console.expect(status).not_to_have_text(status.inner_text())
        console.page.keyboard.type("er-id")
        assert sticky.input_value() == "x-user-id"
        assert sticky.evaluate("node => node === document.activeElement")
        # Nothing on a phone is wider than the screen but the tables' own scroll boxes.
        width = console.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
    finally:
        console.close()


def test_online_drift_shows_per_feature(browser: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    config = '[drift]\nreference = "reference.npy"\nwindow = 200\ninterval_s = 0.2\nsustain = 1000\n'
    write_model(tmp_path / "models", "m", 1, identity("FP32"), config=config)
    np.save(tmp_path / "models" / "m" / "reference.npy", rng.normal(size=(2000, 4)).astype(np.float32))
    with serve(tmp_path / "models", predlog_flush_interval_s=0.01) as server:

        def drifted() -> bool:
            for row in np.add(rng.normal(size=(50, 4)), [0, 0, 0, 2]):  # feature 3 moves
                doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]}
                assert request(server.port, "POST", "/v2/models/m/infer", orjson.dumps(doc)).status == 200
            drift = admin(server, "GET", "/admin/stats").json()["drift"]
            return len(drift) == 4 and max(d["psi"] for d in drift) > 1.0

        wait_until(drifted, "the drift gauges")
        console = Console(browser, server)
        try:
            console.sign_in()
            rows = console.model("m").locator(".drift tbody tr")
            console.expect(rows).to_have_count(4)
            shifted = console.model("m").locator(".drift tbody tr", has_text="INPUT0[3]")
            console.expect(shifted.locator("td.bad")).to_have_count(1)
            screenshot(console, tmp_path, "drift")
            assert console.errors == []
        finally:
            console.close()


def test_every_action_from_the_page(browser: Any, tmp_path: Path) -> None:
    root = build_repository(tmp_path / "models")
    write_model(root, "simple", 3, add_sub(200))
    with serve(root) as server:
        assert route_of(server)["weights"] == {"3": 100}
        console = Console(browser, server)
        try:
            console.sign_in()
            model = console.model()
            row = lambda v: model.locator(f"tr[data-version='{v}']")  # noqa: E731

            row(1).get_by_role("button", name="Unload").click()
            console.confirm("not needed")
            console.expect(row(1).locator(".state")).to_have_text("not loaded")
            assert "1" not in admin(server, "GET", "/admin/models").json()["models"][0]["versions"]

            row(1).get_by_role("button", name="Load").click()
            console.confirm("needed after all")
            console.expect(row(1).locator(".state")).to_have_text("READY")

            model.locator("select[name=shadow]").select_option("1")
            model.locator("input[name=fraction]").fill("0.5")
            model.get_by_role("button", name="Add shadow").click()
            console.confirm("mirror half")
            wait_until(lambda: route_of(server)["shadow"] == {"1": 0.5}, "the shadow")
            console.expect(model.locator(".shadows")).to_contain_text("shadow v1")

            # Weights and a sticky header: the shadow stays.
            console.expect(model.locator("input[name=w2]")).to_be_visible()
            model.locator("input[name=w2]").fill("10")
            model.locator("input[name=w3]").fill("90")
            model.locator("input[name=sticky]").fill("x-user-id")
            model.get_by_role("button", name="Set weights").click()
            console.confirm("canary")
            wait_until(lambda: route_of(server)["weights"] == {"2": 10, "3": 90}, "the canary")
            route = route_of(server)
            assert route["shadow"] == {"1": 0.5} and route["sticky_header"] == "x-user-id"

            # Removing the shadow keeps the weights and the sticky header.
            console.expect(model.locator(".shadows")).to_contain_text("shadow v1")
            model.get_by_role("button", name="Remove shadow").click()
            console.confirm("enough")
            wait_until(lambda: route_of(server)["shadow"] == {}, "no shadow")
            route = route_of(server)
            assert route["weights"] == {"2": 10, "3": 90} and route["sticky_header"] == "x-user-id"

            console.expect(row(1).get_by_role("button", name="Swap to")).to_be_visible()
            row(1).get_by_role("button", name="Swap to").click()
            console.confirm("promote")
            wait_until(lambda: route_of(server)["weights"] == {"1": 100}, "the swap")
            console.expect(model.locator(".weights")).to_have_text("v1 100%")
            screenshot(console, tmp_path, "after-swap")

            actions = [e["action"] for e in admin(server, "GET", "/admin/models/simple/history").json()["history"]]
            assert actions == ["unload", "load", "route", "route", "route", "swap"]
            assert console.foreign_requests() == [] and console.errors == []
        finally:
            console.close()


def rollout_of(server: RunningServer) -> dict[str, Any]:
    reply = admin(server, "GET", "/admin/models/simple/rollouts/current")
    assert reply.status == 200, reply.body
    doc: dict[str, Any] = reply.json()
    return doc


def test_a_rollout_shows_and_is_controlled_from_the_page(browser: Any, server: RunningServer, tmp_path: Path) -> None:
    spec = {
        "to": "1",
        "steps": [{"weight": 10, "pause_s": 3600}],
        "analysis": {"interval_s": 0.5, "max_error_rate": 0.5},
        "reason": HOSTILE,
    }
    assert admin(server, "POST", "/admin/models/simple/rollouts", spec).status == 201
    console = Console(browser, server)
    try:
        console.sign_in()
        box = console.model().locator(".rollout")
        console.expect(box.locator(".phase")).to_have_text("progressing")
        console.expect(box).to_contain_text("v2 → v1 · step 1 of 1")
        console.expect(box).to_contain_text(HOSTILE)  # the reason, as text
        console.expect(box.locator("table.checks")).to_contain_text("error_rate")
        assert console.page.locator("main img, main script").count() == 0
        screenshot(console, tmp_path, "rollout")

        box.get_by_role("button", name="Pause").click()
        console.confirm("look closer")
        wait_until(lambda: rollout_of(server)["phase"] == "paused", "the pause")
        console.expect(box.locator(".phase")).to_have_text("paused")
        box.get_by_role("button", name="Resume").click()
        console.confirm("fine")
        wait_until(lambda: rollout_of(server)["phase"] == "progressing", "the resume")
        console.expect(box.locator(".phase")).to_have_text("progressing")
        box.get_by_role("button", name="Promote").click()
        console.confirm("ship it")
        wait_until(lambda: rollout_of(server)["phase"] == "promoted", "the promotion")
        assert route_of(server)["weights"] == {"1": 100}
        console.expect(box.locator(".phase")).to_have_text("promoted")
        assert box.get_by_role("button", name="Abort").count() == 0

        spec["to"] = "2"
        assert admin(server, "POST", "/admin/models/simple/rollouts", spec).status == 201
        console.expect(box.locator(".phase")).to_have_text("progressing")
        box.get_by_role("button", name="Abort").click()
        console.confirm("not today")
        wait_until(lambda: rollout_of(server)["phase"] == "aborted", "the abort")
        assert route_of(server)["weights"] == {"1": 100}
        console.expect(box.locator(".phase")).to_have_text("aborted")
        assert console.foreign_requests() == [] and console.errors == []
    finally:
        console.close()
