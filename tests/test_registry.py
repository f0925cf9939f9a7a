"""The local registry: names, versions, config.toml, discovery and containment."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gateway.config_error import ConfigError
from gateway.errors import BadRequest
from gateway.registry.base import RegistryError
from gateway.registry.config import ModelConfig, load_model_config, parse_model_config
from gateway.registry.local import LocalRegistry
from gateway.registry.names import check_model_name, is_model_name, parse_version
from tests.onnx_models import identity, write_model

GOOD_NAMES = ["fraud", "a", "A9", "m.v2", "my_model-1", "x" * 128, "1st"]
BAD_NAMES = [
    "",
    ".",
    "..",
    "a..b",
    "-x",
    "_x",
    ".hidden",
    "a/b",
    "a\\b",
    "a%2Fb",
    "a\x00b",
    "a b",
    "x" * 129,
    "m\u043edel",
    "a\u202eb",
    "../etc",
    "é",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_valid_model_names(name: str) -> None:
    assert is_model_name(name) and check_model_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_model_names_are_400(name: str) -> None:
    assert not is_model_name(name)
    with pytest.raises(BadRequest) as raised:
        check_model_name(name)
    assert raised.value.message.startswith("invalid model name")


@pytest.mark.parametrize("text", ["1", "2", "42", str(2**63 - 1)])
def test_valid_versions(text: str) -> None:
    assert parse_version(text) == int(text)


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "-1",
        "01",
        "1.5",
        "1e3",
        "+1",
        " 1",
        "1 ",
        "",
        "..",
        "%2e%2e",
        "9999999999999999999999",
        str(2**63),
        "١",
        "0x1",
    ],
)
def test_invalid_versions(text: str) -> None:
    with pytest.raises(BadRequest, match="invalid model version"):
        parse_version(text)


def test_discovery_skips_partial_and_invalid_entries(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, identity("FP32"))
    write_model(tmp_path, "m", 3, identity("FP32"))
    (tmp_path / "m" / "2").mkdir()  # partially published: no model file yet
    (tmp_path / "m" / "07").mkdir()
    (tmp_path / "m" / "latest").mkdir()
    (tmp_path / "bad name").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / "file.txt").write_text("x")
    registry = LocalRegistry(tmp_path)
    assert registry.models() == ["m"]
    assert registry.versions("m") == [1, 3]
    assert registry.versions("absent") == []


def test_fetch_records_the_sha256(tmp_path: Path) -> None:
    path = write_model(tmp_path, "m", 1, identity("FP32"))
    artifact = LocalRegistry(tmp_path).fetch("m", 1)
    assert artifact.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert artifact.model_file == path.resolve()


def test_fetch_refuses_a_symlink_out_of_the_repository(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_model(outside, "m", 1, identity("FP32"))
    root = tmp_path / "repo"
    (root / "m" / "1").mkdir(parents=True)
    os.symlink(outside / "m" / "1" / "model.onnx", root / "m" / "1" / "model.onnx")
    with pytest.raises(RegistryError, match="outside the repository"):
        LocalRegistry(root).fetch("m", 1)


def test_missing_config_means_defaults(tmp_path: Path) -> None:
    assert load_model_config(tmp_path, "m") == ModelConfig()


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        """
runtime = "onnx"
version_policy = [2, 1]
max_batch_size = 32
instance_count = 2
inline_threshold_us = 0
[batching]
max_queue_delay_ms = "auto"
preferred_batch_sizes = [8, 4, 8]
max_queue_size = 10
timeout_ms = 250
priority_levels = 2
[onnx]
device = "cuda:1"
tensorrt = false
intra_op_threads = 2
graph_optimization = "basic"
"""
    )
    config = load_model_config(tmp_path, "m")
    assert config.version_policy == (1, 2)
    assert config.max_batch_size == 32 and config.instance_count == 2
    assert config.batching.max_queue_delay_ms == "auto"
    assert config.batching.preferred_batch_sizes == (4, 8)
    assert config.onnx.device == "cuda:1" and not config.onnx.tensorrt
    assert config.onnx.graph_optimization == "basic"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "m/config.toml: colour: unknown key"),
        ("[batching]\nmax_queue_sise = 1", "m/config.toml: batching.max_queue_sise: unknown key"),
        ("max_batch_size = -1", "m/config.toml: max_batch_size: must be between"),
        ("max_batch_size = true", "m/config.toml: max_batch_size: expected int, got bool"),
        ("max_batch_size = '8'", "max_batch_size: expected int, got str"),
        ("runtime = 'tensorflow'", "runtime: must be one of onnx, triton"),
        ("[onnx]\ndevice = 'gpu'", "onnx.device: must be auto, cpu or cuda:N"),
        ("[onnx]\ngraph_optimization = 'max'", "onnx.graph_optimization: must be one of"),
        ("[batching]\npreferred_batch_sizes = [0]", "batching.preferred_batch_sizes"),
        ("[batching]\nmax_queue_delay_ms = 'soon'", "batching.max_queue_delay_ms: expected int or float"),
        ("version_policy = 'newest'", "version_policy: must be"),
        ("version_policy = []", "version_policy: must be"),
        ("runtime = 'triton'", "triton.url: required"),
        ("[triton]\nurl = 'ftp://x'", "triton.url: invalid value"),
        ("[triton]\nurl = 'http://t:8000'\nversion = 'latest'", "triton.version: must be a version number"),
        ("[triton]\nurl = 'http://t:8000'\nmodel = '../x'", "triton.model: invalid model name"),
        ("[triton]\nurl = 'http://t:8000'\nretries = 11", "triton.retries: must be between 0 and 10"),
        ("[triton]\nurl = 'http://t:8000'\nmax_connections = 0", "triton.max_connections: must be between"),
        ("[triton]\nurl = 'http://t:8000'\nload_remote = 'yes'", "triton.load_remote: expected bool"),
        ("[triton]\nurl = 'http://t:8000'\ntimeout_s = 0", "triton.timeout_s: must be a finite number"),
        ("batching = 3", "batching: expected dict"),
        ("not toml ===", "m/config.toml: not valid TOML"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_model_config(tmp_path, "m")
    assert message in str(raised.value)


def test_triton_config() -> None:
    config = parse_model_config({"runtime": "triton", "triton": {"url": "grpc://triton:8001", "version": 3}}, "x")
    assert config.triton.url == "grpc://triton:8001" and config.triton.version == "3"
    assert config.triton.timeout_s == 30.0 and config.triton.retries == 1 and config.triton.breaker_failures == 5
    assert not config.triton.load_remote and not config.triton.unload_remote
    assert config.max_batch_size == 0  # gateway-side batching is off unless asked for: Triton batches


def test_a_version_may_run_on_triton_with_its_own_config(tmp_path: Path) -> None:
    write_model(tmp_path, "m", 1, identity("FP32"), config="max_batch_size = 8\n[onnx]\ndevice = 'cpu'\n")
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "config.toml").write_text(
        "runtime = 'triton'\nmax_batch_size = 0\n[triton]\nurl = 'http://triton:8000'\nmodel = 'remote_m'\n"
    )
    (tmp_path / "m" / "3").mkdir()  # no model file, no config: incomplete, ignored
    registry = LocalRegistry(tmp_path)
    assert registry.versions("m") == [1, 2]
    one, two = registry.version_config("m", 1), registry.version_config("m", 2)
    assert one.runtime == "onnx" and one.max_batch_size == 8
    assert two.runtime == "triton" and two.max_batch_size == 0 and two.triton.model == "remote_m"
    assert two.onnx.device == "cpu"  # the model's tables still apply where the version is silent
    artifact = registry.fetch("m", 2, remote=True)
    assert artifact.model_file is None and artifact.sha256 is None
    with pytest.raises(RegistryError):
        registry.fetch("m", 2)  # as an ONNX version it has no model file
    (tmp_path / "m" / "2" / "config.toml").write_text("[drift]\nreference = 'r.csv'\n")
    with pytest.raises(ConfigError, match=r"m/2/config.toml: drift: set it in the model's config.toml"):
        registry.version_config("m", 2)


def test_a_model_on_triton_needs_only_version_directories(tmp_path: Path) -> None:
    (tmp_path / "r" / "1").mkdir(parents=True)
    (tmp_path / "r" / "4").mkdir()
    (tmp_path / "r" / "config.toml").write_text("runtime = 'triton'\n[triton]\nurl = 'grpc://triton:8001'\n")
    assert LocalRegistry(tmp_path).versions("r") == [1, 4]


def test_a_model_on_triton_with_no_version_directory_has_the_remote_version(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.toml").write_text("runtime = 'triton'\n[triton]\nurl = 'http://t:8000'\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.toml").write_text("runtime = 'triton'\n[triton]\nurl = 'http://t:8000'\nversion = 3\n")
    registry = LocalRegistry(tmp_path)
    assert registry.versions("a") == [1] and registry.versions("b") == [3]
    assert registry.fetch("b", 3, remote=True).directory == (tmp_path / "b").resolve()
    with pytest.raises(RegistryError):
        registry.fetch("b", 2, remote=True)
