"""The prediction log: complete, exact under faults (a full or read-only disk), rotated, redacted."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.auth import SecretError, hash_key, secret_file
from gateway.predlog.files import LogFile
from gateway.predlog.records import PredictionRecord, RecordEncoder, RecordMeta
from gateway.predlog.writer import PredictionLog, entry_bytes
from gateway.registry.config import LoggingConfig
from tests.disks import remount
from tests.onnx_models import add_sub, write_model
from tests.rawhttp import Reply, request, send_and_leave
from tests.server import RunningServer, admin, prediction_log, serve


def body(values: list[float], rid: str | None = None) -> bytes:
    doc: dict[str, Any] = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [int(v) for v in values]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ]
    }
    if rid is not None:
        doc["id"] = rid
    return orjson.dumps(doc)


def infer(server: RunningServer, payload: bytes, path: str = "/v2/models/simple/infer") -> Reply:
    return request(server.port, "POST", path, payload, {"Content-Type": "application/json"})


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in request(server.port, "GET", "/metrics").body.decode().splitlines():
        ours = line.startswith((name + "{", name + " "))
        if ours and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_written(server: RunningServer, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(server, "tensorgate_predlog_queue_depth") > 0:
        assert time.monotonic() < deadline, "the prediction log never drained"
        time.sleep(0.02)
    time.sleep(0.1)  # the batch taken last is being written


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for version in (1, 2, 3):
        write_model(root, "simple", version, add_sub(100 * (version - 1)), config=None)
    return root


# -- end to end --------------------------------------------------------------------------------


def test_every_request_is_logged_once_with_input_output_version_and_role(repository: Path, tmp_path: Path) -> None:
    logs = tmp_path / "predictions"
    with serve(repository, log_dir=logs) as server:
        for version in (1, 2):
            assert admin(server, "POST", f"/admin/models/simple/versions/{version}/load", {}).status == 200
        route = {"weights": {"2": 60, "3": 40}, "shadow": {"1": 1.0}}
        assert admin(server, "PUT", "/admin/models/simple/route", route).status == 200
        replies: dict[str, Any] = {}
        with ThreadPoolExecutor(8) as pool:
            sent = {f"r{i}": [float(i + j) for j in range(16)] for i in range(60)}
            for rid, reply in zip(sent, pool.map(lambda r: infer(server, body(sent[r], r)), sent), strict=True):
                assert reply.status == 200
                replies[rid] = reply.json()
        pinned = infer(server, body([7.0] * 16, "pinned-1"), "/v2/models/simple/versions/2/infer")
        assert pinned.status == 200
        bad = infer(server, b'{"inputs": []}')
        assert bad.status == 400
        named = infer(server, body([1.0] * 15, "bad-1"))  # valid JSON, a wrong shape: refused, still named
        assert named.status == 400 and named.headers.get("x-request-id") == "bad-1"
        time.sleep(0.3)
        wait_written(server)
        written = metric(server, "tensorgate_predlog_records_total", model="simple")
        # Version 1 serves shadow copies only: its runtime calls are in its compute time and batch sizes.
        shadow_calls = metric(server, "tensorgate_compute_duration_seconds_count", model="simple", version="1")
        assert shadow_calls >= 1 and shadow_calls == metric(
            server, "tensorgate_batch_size_count", model="simple", version="1"
        )
    records = prediction_log(logs)
    assert written == len(records)
    primary = [r for r in records if r["role"] in ("primary", "canary") and r["status"] == 200]
    shadows = [r for r in records if r["role"] == "shadow"]
    assert sorted(r["request_id"] for r in primary) == sorted(sent)
    assert sorted(r["request_id"] for r in shadows) == sorted(sent)  # each copy names its request
    for record in primary:
        rid = record["request_id"]
        assert record["model"] == "simple" and record["status"] == 200 and record["latency_ms"] > 0
        assert record["version"] == replies[rid]["model_version"]
        assert record["role"] == {"2": "primary", "3": "canary"}[record["version"]]  # 60% is the primary
        assert record["route_seq"] >= 1
        assert record["inputs"]["INPUT0"] == {
            "datatype": "INT32",
            "shape": [1, 16],
            "data": [int(v) for v in sent[rid]],
        }
        answer = {o["name"]: o["data"] for o in replies[rid]["outputs"]}
        assert record["outputs"]["OUTPUT0"]["data"] == answer["OUTPUT0"]
        assert record["ts"].endswith("Z") and "T" in record["ts"]
    for record in shadows:
        assert record["version"] == "1" and record["status"] == 200
        assert record["outputs"]["OUTPUT0"]["data"] == [int(v) + 1 for v in sent[record["request_id"]]]
    (pin,) = [r for r in records if r["role"] == "pinned"]
    assert pin["request_id"] == "pinned-1" and pin["version"] == "2" and pin["route_seq"] == 0  # no route chose it
    failed = sorted((r for r in records if r["status"] == 400), key=lambda r: r["request_id"] != "bad-1")
    assert len(failed) == 2 and failed[0]["request_id"] == "bad-1"
    for record in failed:
        assert record["inputs"] is None and record["outputs"] is None and record["version"] in ("2", "3")
    assert {p.parent.name for p in logs.rglob("*.jsonl")} == {"1", "2", "3"}  # <log_dir>/<model>/<version>/


def test_a_shadow_copy_its_version_refuses_is_logged_and_counted(tmp_path: Path) -> None:
    """A copy whose request does not fit the shadow version's inputs: a 400 record, in the accounting."""
    from tests.onnx_models import identity

    root = tmp_path / "models"
    write_model(root, "simple", 1, add_sub())
    write_model(root, "simple", 2, identity("FP32", [-1, 8]))  # other inputs: the copy cannot be decoded
    logs = tmp_path / "predictions"
    with serve(root, log_dir=logs) as server:
        assert admin(server, "POST", "/admin/models/simple/versions/1/load", {}).status == 200
        route = {"weights": {"1": 100}, "shadow": {"2": 1.0}}
        assert admin(server, "PUT", "/admin/models/simple/route", route).status == 200
        for i in range(3):
            assert infer(server, body([float(i)] * 16, f"s{i}")).status == 200
        time.sleep(0.3)
        wait_written(server)
        written = metric(server, "tensorgate_predlog_records_total", model="simple")
        dropped = metric(server, "tensorgate_predlog_dropped_total", model="simple")
    records = prediction_log(logs)
    assert written == len(records) == 6 and dropped == 0
    shadows = sorted((r for r in records if r["role"] == "shadow"), key=lambda r: r["request_id"])
    assert [r["request_id"] for r in shadows] == ["s0", "s1", "s2"]  # each joins its primary
    for record in shadows:
        assert record["version"] == "2" and record["status"] == 400
        assert record["inputs"] is None and record["outputs"] is None


def test_a_client_that_leaves_before_its_answer_is_logged_and_counted_as_499(tmp_path: Path) -> None:
    from tests.onnx_models import slow_matmul

    root = tmp_path / "models"
    write_model(root, "slow", 1, slow_matmul(), '[onnx]\ngraph_optimization = "disable"\n')  # ~0.25 s a call
    logs = tmp_path / "predictions"
    with serve(root, log_dir=logs) as server:
        tensor = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
        payload = orjson.dumps({"id": "gone-1", "inputs": [tensor]})
        send_and_leave(server.port, "/v2/models/slow/infer", payload, 0.05)  # a call takes about 0.25 s
        deadline = time.monotonic() + 60
        while metric(server, "tensorgate_requests_total", model="slow") < 1:
            assert time.monotonic() < deadline, "the request was never counted"
            time.sleep(0.05)
        assert metric(server, "tensorgate_requests_total", model="slow", code="499") == 1
        assert metric(server, "tensorgate_requests_total", model="slow", code="200") == 0
        wait_written(server)
    (record,) = prediction_log(logs)
    assert record["request_id"] == "gone-1" and record["status"] == 499


def test_redaction_and_sampling_from_config_toml(tmp_path: Path) -> None:
    config = '[logging]\nexclude_inputs = ["INPUT1"]\nhash_inputs = ["INPUT0"]\n'
    write_model(tmp_path / "models", "simple", 1, add_sub(), config=config)
    write_model(tmp_path / "models", "sampled", 1, add_sub(), config="[logging]\nsample = 0.25\n")
    with serve(tmp_path / "models", log_dir=tmp_path / "logs", rng=random.Random(7)) as server:
        assert infer(server, body([5.0] * 16, "a")).status == 200
        assert infer(server, body([5.0] * 16, "b")).status == 200
        for i in range(200):
            assert infer(server, body([1.0] * 16, f"s{i}"), "/v2/models/sampled/infer").status == 200
        wait_written(server)
        sampled_out = metric(server, "tensorgate_predlog_dropped_total", model="sampled", reason="sampled")
        kept = metric(server, "tensorgate_predlog_records_total", model="sampled")
    records = {r["request_id"]: r for r in prediction_log(tmp_path / "logs" / "simple")}
    assert set(records["a"]["inputs"]) == {"INPUT0"}  # INPUT1 left out
    hashed = records["a"]["inputs"]["INPUT0"]
    assert hashed["hashed"] is True and len(hashed["data"]) == 16 and hashed["data"][0] != 5
    assert hashed["data"] == records["b"]["inputs"]["INPUT0"]["data"]  # keyed, stable: joinable
    assert kept + sampled_out == 200 and 20 < kept < 80
    assert len(prediction_log(tmp_path / "logs" / "sampled")) == kept


# -- faults: a full disk, a read-only disk, the block policy ------------------------------------


def test_a_full_disk_never_fails_a_request_and_every_drop_is_counted(repository: Path, tiny_disk: Path) -> None:
    with serve(repository, log_dir=tiny_disk, predlog_flush_interval_s=0.01) as server:
        served = 0
        for i in range(400):  # ~400 bytes a record: 64 KiB fills after ~150
            assert infer(server, body([float(i)] * 16, f"f{i}")).status == 200
            served += 1
        wait_written(server)
        written = metric(server, "tensorgate_predlog_records_total", model="simple")
        full = metric(server, "tensorgate_predlog_dropped_total", model="simple", reason="disk_full")
        assert full > 0 and written > 0
        assert written + metric(server, "tensorgate_predlog_dropped_total", model="simple") == served
        assert len(prediction_log(tiny_disk)) >= written - 1  # the last write may have been cut short
        # Space comes back: logging resumes by itself.
        for path in tiny_disk.rglob("*.jsonl"):
            path.unlink()
        for i in range(20):
            assert infer(server, body([1.0] * 16, f"after{i}")).status == 200
        wait_written(server)
        ids = {r["request_id"] for r in prediction_log(tiny_disk)}
        assert {f"after{i}" for i in range(20)} <= ids
        total = metric(server, "tensorgate_predlog_records_total", model="simple")
        dropped = metric(server, "tensorgate_predlog_dropped_total", model="simple")
        assert total + dropped == served + 20


def test_a_read_only_disk_drops_with_its_reason_then_recovers(repository: Path, tiny_disk: Path) -> None:
    # Remounting needs no file open for writing: the disk goes read-only before the first record.
    with serve(repository, log_dir=tiny_disk, predlog_flush_interval_s=0.01) as server:
        remount(tiny_disk, "ro")
        try:
            for i in range(30):
                assert infer(server, body([1.0] * 16, f"ro{i}")).status == 200
            wait_written(server)
            assert metric(server, "tensorgate_predlog_dropped_total", model="simple", reason="read_only") == 30
        finally:
            remount(tiny_disk, "rw")
        for i in range(5):
            assert infer(server, body([1.0] * 16, f"rw{i}")).status == 200
        wait_written(server)
        assert metric(server, "tensorgate_predlog_records_total", model="simple") == 5
    ids = {r["request_id"] for r in prediction_log(tiny_disk)}
    assert ids == {f"rw{i}" for i in range(5)}


def test_the_block_policy_holds_requests_until_the_sink_recovers_and_loses_nothing(
    repository: Path, tiny_disk: Path
) -> None:
    settings = {"predlog_policy": "block", "predlog_queue_size": 4, "predlog_flush_interval_s": 0.01}
    with serve(repository, log_dir=tiny_disk, **settings) as server:  # type: ignore[arg-type]
        remount(tiny_disk, "ro")
        try:
            with ThreadPoolExecutor(12) as pool:
                futures = [pool.submit(infer, server, body([1.0] * 16, f"b{i}")) for i in range(12)]
                time.sleep(1.0)
                done = sum(f.done() for f in futures)
                # At most the queue (4) and the batch the writer holds while it retries (up to
                # the 4 it found queued) are answered; the rest wait for the disk.
                assert done <= 8, "requests ran although the log had no room"
                remount(tiny_disk, "rw")
                assert all(f.result(timeout=30).status == 200 for f in futures)
        finally:
            remount(tiny_disk, "rw")
        wait_written(server)
        assert metric(server, "tensorgate_predlog_dropped_total") == 0
    assert {r["request_id"] for r in prediction_log(tiny_disk)} == {f"b{i}" for i in range(12)}


# -- the writer itself: rotation, compression, encoding -------------------------------------------


def entry(i: int, model: str = "m", ts: float = 1_764_237_600.5) -> PredictionRecord:
    x = np.full((1, 4), i, np.float32)
    return PredictionRecord(ts, f"id{i}", model, "1", "primary", 1, {"x": x}, {"x": "FP32"}, [("y", x * 2)],
                            {"y": "FP32"}, 200, 0.001, RecordMeta(LoggingConfig()))  # fmt: skip


def test_rotation_by_size_and_time_with_compression(tmp_path: Path) -> None:
    now = [1_000.0]
    umask = os.umask(0o022)  # the usual umask, under which gzip.open would make the .gz world-readable
    os.umask(umask)

    async def run() -> PredictionLog:
        log = PredictionLog(
            tmp_path, hash_key=b"k" * 16, rotate_bytes=2048, rotate_s=60, compress=True,
            flush_interval_s=0.005, clock=lambda: now[0],
        )  # fmt: skip
        log.start()
        for i in range(100):
            log.offer(entry(i))
            if i % 10 == 9:
                await asyncio.sleep(0.02)
        now[0] += 120  # an hour passes: the next write starts a new file
        log.offer(entry(100))
        await asyncio.sleep(0.05)
        await log.close()
        return log

    os.umask(0o022)
    try:
        log = asyncio.run(run())
    finally:
        os.umask(umask)
    files = sorted((tmp_path / "m" / "1").iterdir())
    assert sum(p.suffix == ".gz" for p in files) >= 4 and files[-1].suffix == ".jsonl"
    assert all(p.name.endswith((".jsonl", ".jsonl.gz")) for p in files)  # no temporary file left
    assert {p.stat().st_mode & 0o777 for p in files} == {0o640}  # the .gz keeps the plain file's mode
    records = prediction_log(tmp_path)
    assert [r["request_id"] for r in sorted(records, key=lambda r: int(r["request_id"][2:]))] == [
        f"id{i}" for i in range(101)
    ]
    assert log.records() == {"m": 101} and log.dropped() == {}


def test_bytes_cannot_break_or_forge_a_line_and_nan_is_null() -> None:
    encoder = RecordEncoder(b"k" * 16)
    forged = b'x"}\n{"request_id": "forged'
    text = np.array([[forged, b"ok"]], dtype=object)
    binary = np.array([b"\xff\xfe\n"], dtype=object)
    line = encoder.encode(
        PredictionRecord(0.0, "r\n1", "m", "1", "primary", 0, {"t": text, "b": binary}, {"t": "BYTES", "b": "BYTES"},
         [("y", np.array([np.nan, np.inf, 1.5], np.float32))], {"y": "FP32"}, 200, 0.0, RecordMeta(LoggingConfig()))
    )  # fmt: skip
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    record = orjson.loads(line)
    assert record["request_id"] == "r\n1"
    assert record["inputs"]["t"]["data"] == [forged.decode(), "ok"] and "encoding" not in record["inputs"]["t"]
    assert record["inputs"]["b"] == {"datatype": "BYTES", "shape": [1], "data": ["//4K"], "encoding": "base64"}
    assert record["outputs"]["y"]["data"] == [None, None, 1.5]


def test_a_torn_last_line_is_skipped_by_readers(tmp_path: Path) -> None:
    directory = tmp_path / "m" / "1"
    directory.mkdir(parents=True)
    encoder = RecordEncoder(b"k" * 16)
    whole = encoder.encode(entry(1)) + encoder.encode(entry(2))
    (directory / "a.jsonl").write_bytes(whole + encoder.encode(entry(3))[:40])
    assert [r["request_id"] for r in prediction_log(tmp_path)] == ["id1", "id2"]


# -- a full disk in the middle of a write; compression on a full disk --------------------------


def ballast(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file until about ``leave`` bytes are free (0: completely full)."""
    path = disk / "ballast"
    with path.open("wb") as stream:
        while True:
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            if free <= leave:
                break
            try:
                stream.write(b"\0" * min(4096, free - leave))
                stream.flush()
            except OSError:
                break
    return path


def log_lines(directory: Path) -> list[bytes]:
    return [line for path in sorted(directory.rglob("*.jsonl")) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_lines_of_a_short_write_count_as_written_once(tiny_disk: Path, policy: str) -> None:
    """The disk fills in the middle of one write: what reached it is counted written, never rewritten."""
    space = ballast(tiny_disk, 8192)
    logs = tiny_disk / "log"

    async def run() -> PredictionLog:
        log = PredictionLog(logs, hash_key=b"k" * 32, policy=policy, flush_interval_s=0.3)
        log.start()
        for i in range(100):  # ~400 bytes each, queued before the writer wakes: one write of ~40 KB
            log.offer(entry(i))
        deadline = time.monotonic() + 30
        while not log.records() and not log.dropped():
            assert time.monotonic() < deadline, "the writer never wrote"
            await asyncio.sleep(0.05)
        if policy == "block":
            assert 0 < log.records()["m"] < 100  # part written and counted, the rest waits for room
            space.unlink()  # room again: the writer's retry writes the rest
        await log.close()
        return log

    log = asyncio.run(run())
    lines = log_lines(logs)
    ids = [orjson.loads(line)["request_id"] for line in lines]  # every line whole: a torn one was cut off
    written = log.records().get("m", 0)
    assert written == len(ids) == len(set(ids))  # exact, and no record twice
    if policy == "block":
        assert sorted(ids) == sorted(f"id{i}" for i in range(100)) and log.dropped() == {}
    else:
        assert 0 < written < 100 and written + log.dropped()[("m", "disk_full")] == 100


def test_compression_on_a_full_disk_keeps_the_plain_file(tiny_disk: Path) -> None:
    file = LogFile(tiny_disk / "m" / "1", rotate_bytes=1 << 20, rotate_s=3600, compress=True)
    encoder = RecordEncoder(b"k" * 32)
    file.write(b"".join(encoder.encode(entry(i)) for i in range(3)))
    ballast(tiny_disk, 0)
    file.rotate()  # the .gz cannot be written: the plain file stays, whole, and nothing half-made
    names = [p.name for p in (tiny_disk / "m" / "1").iterdir()]
    assert len(names) == 1 and names[0].endswith(".jsonl")
    assert [r["request_id"] for r in prediction_log(tiny_disk / "m")] == ["id0", "id1", "id2"]


# -- the block policy: a deadline, and waiters count as in flight ------------------------------


def test_block_waiters_count_in_flight_and_get_503_after_the_deadline(repository: Path, tiny_disk: Path) -> None:
    settings = {
        "predlog_policy": "block", "predlog_queue_size": 4, "predlog_flush_interval_s": 0.01,
        "predlog_block_timeout_s": 3.0,
    }  # fmt: skip
    with serve(repository, log_dir=tiny_disk, **settings) as server:  # type: ignore[arg-type]
        remount(tiny_disk, "ro")
        try:
            with ThreadPoolExecutor(12) as pool:
                started = time.monotonic()
                futures = [pool.submit(infer, server, body([1.0] * 16, f"w{i}")) for i in range(12)]
                time.sleep(1.0)
                waiting = 12 - sum(f.done() for f in futures)
                assert waiting >= 4  # the queue (4) and the writer's batch (up to 4) were answered
                # Waiting for room in the log is being in flight: max_concurrent_requests bounds it.
                assert metric(server, "tensorgate_inflight_requests") >= waiting - 1
                replies = [f.result(timeout=30) for f in futures]
                took = time.monotonic() - started
        finally:
            remount(tiny_disk, "rw")
        refused = [r for r in replies if r.status == 503]
        assert len(refused) == waiting and took < 20
        for reply in refused:
            assert reply.headers["retry-after"] == "1" and "prediction log" in orjson.loads(reply.body)["error"]
        assert metric(server, "tensorgate_predlog_block_timeouts_total") == waiting
        answered = {f"w{i}" for i, r in enumerate(replies) if r.status == 200}
        wait_written(server, timeout_s=30)
        assert metric(server, "tensorgate_predlog_dropped_total") == 0
        assert metric(server, "tensorgate_inflight_requests") == 0
    assert {r["request_id"] for r in prediction_log(tiny_disk)} == answered  # a refused request is not logged


# -- byte budgets ----------------------------------------------------------------------------------


def big_entry(i: int, columns: int = 1000) -> PredictionRecord:
    x = np.full((1, columns), i, np.float32)
    return PredictionRecord(0.0, f"big{i}", "m", "1", "primary", 1, {"x": x}, {"x": "FP32"}, [("y", x)], {"y": "FP32"},
            200, 0.001, RecordMeta(LoggingConfig()))  # fmt: skip


def test_the_queue_is_bounded_by_bytes_as_well_as_records(tmp_path: Path) -> None:
    size = entry_bytes(big_entry(0))
    assert size >= 8000  # two arrays of 4,000 bytes, and the entry itself

    async def run() -> tuple[PredictionLog, list[int]]:
        # The writer sleeps (a slow sink): what is offered stays queued.
        log = PredictionLog(tmp_path, hash_key=b"k" * 32, queue_bytes=3 * size, flush_interval_s=10)
        log.start()
        for i in range(10):
            log.offer(big_entry(i))
        held = [log.queue_depth(), log.queue_bytes()]
        await log.close()
        return log, held

    log, (depth, queued) = asyncio.run(run())
    assert depth == 3 and queued == 3 * size
    assert log.records() == {"m": 3} and log.dropped() == {("m", "queue_full"): 7}  # counted as today
    assert log.queue_bytes() == 0

    async def alone() -> PredictionLog:
        # A record larger than the whole budget is still taken when nothing else is queued.
        log = PredictionLog(tmp_path / "alone", hash_key=b"k" * 32, queue_bytes=1000, flush_interval_s=10)
        log.start()
        log.offer(big_entry(0))
        log.offer(big_entry(1))
        await log.close()
        return log

    small = asyncio.run(alone())
    assert small.records() == {"m": 1} and small.dropped() == {("m", "queue_full"): 1}


def test_the_byte_budget_drops_requests_records_end_to_end(repository: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    # ~700 bytes a record: 3,000 bytes hold 4; the writer sleeps 10 s between rounds.
    with serve(repository, log_dir=logs, predlog_queue_bytes=3000, predlog_flush_interval_s=10) as server:
        for i in range(20):
            assert infer(server, body([1.0] * 16, f"q{i}")).status == 200
        queued = metric(server, "tensorgate_predlog_queue_bytes")
        full = metric(server, "tensorgate_predlog_dropped_total", model="simple", reason="queue_full")
        assert 0 < queued <= 3000 and full >= 10
    written = len(prediction_log(logs))
    assert written + full == 20  # the queued records were written at shutdown


# -- the hash key ----------------------------------------------------------------------------------


def test_the_hash_key_is_generated_once_durably_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "state" / "predlog-hash-key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(hash_key(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and 32 <= len(keys[0]) <= 64  # processes starting together agree
    assert path.stat().st_mode & 0o777 == 0o600
    assert os.listdir(path.parent) == ["predlog-hash-key"]  # no temporary file left behind
    assert hash_key(path) == keys[0]
    for bad in (b"", b"\n", b"k" * 31 + b"\n", b"k" * 65):
        path.write_bytes(bad)
        with pytest.raises(SecretError, match="must hold 32 to 64"):
            hash_key(path)
    path.write_bytes(b"k" * 64 + b"\n")  # a trailing newline is not part of the key
    assert hash_key(path) == b"k" * 64
    token, created = secret_file(tmp_path / "state" / "admin-token")  # the token shares the writer
    assert created and secret_file(tmp_path / "state" / "admin-token") == (token, False)
    assert (tmp_path / "state" / "admin-token").stat().st_mode & 0o777 == 0o600


def test_an_empty_hash_key_file_stops_the_server_with_a_clear_error(repository: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "predlog-hash-key").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--state-dir", str(state),
         "--log-dir", str(tmp_path / "logs"), "--port", "0", "--log-format", "text"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "TENSORGATE_ADMIN_TOKEN": "test-admin-token-0123456789"},
    )  # fmt: skip
    assert done.returncode != 0
    assert "predlog-hash-key holds 0 bytes; it must hold 32 to 64" in done.stderr
