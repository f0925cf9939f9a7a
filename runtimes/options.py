"""Each runtime's options, as config.toml gives them: plain values, importing no runtime library.

Parsing a model's configuration (the admin CLI, settings checks) must not load ONNX Runtime or
the Triton client; the runtimes import their options from here.
"""

from __future__ import annotations

from dataclasses import dataclass

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
