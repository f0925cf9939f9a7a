"""``tensorgate drift``: shifted features are flagged (exit 1), others not; reports in JSON and HTML."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.drift.data import progress_printer, read_log
from gateway.drift.stats import compare, psi
from gateway.predlog.records import PredictionRecord, RecordEncoder, RecordMeta
from gateway.registry.config import LoggingConfig
from tests.onnx_models import identity, write_model
from tests.rawhttp import request
from tests.required import server_unavailable
from tests.server import serve

ROOT = Path(__file__).resolve().parent.parent


def drift(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "drift", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def write_log(directory: Path, rows: np.ndarray, *, ts: float = 1_764_237_600.0, step: float = 1.0) -> None:
    """A prediction log of ``rows`` (one request each) in the gateway's own format."""
    target = directory / "m" / "1"
    target.mkdir(parents=True, exist_ok=True)
    encoder = RecordEncoder(b"k" * 16)
    with (target / f"{int(ts)}-1-0001.jsonl").open("ab") as sink:
        for i, row in enumerate(rows):
            x = row.reshape(1, -1).astype(np.float32)
            entry = PredictionRecord(ts + i * step, f"r{i}", "m", "1", "primary", 1, {"x": x}, {"x": "FP32"},
                     [("y", x[:, :1] * 2)], {"y": "FP32"}, 200, 0.001, RecordMeta(LoggingConfig()))  # fmt: skip
            sink.write(encoder.encode(entry))


def reference_jsonl(path: Path, rows: np.ndarray) -> None:
    with path.open("wb") as sink:
        for row in rows:
            x = row.astype(np.float32).tolist()
            doc = {"inputs": {"x": {"datatype": "FP32", "shape": [1, len(x)], "data": x}},
                   "outputs": {"y": {"datatype": "FP32", "shape": [1, 1], "data": [x[0] * 2]}}}  # fmt: skip
            sink.write(orjson.dumps(doc) + b"\n")


@pytest.fixture
def shifted(tmp_path: Path) -> tuple[Path, Path]:
    """A log whose feature 2 moved by one standard deviation, and its reference."""
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(4000, 4))
    current = rng.normal(size=(3000, 4))
    current[:, 2] += 1.0
    write_log(tmp_path / "log", current)
    reference_jsonl(tmp_path / "reference.jsonl", reference)
    return tmp_path / "log", tmp_path / "reference.jsonl"


def test_a_shifted_feature_is_flagged_and_the_others_are_not(shifted: tuple[Path, Path], tmp_path: Path) -> None:
    log, reference = shifted
    done = drift(
        "--log-dir", str(log), "--model", "m", "--reference", str(reference), "--json", str(tmp_path / "r.json")
    )
    assert done.returncode == 1, done.stderr
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["drifted"] == ["x[2]"] and report["current_records"] == 3000
    by_name = {f["feature"]: f for f in report["inputs"]}
    assert set(by_name) == {"x[0]", "x[1]", "x[2]", "x[3]"}
    assert by_name["x[2]"]["psi"] > 0.2 and by_name["x[2]"]["ks_pvalue"] < 1e-6
    assert by_name["x[2]"]["mean_shift_std"] == pytest.approx(1.0, abs=0.15)
    for name in ("x[0]", "x[1]", "x[3]"):
        assert by_name[name]["psi"] < 0.05 and not by_name[name]["drifted"]
    (output,) = report["outputs"]
    assert output["feature"] == "y[0]" and not output["drifted"]  # the prediction follows x[0]
    assert "x[2]" in done.stdout and "DRIFT" in done.stdout


def test_selected_features_only_and_exit_0_without_drift(shifted: tuple[Path, Path]) -> None:
    log, reference = shifted
    done = drift("--log-dir", str(log), "--model", "m", "--reference", str(reference), "--features", "0,1,3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "x[2]" not in done.stdout and "no feature over PSI 0.2" in done.stdout


def test_csv_and_npy_references(shifted: tuple[Path, Path], tmp_path: Path) -> None:
    log, _ = shifted
    rows = np.random.default_rng(2).normal(size=(2000, 4))
    np.save(tmp_path / "reference.npy", rows)
    (tmp_path / "reference.csv").write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.5f}" for v in r) for r in rows))
    for name in ("reference.npy", "reference.csv"):
        done = drift("--log-dir", str(log), "--model", "m", "--reference", str(tmp_path / name), "--json",
                     str(tmp_path / "r.json"))  # fmt: skip
        assert done.returncode == 1, done.stderr
        report = orjson.loads((tmp_path / "r.json").read_bytes())
        assert report["drifted"] == ["x[2]"] and report["outputs"] == []
        assert "reference carries no outputs" in report["notes"][0]


def test_the_window_selects_records_by_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    calm, shifted = rng.normal(size=(1000, 2)), np.add(rng.normal(size=(1000, 2)), [0, 3])
    ten = datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp()
    write_log(tmp_path / "log", np.concatenate([calm, shifted]), ts=ten, step=1.0)  # one a second from 10:00:00
    reference_jsonl(tmp_path / "ref.jsonl", rng.normal(size=(2000, 2)))
    common = ["--log-dir", str(tmp_path / "log"), "--model", "m", "--reference", str(tmp_path / "ref.jsonl")]
    # Records 0-999 are 10:00:00 to 10:16:39; the shift starts at 10:16:40.
    before = drift(*common, "--until", "2026-11-27T10:16:40Z")
    after = drift(*common, "--since", "2026-11-27T10:16:40+00:00")
    assert before.returncode == 0 and "1,000 requests" in before.stdout
    assert after.returncode == 1 and "x[1]" in after.stdout.split("feature(s) over")[1]
    assert drift(*common, "--since", "yesterday").returncode == 2


def test_the_html_report_has_a_histogram_per_feature(shifted: tuple[Path, Path], tmp_path: Path) -> None:
    log, reference = shifted
    page = tmp_path / "report.html"
    done = drift("--log-dir", str(log), "--model", "m", "--reference", str(reference), "--html", str(page))
    assert done.returncode == 1

    class Page(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []
            self.text: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.append(tag)

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    parsed = Page()
    parsed.feed(page.read_text())
    assert parsed.tags.count("svg") == 5 and parsed.tags.count("figure") == 5  # x[0..3] and y[0]
    assert parsed.tags.count("rect") > 5 * 20
    assert "script" not in parsed.tags and "link" not in parsed.tags  # self-contained
    text = " ".join(parsed.text)
    assert "1 feature(s) over PSI 0.2: x[2]" in text


def test_the_gateways_own_log_reads_back(tmp_path: Path) -> None:
    write_model(tmp_path / "models", "m", 1, identity("FP32"))
    rng = np.random.default_rng(4)
    with serve(tmp_path / "models", log_dir=tmp_path / "log") as server:
        for row in np.add(rng.normal(size=(300, 4)), [0, 0, 0, 2]):
            doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]}
            assert request(server.port, "POST", "/v2/models/m/infer", orjson.dumps(doc)).status == 200
        time.sleep(0.3)
    reference = tmp_path / "reference.npy"
    np.save(reference, rng.normal(size=(1000, 4)))
    done = drift("--log-dir", str(tmp_path / "log"), "--model", "m", "--version", "1", "--reference", str(reference))
    assert done.returncode == 1 and "300 requests" in done.stdout
    assert "INPUT0[3]" in done.stdout.split("feature(s) over")[1]


def test_errors_exit_2_with_a_clear_message(shifted: tuple[Path, Path], tmp_path: Path) -> None:
    log, reference = shifted
    assert "no prediction log for model 'nope'" in drift("--log-dir", str(log), "--model", "nope", "--reference",
                                                          str(reference)).stderr  # fmt: skip
    done = drift("--log-dir", str(log), "--model", "m", "--reference", str(reference), "--features", "9")
    assert done.returncode == 2 and "out of range" in done.stderr
    (tmp_path / "bad.npy").write_bytes(b"nonsense")
    done = drift("--log-dir", str(log), "--model", "m", "--reference", str(tmp_path / "bad.npy"))
    assert done.returncode == 2 and "could not be parsed" in done.stderr


# -- the statistics and the reader ---------------------------------------------------------------


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=20_000)
    assert psi(base, rng.normal(size=20_000)) < 0.01
    assert 0.2 < psi(base, rng.normal(size=20_000) + 0.5) < psi(base, rng.normal(size=20_000) + 1.0)
    assert psi(np.zeros(100), np.zeros(50)) == 0.0 and psi(np.zeros(100), np.ones(50)) > 1  # constant features
    result = compare("f", base, base + 1, bins=10, threshold=0.2)
    assert result.drifted and result.ks_statistic > 0.3 and result.mean_shift == pytest.approx(1.0, abs=0.01)


def test_a_torn_last_line_and_other_roles_are_skipped(tmp_path: Path) -> None:
    write_log(tmp_path, np.ones((5, 2)))
    path = next((tmp_path / "m" / "1").iterdir())
    data = path.read_bytes()
    shadow = data.splitlines()[0].replace(b'"role":"primary"', b'"role":"shadow"')
    path.write_bytes(data + shadow + b"\n" + data.splitlines()[1][:30])
    columns = read_log([path])
    assert columns.records == 5 and columns.inputs["x"].shape == (5, 2)


def test_progress_is_shown_on_long_logs() -> None:
    stream = io.StringIO()
    show = progress_printer(stream, minimum_bytes=100)
    for done in range(0, 1001, 50):
        show(done, 1000, done * 10)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "reading the log: 0% (0 records)" and lines[-1] == "reading the log: 100% (10,000 records)"
    assert len(lines) == 11
    quiet = io.StringIO()
    progress_printer(quiet, minimum_bytes=10_000)(50, 1000, 1)
    assert quiet.getvalue() == ""


def test_json_report_fields(shifted: tuple[Path, Path], tmp_path: Path) -> None:
    log, reference = shifted
    drift("--log-dir", str(log), "--model", "m", "--reference", str(reference), "--json", str(tmp_path / "r.json"))
    report: dict[str, Any] = orjson.loads((tmp_path / "r.json").read_bytes())
    fields = set(report["inputs"][0])
    assert {"feature", "psi", "ks_statistic", "ks_pvalue", "reference_mean", "current_mean", "reference_std",
            "current_std", "mean_shift_std", "drifted"} <= fields  # fmt: skip


def test_the_html_report_renders_in_headless_chromium(shifted: tuple[Path, Path], tmp_path: Path) -> None:
    if shutil.which("chromium") is None:  # scripts/setup-chromium installs it; required in CI
        server_unavailable("headless Chromium not installed (scripts/setup-chromium)")
    log, reference = shifted
    page = tmp_path / "report.html"
    drift("--log-dir", str(log), "--model", "m", "--reference", str(reference), "--html", str(page))
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60, check=True
    )
    assert dom.stdout.count("<svg") == 5 and "x[2] <b>drift</b>" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1200,1100", page.as_uri()],
                   capture_output=True, timeout=60, check=True)  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


# -- usage errors, small samples, unparseable references (issue 13, item 11) ---------------------


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line of a refused run: exit 2 (never 1, which means drift), no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--bins", "1"], "--bins: must be 2 to 1000"),
        (["--bins", "ten"], "argument --bins: invalid int value: 'ten'"),
        (["--psi-threshold", "-0.1"], "--psi-threshold: must be a number > 0"),
        (["--psi-threshold", "nan"], "--psi-threshold: must be a number > 0"),
        (["--roles", "primary,bogus"], "--roles: expected some of primary, canary, pinned, shadow"),
        (["--roles", ","], "--roles: expected some of"),
        (["--since", "yesterday"], "not an ISO 8601 date or time: 'yesterday'"),
        (["--since", "2026-11-28", "--until", "2026-11-27"], "--since must be before --until"),
        (["--version", "0"], "--version: expected a positive integer"),
        (["--version", "../1"], "--version: expected a positive integer"),
        (["--features", "a,b"], "--features: expected column indexes like 0,1,2"),
        (["--features", "9"], "--features [9] out of range"),
        (["--json", "/nonexistent-dir/r.json"], "--json: cannot write /nonexistent-dir/r.json"),
        (["--html", "."], "--html: cannot write ."),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_every_usage_error_exits_2_with_one_line(shifted: tuple[Path, Path], options: list[str], message: str) -> None:
    log, reference = shifted
    assert message in one_line(drift("--log-dir", str(log), "--model", "m", "--reference", str(reference), *options))


def test_missing_inputs_and_bad_names_exit_2(shifted: tuple[Path, Path], tmp_path: Path) -> None:
    log, reference = shifted
    assert "--model: '../m' is not a model name" in one_line(
        drift("--log-dir", str(log), "--model", "../m", "--reference", str(reference))
    )
    missing = tmp_path / "no"
    assert "--reference: " in one_line(drift("--log-dir", str(log), "--model", "m", "--reference", str(missing)))
    assert "--log-dir: " in one_line(drift("--log-dir", str(tmp_path / "no"), "--model", "m", "--reference",
                                           str(reference)))  # fmt: skip
    assert "the following arguments are required: --model" in one_line(drift("--reference", str(reference)))


def test_an_unparseable_reference_names_its_line(shifted: tuple[Path, Path], tmp_path: Path) -> None:
    log, reference = shifted
    lines = reference.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join([lines[0], lines[1], b'{"inputs": {"x": \n', *lines[2:5]]))
    error = one_line(drift("--log-dir", str(log), "--model", "m", "--reference", str(bad)))
    assert error == f"tensorgate drift: the reference {bad} could not be parsed: line 3: not valid JSON"
    bad.write_bytes(lines[0] + b'["not", "an", "object"]\n')
    assert "could not be parsed: line 2: not a JSON object" in one_line(
        drift("--log-dir", str(log), "--model", "m", "--reference", str(bad))
    )
    csv = tmp_path / "bad.csv"
    csv.write_text("a,b,c,d\n1,2,3,4\n1,2,x,4\n")
    assert f"the reference {csv} could not be parsed: line 3: not numbers" in one_line(
        drift("--log-dir", str(log), "--model", "m", "--reference", str(csv))
    )
    # A copy of the log is a valid reference: failed requests and a torn last line are skipped.
    copy = tmp_path / "copy.jsonl"
    first = next((log / "m" / "1").iterdir()).read_bytes()
    failed = first.splitlines()[0].replace(b'"status":200', b'"status":400')
    failed = failed.replace(b'"inputs":{', b'"inputs":null,"x":{')
    copy.write_bytes(failed + b"\n" + first + first.splitlines()[0][:40])
    assert drift("--log-dir", str(log), "--model", "m", "--reference", str(copy)).returncode == 0


def test_too_few_rows_are_warned_about_in_the_table_the_json_and_the_page(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write_log(tmp_path / "log", rng.normal(size=(40, 2)))
    reference_jsonl(tmp_path / "reference.jsonl", rng.normal(size=(500, 2)))
    report, page = tmp_path / "r.json", tmp_path / "r.html"
    done = drift("--log-dir", str(tmp_path / "log"), "--model", "m", "--reference", str(tmp_path / "reference.jsonl"),
                 "--json", str(report), "--html", str(page))  # fmt: skip
    assert done.returncode in (0, 1)
    assert "WARNING: the window has only 40 rows of 'x' (under 100)" in done.stdout
    assert "warning: the window has only 40 rows" in done.stderr
    warnings = orjson.loads(report.read_bytes())["warnings"]
    assert len(warnings) == 1 and "only 40 rows" in warnings[0]
    assert '<p class="warning"><strong>Warning:</strong> the window has only 40 rows' in page.read_text()


def test_enough_rows_have_no_warning(shifted: tuple[Path, Path], tmp_path: Path) -> None:
    log, reference = shifted
    done = drift("--log-dir", str(log), "--model", "m", "--reference", str(reference), "--json", str(tmp_path / "r"))
    assert "WARNING" not in done.stdout and orjson.loads((tmp_path / "r").read_bytes())["warnings"] == []
