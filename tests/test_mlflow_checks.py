"""The MLflow registry's checks that need no server: sources, artifact trees, flavors, settings."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from gateway.config_error import ConfigError
from gateway.predlog.records import PredictionRecord, RecordEncoder, RecordMeta
from gateway.registry.allow import AllowRule, allowed, default_rules, parse_rules
from gateway.registry.base import RegistryError
from gateway.registry.config import LoggingConfig, parse_model_config
from gateway.registry.mlflow import check_source, check_tree, onnx_model_file, private_directory
from gateway.settings import load_settings, registry_names


@pytest.mark.parametrize(
    "source",
    [
        "mlflow-artifacts:/1/abc/artifacts/model",
        "models:/m-0123456789abcdef",
        "runs:/0123/model",
        "s3://bucket/models/fraud/2",
    ],
)
def test_sources_from_artifact_stores_pass(source: str) -> None:
    check_source(source)


@pytest.mark.parametrize(
    "source",
    [
        "/etc",
        "file:///etc/passwd",
        "mlflow-artifacts:/1/../../../etc",
        "mlflow-artifacts:/1/%2e%2e/%2e%2e/etc",  # encoded
        "mlflow-artifacts:/1/%252e%252e/etc",  # encoded twice
        "s3://bucket/a/..\\..\\b",
        "mlflow-artifacts:/1/model;type=a",
        "ftp://host/model",
        "relative/path",
    ],
)
def test_local_and_climbing_sources_are_refused(source: str) -> None:
    with pytest.raises(RegistryError, match="refused"):
        check_source(source)


def mlmodel(directory: Path, flavors: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "MLmodel").write_text(f"artifact_path: model\nflavors:\n{flavors}")
    return directory


def test_the_onnx_flavor_names_the_file(tmp_path: Path) -> None:
    flavors = "  onnx:\n    data: nested/model.onnx\n  python_function:\n    loader_module: mlflow.onnx\n"
    root = mlmodel(tmp_path / "m", flavors)
    (root / "nested").mkdir()
    (root / "nested" / "model.onnx").write_bytes(b"onnx")
    assert onnx_model_file(root) == (root / "nested" / "model.onnx").resolve()


@pytest.mark.parametrize(
    ("flavors", "message"),
    [
        ("  python_function:\n    loader_module: mlflow.sklearn\n  sklearn:\n    pickled_model: model.pkl\n",
         "flavor(s) python_function, sklearn refused"),
        ("  pytorch:\n    model_data: data\n", "flavor(s) pytorch refused"),
        ("  onnx:\n    data: ../../etc/passwd\n", "leaves the artifact directory"),
        ("  onnx:\n    data: /etc/passwd\n", "leaves the artifact directory"),
        ("  onnx:\n    data: missing.onnx\n", "is missing"),
        ("  onnx:\n    data: 3\n", "names no model file"),
    ],
)  # fmt: skip
def test_other_flavors_and_bad_data_paths_are_refused(tmp_path: Path, flavors: str, message: str) -> None:
    root = mlmodel(tmp_path / "m", flavors)
    (root / "model.pkl").write_bytes(b"\x80\x04pickle")
    with pytest.raises(RegistryError) as raised:
        onnx_model_file(root)
    assert message in str(raised.value)


def test_without_mlmodel_one_onnx_file_is_needed(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"1")
    assert onnx_model_file(tmp_path) == tmp_path / "a.onnx"
    (tmp_path / "b.onnx").write_bytes(b"2")
    with pytest.raises(RegistryError, match="found 2"):
        onnx_model_file(tmp_path)


def test_symbolic_links_in_a_download_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"1")
    check_tree(tmp_path)
    os.symlink("/etc/passwd", tmp_path / "other.onnx")
    with pytest.raises(RegistryError, match="symbolic link"):
        check_tree(tmp_path)


def test_hard_links_fifos_and_devices_in_a_download_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_bytes(b"key")
    for name, make, message in [
        ("hard", lambda p: os.link(outside, p / "model.onnx"), "hard link"),
        ("fifo", lambda p: os.mkfifo(p / "model.onnx"), "not a plain file"),
        ("device", lambda p: os.mknod(p / "model.onnx", 0o600 | stat.S_IFCHR, os.makedev(1, 3)), "not a plain file"),
    ]:
        download = tmp_path / name
        download.mkdir()
        make(download)
        with pytest.raises(RegistryError, match=message):
            check_tree(download)


def test_downloads_go_to_a_private_directory(tmp_path: Path) -> None:
    previous = os.umask(0)  # the most permissive umask: the directory must still be 0700
    try:
        staging = private_directory(tmp_path)
    finally:
        os.umask(previous)
    assert staging.parent == tmp_path and stat.S_IMODE(staging.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("mlflow-artifacts:/1/models/m-1/artifacts", True),
        ("mlflow-artifacts://mlflow.internal:5000/1/models/m-1/artifacts", True),  # naming the tracking server
        ("MLFLOW-ARTIFACTS://MLflow.Internal:5000/1/x", True),
        ("http://mlflow.internal:5000/api/2.0/mlflow-artifacts/artifacts/1", True),
        ("mlflow-artifacts://elsewhere:5000/1/x", False),
        ("http://mlflow.internal:5001/x", False),  # another port is another server
        ("https://mlflow.internal:5000/x", False),  # another scheme too
        ("http://user@mlflow.internal:5000/x", False),
        ("s3://bucket/models/x", False),
        ("gs://bucket/x", False),
        ("runs:/0123/model", False),  # unresolved: resolved before the check
        ("models:/m-1", False),
        ("file:///etc", False),
        ("/etc/passwd", False),
    ],
)
def test_the_default_allows_only_the_tracking_servers_store(uri: str, ok: bool) -> None:
    assert allowed(uri, default_rules("http://mlflow.internal:5000")) is ok


def test_allow_rules_match_hosts_exactly_and_prefixes_by_segment() -> None:
    rules = parse_rules(" s3://ml-models/prod , https://artifacts.example.com/mlflow,mlflow-artifacts:")
    assert rules == (
        AllowRule("s3", "ml-models", ("prod",)),
        AllowRule("https", "artifacts.example.com", ("mlflow",)),
        AllowRule("mlflow-artifacts", ""),
    )
    assert allowed("s3://ml-models/prod/fraud/2/model", rules)
    assert allowed("s3://ml-models/prod", rules)
    assert not allowed("s3://ml-models/production/x", rules)  # a prefix is whole segments
    assert not allowed("s3://ml-models/prod/../staging/x", rules)
    assert not allowed("s3://ml-models/prod/%2e%2e/staging/x", rules)
    assert not allowed("s3://ml-models-evil/prod/x", rules)
    assert not allowed("s3://ml-models.evil.com/prod/x", rules)
    assert allowed("https://artifacts.example.com/mlflow/1/x", rules)
    assert not allowed("https://artifacts.example.com.evil.com/mlflow/1/x", rules)
    assert not allowed("mlflow-artifacts://anyhost/1/x", rules)  # host-less rule: host-less locations only


@pytest.mark.parametrize(
    "entry", ["s3://", "*://x", "s3://*.bucket", "https://u:p@host", "s3://b/../x", "://x", "1s3://b"]
)
def test_bad_allow_entries_are_refused(entry: str) -> None:
    with pytest.raises(ConfigError, match="registry_artifact_allow"):
        load_settings(environ={"TENSORGATE_REGISTRY_ARTIFACT_ALLOW": entry})


def test_the_allow_list_as_a_toml_array(tmp_path: Path) -> None:
    config = tmp_path / "tensorgate.toml"
    config.write_text('[registry]\nartifact_allow = ["mlflow-artifacts:", "s3://ml-models/prod"]\n')
    settings = load_settings(config, environ={})
    assert settings.registry_artifact_allow == "mlflow-artifacts:,s3://ml-models/prod"
    assert load_settings(environ={}).registry_artifact_allow == ""  # default: the tracking server's store


def test_registry_settings_as_a_table_and_as_flat_keys(tmp_path: Path) -> None:
    config = tmp_path / "tensorgate.toml"
    config.write_text(
        '[registry]\nkind = "mlflow"\ntracking_uri = "http://mlflow:5000"\npoll_s = 5\n'
        '[registry.names]\nfraud = "Fraud Detector"\nchurn = "churn"\n'
    )
    settings = load_settings(config, environ={})
    assert settings.registry_kind == "mlflow" and settings.registry_tracking_uri == "http://mlflow:5000"
    assert settings.registry_poll_s == 5.0
    assert registry_names(settings) == {"fraud": "Fraud Detector", "churn": "churn"}
    flat = load_settings(environ={"TENSORGATE_REGISTRY_NAMES": "a=b, c=d e"})
    assert registry_names(flat) == {"a": "b", "c": "d e"}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TENSORGATE_REGISTRY_KIND": "s3"}, "registry_kind: must be local or mlflow"),
        ({"TENSORGATE_REGISTRY_KIND": "mlflow"}, "registry_tracking_uri"),
        ({"TENSORGATE_REGISTRY_NAMES": "../x=y"}, "registry_names"),
        ({"TENSORGATE_REGISTRY_NAMES": "x"}, "registry_names"),
    ],
)
def test_registry_settings_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_the_mlflow_table_of_a_model() -> None:
    config = parse_model_config({"mlflow": {"follow": "champion", "canary_alias": "challenger"}}, "m")
    assert config.mlflow.follow == "champion" and config.mlflow.canary_weight == 10
    with pytest.raises(ConfigError, match="canary_alias: must differ"):
        parse_model_config({"mlflow": {"follow": "a", "canary_alias": "a"}}, "m")
    with pytest.raises(ConfigError, match="canary_weight"):
        parse_model_config({"mlflow": {"canary_weight": 100}}, "m")


def test_records_name_the_run_only_when_known() -> None:
    encoder = RecordEncoder(b"k" * 32)
    for run_id in ("0123abcd", None):
        entry = PredictionRecord(1.0, "r1", "m", "1", "primary", 0, None, {}, None, {}, 200, 0.001,
                 RecordMeta(LoggingConfig(), run_id))  # fmt: skip
        record = orjson.loads(encoder.encode(entry))
        assert record.get("run_id") == run_id and ("run_id" in record) == (run_id is not None)
