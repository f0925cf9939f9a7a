"""Each runtime's options, as config.toml gives them, and their parsers: importing no runtime library.

Parsing a model's configuration (the admin CLI, settings checks) must not load ONNX Runtime or
the Triton client; the runtimes import their options from here. A parser reads its runtime's
table through ``OptionsTable`` (gateway/registry/config.py's reader), which names the file and
key in every error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

_CUDA_DEVICE = re.compile(r"cuda:[0-9]{1,2}")
_TRITON_URL = re.compile(r"(https?|grpcs?)://[A-Za-z0-9._\-\[\]:]+(:[0-9]{1,5})?/?")


class OptionsTable(Protocol):
    """One table of a ``config.toml``, read with typed getters that remember the keys used."""

    data: dict[str, Any]

    def fail(self, key: str, problem: str) -> Exception:
        """The configuration error for ``key`` (the caller raises it)."""

    def get(self, key: str, kinds: tuple[type, ...], default: Any) -> Any:
        """The value of ``key`` (``default`` if absent), checked to be one of ``kinds``."""

    def integer(self, key: str, default: int, minimum: int, maximum: int = 2**31 - 1) -> int:
        """An integer within bounds."""

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        """A finite number at least ``minimum``."""

    def choice(self, key: str, default: str, choices: set[str] | re.Pattern[str]) -> str:
        """A string among ``choices`` (or matching the pattern)."""

    def model_name(self, key: str) -> str:
        """A model name as the registry checks names ("" when absent)."""

    def check_unknown(self) -> None:
        """Fail on a key no getter asked for."""


#: The ``[onnx] graph_optimization`` names (runtimes/onnxrt.py maps them to ONNX Runtime's levels).
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True, slots=True)
class OnnxOptions:
    """Per-model ONNX Runtime settings (the ``[onnx]`` table of ``config.toml``)."""

    device: str = "auto"
    tensorrt: bool = True
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"


@dataclass(frozen=True, slots=True)
class TritonOptions:
    """Per-model settings of the remote Triton runtime (the ``[triton]`` table of ``config.toml``)."""

    #: ``http://host:port`` or ``grpc://host:port``; ``https://`` and ``grpcs://`` for TLS.
    url: str = ""
    #: The remote model's name and version ("": the local model's name and version).
    model: str = ""
    version: str = ""
    #: Deadline of a call when the request sets none (``parameters.timeout``), and the most it may set.
    timeout_s: float = 30.0
    #: Further attempts after a refused connection or a 502/503, only within the deadline.
    retries: int = 1
    #: Consecutive failures that open the circuit (0: never), and seconds before a probe.
    breaker_failures: int = 5
    breaker_reset_s: float = 5.0
    #: Pooled connections to the server (HTTP; gRPC multiplexes one channel).
    max_connections: int = 64
    #: Seconds between checks of the remote model's readiness.
    health_interval_s: float = 5.0
    #: Ask the server to load the model when it is not ready (Triton's explicit model control).
    load_remote: bool = False
    #: Ask the server to unload the model when this version is unloaded.
    unload_remote: bool = False
    #: A start-up load whose remote model is not ready yet is retried, pausing up to this long (0: never).
    load_retry_max_s: float = 30.0
    #: TLS (``https``/``grpcs``): the CA bundle that signs the server's certificate ("": the system's).
    ca_file: str = ""
    #: TLS client certificate and its private key (PEM), for servers that ask for one ("": none).
    cert_file: str = ""
    key_file: str = ""


def parse_onnx_options(t: OptionsTable) -> OnnxOptions:
    """The ``[onnx]`` table."""
    device = t.get("device", (str,), "auto")
    if device not in ("auto", "cpu") and _CUDA_DEVICE.fullmatch(device) is None:
        raise t.fail("device", f"must be auto, cpu or cuda:N, got {device!r}")
    options = OnnxOptions(
        device=device,
        tensorrt=t.get("tensorrt", (bool,), True),
        intra_op_threads=t.integer("intra_op_threads", 0, 0, 1024),
        inter_op_threads=t.integer("inter_op_threads", 0, 0, 1024),
        graph_optimization=t.choice("graph_optimization", "all", set(GRAPH_OPTIMIZATION_LEVELS)),
    )
    t.check_unknown()
    return options


def parse_triton_options(t: OptionsTable) -> TritonOptions:
    """The ``[triton]`` table."""
    version = t.get("version", (str, int), "")
    if str(version) and not (str(version).isascii() and str(version).isdigit()):
        raise t.fail("version", f"must be a version number, got {version!r}")
    model = t.model_name("model")
    config = TritonOptions(
        url=t.choice("url", "", _TRITON_URL) if "url" in t.data else "",
        model=model,
        version=str(version),
        timeout_s=t.number("timeout_s", 30.0, 0.001),
        retries=t.integer("retries", 1, 0, 10),
        breaker_failures=t.integer("breaker_failures", 5, 0, 1_000_000),
        breaker_reset_s=t.number("breaker_reset_s", 5.0),
        max_connections=t.integer("max_connections", 64, 1, 10_000),
        health_interval_s=t.number("health_interval_s", 5.0),
        load_remote=t.get("load_remote", (bool,), False),
        unload_remote=t.get("unload_remote", (bool,), False),
        load_retry_max_s=t.number("load_retry_max_s", 30.0),
        ca_file=_tls_file(t, "ca_file"),
        cert_file=_tls_file(t, "cert_file"),
        key_file=_tls_file(t, "key_file"),
    )
    t.check_unknown()
    if (config.ca_file or config.cert_file or config.key_file) and not config.url.startswith(("https:", "grpcs:")):
        raise t.fail("url", "ca_file, cert_file and key_file need an https:// or grpcs:// url")
    if bool(config.cert_file) != bool(config.key_file):
        raise t.fail("cert_file", "a client certificate needs both cert_file and key_file")
    return config


def triton_selected(options: TritonOptions) -> str | None:
    """What ``runtime = "triton"`` needs of its table: a url."""
    return None if options.url else 'triton.url: required when runtime = "triton"'


def _tls_file(t: OptionsTable, key: str) -> str:
    """An absolute path (a mounted secret): a relative one would depend on the working directory."""
    path: str = t.get(key, (str,), "")
    if path and not Path(path).is_absolute():
        raise t.fail(key, f"must be an absolute path, got {path!r}")
    return path
