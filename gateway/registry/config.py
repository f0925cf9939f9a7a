"""A model's ``config.toml``: strictly parsed, every key optional, every mistake named."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Defined apart so that settings and the CLI catch it without importing the runtimes (fast --help).
from gateway.config_error import ConfigError
from gateway.registry.names import is_model_name
from runtimes.kinds import DEFAULT_RUNTIME, RUNTIME_KINDS
from runtimes.options import OnnxOptions, TritonOptions

CONFIG_FILE = "config.toml"


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """The ``[batching]`` table: dynamic batching of single requests (see docs/configuration.md)."""

    max_queue_delay_ms: float | Literal["auto"] = "auto"
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    timeout_ms: int = 0
    priority_levels: int = 1
    target_p99_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """The ``[logging]`` table: what the prediction log keeps of this model's requests."""

    #: Fraction of requests logged (1.0: all); the others are counted as dropped ("sampled").
    sample: float = 1.0
    #: Inputs left out of every record (PII).
    exclude_inputs: tuple[str, ...] = ()
    #: Inputs whose elements are replaced by a keyed hash (joinable, not readable).
    hash_inputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """The ``[drift]`` table: online drift against a reference data set (docs/drift.md)."""

    #: A JSONL (prediction-log format), CSV or .npy file, relative to the model's directory.
    reference: str = ""
    #: The input whose features are watched (default: the model's first input).
    input: str = ""
    window: int = 5000
    interval_s: float = 60.0
    psi_threshold: float = 0.2
    #: Consecutive checks over the threshold before the webhook is called.
    sustain: int = 3
    webhook: str = ""
    #: The webhook call's deadline, everything included (connect, TLS, request, answer).
    webhook_timeout_s: float = 10.0
    cooldown_s: float = 3600.0
    bins: int = 10


@dataclass(frozen=True, slots=True)
class MlflowConfig:
    """The ``[mlflow]`` table: which aliases of the registered model the gateway follows."""

    #: An alias whose moves are followed with a hot-swap (e.g. "champion"); "" = none. It also
    #: picks the version that serves at start-up.
    follow: str = ""
    #: An alias whose moves start a canary (e.g. "challenger"); "" = none.
    canary_alias: str = ""
    #: Percent of the traffic the canary gets.
    canary_weight: int = 10


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything ``config.toml`` may set for one model; defaults when the file is absent."""

    #: A key of runtimes.kinds.RUNTIME_KINDS.
    runtime: str = DEFAULT_RUNTIME
    #: Versions loaded at start-up: "latest" (the highest), "all", or a list of numbers.
    #: Traffic still goes 100% to the highest until a route says otherwise.
    version_policy: Literal["latest", "all"] | tuple[int, ...] = "latest"
    max_batch_size: int = 0
    instance_count: int = 1
    inline_threshold_us: float = 50.0
    #: On a multi-process host: run the version in its device's engine (one copy, batches from
    #: every worker) or in each worker; None: see ``where``. GPU versions always run in the engine.
    placement: Literal["engine", "worker"] | None = None
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    #: Every runtime kind's options (its table, named after the kind), by kind name.
    runtime_options: dict[str, Any] = field(
        default_factory=lambda: {name: kind.default_options() for name, kind in RUNTIME_KINDS.items()}
    )
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    @property
    def where(self) -> Literal["engine", "worker"]:
        """``placement``, else ``"worker"``: measured on the CPU (docs/benchmarks.md, "Placement"),
        a copy in each worker serves more than the engine's hop and shared batches buy, even for
        the batched MLP; a GPU version runs in its device's engine whatever this says."""
        return self.placement if self.placement is not None else "worker"

    @property
    def options(self) -> Any:
        """The options of the runtime this config selects."""
        return self.runtime_options[self.runtime]

    @property
    def onnx(self) -> OnnxOptions:
        """The ``[onnx]`` table."""
        options: OnnxOptions = self.runtime_options["onnx"]
        return options

    @property
    def triton(self) -> TritonOptions:
        """The ``[triton]`` table."""
        options: TritonOptions = self.runtime_options["triton"]
        return options


class _Table:
    """Reads typed values out of one TOML table, remembering which keys were used."""

    def __init__(self, source: str, prefix: str, data: dict[str, Any]) -> None:
        self.source, self.prefix, self.data = source, prefix, data
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.prefix}{key}: {problem}")

    def get(self, key: str, kinds: tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        # bool is an int in Python; TOML keeps them apart, and so do we.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(key, f"expected {names}, got {type(value).__name__}")
        return value

    def integer(self, key: str, default: int, minimum: int, maximum: int = 2**31 - 1) -> int:
        value: int = self.get(key, (int,), default)
        if not minimum <= value <= maximum:
            raise self.fail(key, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = float(self.get(key, (int, float), default))
        if not value >= minimum or value == float("inf"):
            raise self.fail(key, f"must be a finite number >= {minimum}, got {value}")
        return value

    def choice(self, key: str, default: str, choices: set[str] | re.Pattern[str]) -> str:
        value: str = self.get(key, (str,), default)
        if isinstance(choices, set):
            if value not in choices:
                raise self.fail(key, f"must be one of {', '.join(sorted(choices))}, got {value!r}")
        elif choices.fullmatch(value) is None:
            raise self.fail(key, f"invalid value {value!r}")
        return value

    def model_name(self, key: str) -> str:
        model: str = self.get(key, (str,), "")
        if model and not is_model_name(model):
            raise self.fail(key, f"invalid model name {model!r}")
        return model

    def table(self, key: str) -> _Table:
        data = self.get(key, (dict,), {})
        return _Table(self.source, f"{self.prefix}{key}.", data)

    def check_unknown(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.fail(key, "unknown key")


def _batching(t: _Table) -> BatchingConfig:
    delay: float | Literal["auto"]
    if t.data.get("max_queue_delay_ms", "auto") == "auto":
        t.used.add("max_queue_delay_ms")
        delay = "auto"
    else:
        delay = t.number("max_queue_delay_ms", 0.0)
    sizes = t.get("preferred_batch_sizes", (list,), [])
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise t.fail("preferred_batch_sizes", "must be a list of positive integers")
    config = BatchingConfig(
        max_queue_delay_ms=delay,
        preferred_batch_sizes=tuple(sorted(set(sizes))),
        max_queue_size=t.integer("max_queue_size", 1024, 0),
        timeout_ms=t.integer("timeout_ms", 0, 0),
        priority_levels=t.integer("priority_levels", 1, 1, 16),
        target_p99_ms=t.number("target_p99_ms", 0.0),
    )
    t.check_unknown()
    return config


def _names(t: _Table, key: str) -> tuple[str, ...]:
    names = t.get(key, (list,), [])
    if not all(isinstance(n, str) and n for n in names):
        raise t.fail(key, "must be a list of input names")
    return tuple(names)


def _logging(t: _Table) -> LoggingConfig:
    sample = t.number("sample", 1.0)
    if sample > 1.0:
        raise t.fail("sample", f"must be between 0 and 1, got {sample}")
    config = LoggingConfig(
        sample=sample, exclude_inputs=_names(t, "exclude_inputs"), hash_inputs=_names(t, "hash_inputs")
    )
    t.check_unknown()
    return config


_WEBHOOK = re.compile(r"https?://[^\s]+")


def _drift(t: _Table) -> DriftConfig:
    reference = t.get("reference", (str,), "")
    if reference.startswith("/") or ".." in Path(reference).parts or "\\" in reference:
        raise t.fail("reference", "must be a relative path inside the model's directory")
    config = DriftConfig(
        reference=reference,
        input=t.get("input", (str,), ""),
        window=t.integer("window", 5000, 10, 10_000_000),
        interval_s=t.number("interval_s", 60.0, 0.1),
        psi_threshold=t.number("psi_threshold", 0.2),
        sustain=t.integer("sustain", 3, 1, 1000),
        webhook=t.choice("webhook", "", _WEBHOOK) if "webhook" in t.data else "",
        webhook_timeout_s=t.number("webhook_timeout_s", 10.0, 0.1),
        cooldown_s=t.number("cooldown_s", 3600.0),
        bins=t.integer("bins", 10, 2, 100),
    )
    t.check_unknown()
    return config


_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")


def _mlflow(t: _Table) -> MlflowConfig:
    config = MlflowConfig(
        follow=t.choice("follow", "", _ALIAS) if "follow" in t.data else "",
        canary_alias=t.choice("canary_alias", "", _ALIAS) if "canary_alias" in t.data else "",
        canary_weight=t.integer("canary_weight", 10, 1, 99),
    )
    t.check_unknown()
    if config.follow and config.follow == config.canary_alias:
        raise t.fail("canary_alias", "must differ from follow")
    return config


def _version_policy(t: _Table) -> Literal["latest", "all"] | tuple[int, ...]:
    value = t.get("version_policy", (str, list), "latest")
    if value == "latest":
        return "latest"
    if value == "all":
        return "all"
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**63 for v in value)
    ):
        return tuple(sorted(set(value)))
    raise t.fail("version_policy", 'must be "latest", "all" or a non-empty list of version numbers')


def _placement(t: _Table) -> Literal["engine", "worker"] | None:
    if "placement" not in t.data:
        t.used.add("placement")
        return None
    return "worker" if t.choice("placement", "engine", {"engine", "worker"}) == "worker" else "engine"


def parse_model_config(data: dict[str, Any], source: str) -> ModelConfig:
    """Build a ModelConfig from parsed TOML; ``source`` names the file in error messages."""
    top = _Table(source, "", data)
    runtime = top.choice("runtime", DEFAULT_RUNTIME, set(RUNTIME_KINDS))
    config = ModelConfig(
        runtime=runtime,
        version_policy=_version_policy(top),
        max_batch_size=top.integer("max_batch_size", 0, 0, 2**20),
        instance_count=top.integer("instance_count", 1, 1, 64),
        inline_threshold_us=top.number("inline_threshold_us", 50.0),
        placement=_placement(top),
        batching=_batching(top.table("batching")),
        # Every kind's table is checked, not only the selected one's: a typo fails wherever it is.
        runtime_options={name: kind.parse_options(top.table(name)) for name, kind in RUNTIME_KINDS.items()},
        logging=_logging(top.table("logging")),
        drift=_drift(top.table("drift")),
        mlflow=_mlflow(top.table("mlflow")),
    )
    top.check_unknown()
    problem = RUNTIME_KINDS[runtime].check_selected(config.options)
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    return config


#: Keys a version's own ``config.toml`` may set: how that version runs. The others (version
#: policy, logging, drift) are the model's, whatever version serves.
VERSION_KEYS = frozenset(
    {"runtime", "max_batch_size", "instance_count", "inline_threshold_us", "placement", "batching"}
) | set(RUNTIME_KINDS)


def read_config_data(path: Path, source: str) -> dict[str, Any] | None:
    """The parsed TOML of ``path``, None when there is no such file; ConfigError names ``source``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot be read ({exc.strerror})") from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from exc


def merge_version_data(model_data: dict[str, Any], version_data: dict[str, Any], source: str) -> dict[str, Any]:
    """The model's settings with a version's on top, table by table; ConfigError for model-wide keys."""
    for key in version_data:
        if key not in VERSION_KEYS:
            raise ConfigError(f"{source}: {key}: set it in the model's config.toml (it applies to every version)")
    merged = dict(model_data)
    for key, value in version_data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_model_config(model_dir: Path, display_name: str) -> ModelConfig:
    """Read ``<model_dir>/config.toml`` (defaults if absent); errors name ``display_name``."""
    source = f"{display_name}/{CONFIG_FILE}"
    data = read_config_data(model_dir / CONFIG_FILE, source)
    return ModelConfig() if data is None else parse_model_config(data, source)
