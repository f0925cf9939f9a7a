"""The ``tensorgate`` command line.

Start-up time matters here: pipelines call the admin commands in loops, and ``--help`` must
answer at once. This module and the parsers import nothing heavy (no numpy, scipy, ONNX or
the server); each command imports what it uses when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gateway import __version__
from gateway.admin_cli import add_commands, run
from gateway.config_error import ConfigError
from gateway.drift.cli import add_command as add_drift
from gateway.drift.cli import run as run_drift
from gateway.settings import Settings, load_settings, setting_help, setting_types

if TYPE_CHECKING:
    from gateway.host.roles import HostRole
    from gateway.models import ModelManager

#: Exit status of a usage or configuration error (argparse's, and the drift command's).
EXIT_USAGE = 2

_SERVE_EXAMPLES = """\
examples:
  tensorgate serve --repository examples/models
  tensorgate serve --config tensorgate.toml --host 0.0.0.0 --port 8000
  TENSORGATE_ADMIN_TOKEN=$(cat /run/secrets/token) tensorgate serve --repository /models --no-strict-readiness

A configuration error (a bad value, an unreadable --config, a short admin token, a missing or
empty repository without --allow-empty) exits 2 with one line on stderr before serving.
"""


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (the full usage of ``serve`` is 40 lines)."""

    def error(self, message: str) -> NoReturn:
        """Print ``tensorgate CMD: error: ... (see --help)`` and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tensorgate",
        description="Model serving gateway (Open Inference Protocol).",
        epilog="examples:\n  tensorgate serve --repository examples/models\n  tensorgate route get fraud\n"
        "  tensorgate drift --model fraud --reference baseline.jsonl\n\nSee tensorgate COMMAND --help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tensorgate {__version__}")
    commands: argparse._SubParsersAction[argparse.ArgumentParser]
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")  # type: ignore[assignment]
    serve = commands.add_parser(
        "serve",
        help="serve the models of a repository over HTTP",
        description="Every setting is also a tensorgate.toml key and a TENSORGATE_<NAME> variable; "
        "flags win over the environment, which wins over the file (docs/configuration.md).",
        epilog=_SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="a tensorgate.toml (env TENSORGATE_CONFIG)")
    types = setting_types()
    for name, text in setting_help().items():
        flag = "--" + name.replace("_", "-")
        if types[name] is bool:
            serve.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            metavar = {int: "N", float: "SECONDS" if name.endswith("_s") else "X", Path: "PATH"}.get(
                types[name], "TEXT"
            )
            serve.add_argument(flag, dest=name, metavar=metavar, help=text)
    add_commands(commands)
    add_drift(commands)
    return parser


def check_startup(settings: Settings, environ: dict[str, str] | None = None) -> None:
    """What would make the server fail once started, found before it starts: a ConfigError.

    The admin token is provisioned here (generated into the state directory if none is
    configured) so a short token or an unwritable state directory is one line, not a traceback
    from the server's lifespan. The repository must exist and hold a model, unless
    ``allow_empty``: a server that says ready with nothing to serve hides a wrong path.
    """
    # Not from gateway.api.app: a supervisor runs these checks and needs none of the server.
    from gateway.auth import PREDLOG_KEY_FILE, SecretError, hash_key, provision_token
    from gateway.state.redis_store import read_secret

    if settings.registry_kind == "local" and not settings.allow_empty:
        _check_repository(settings.repository)
    _check_host(settings.host, settings.port)
    try:
        provision_token(dict(os.environ) if environ is None else environ, settings.admin_token_file, settings.state_dir)
        if settings.predlog:  # its hash key lives beside the token, and is as checked
            hash_key(settings.state_dir / PREDLOG_KEY_FILE)
        if settings.state_store_password_file is not None:
            read_secret(settings.state_store_password_file)
    except SecretError as exc:  # a short token, an unreadable token file, a bad hash key
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"state_dir: cannot write {settings.state_dir}: {exc.strerror or exc}") from None


def _check_host(host: str, port: int) -> None:
    """The listen address resolves (a typo in --host is a configuration error).

    A port already in use is not checked here: that is the machine's state, not the
    configuration, and uvicorn answers it as for the admin port (one logged line, exit 3).
    """
    import socket

    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"host: cannot resolve {host!r}: {getattr(exc, 'strerror', None) or exc}") from None


def _check_repository(path: Path) -> None:
    from gateway.registry.local import LocalRegistry

    hint = "(--allow-empty to start without models)"
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise ConfigError(f"repository {path.absolute()} {what} {hint}")
    registry = LocalRegistry(path)
    if not any(registry.versions(name) for name in registry.models()):
        raise ConfigError(f"repository {path.absolute()} holds no model (no <model>/<version>/model.onnx) {hint}")


def serve(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Run the server until SIGTERM or SIGINT, then drain (docs/operations.md).

    ``argv`` is the command line after ``tensorgate``: a supervisor (``workers >= 2`` or
    ``engine``) starts each child with it, so every child loads the same settings.
    """
    from gateway.host.roles import HostRole

    try:
        settings = load_settings(args.config, overrides={k: getattr(args, k) for k in setting_types()})
    except ConfigError as exc:
        print(f"tensorgate: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from gateway.telemetry.logs import configure_logging

    # Before the checks: a token generated there is logged (its path) in the configured format.
    configure_logging(settings.log_level, settings.log_format)
    role = HostRole.from_env(os.environ)
    if role is not None:  # a child of a supervisor, which already ran the checks below
        return _run_child(settings, role, grpc_chosen=_grpc_chosen(args, settings))
    try:
        check_startup(settings)
    except ConfigError as exc:
        print(f"tensorgate: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from gateway.host.supervisor import run_supervisor, wants_supervisor

    if wants_supervisor(settings):
        return run_supervisor(settings, argv, grpc_chosen=_grpc_chosen(args, settings))
    return _run_server(settings, grpc_chosen=_grpc_chosen(args, settings))


def _grpc_chosen(args: argparse.Namespace, settings: Settings) -> bool:
    chosen = args.grpc_port is not None or "TENSORGATE_GRPC_PORT" in os.environ
    return chosen or settings.grpc_port != Settings().grpc_port


def _run_child(settings: Settings, role: HostRole, *, grpc_chosen: bool) -> int:
    """Be the worker or engine the supervisor started this process as."""
    from gateway.host.children import die_with_parent, tag_logs
    from gateway.host.rundirs import hold_run_dir

    tag_logs(role.process)
    die_with_parent(os.environ)
    hold_run_dir(role.run_dir)
    if role.is_engine:
        from gateway.engine.main import run_engine

        return run_engine(settings, role)
    return _run_server(settings, grpc_chosen=grpc_chosen, role=role)


def _run_server(settings: Settings, *, grpc_chosen: bool = True, role: HostRole | None = None) -> int:
    # Imported here: the admin subcommands need none of the server (nor ONNX Runtime).
    import logging
    import signal
    from types import FrameType

    from gateway.api.app import create_app
    from gateway.api.server import build_server
    from gateway.api_grpc.server import GrpcFrontEnd
    from gateway.host.listeners import inherited_sockets
    from gateway.lifecycle import Lifecycle

    log = logging.getLogger(__name__)
    log.info("tensorgate %s serving %s on http://%s:%d", __version__, settings.repository, settings.host, settings.port)
    lifecycle = Lifecycle(settings.max_concurrent_requests, settings.max_inflight_body_bytes)
    # A busy gRPC port stops the server when grpc_port was chosen; the default one is skipped.
    # A host's workers share the port (SO_REUSEPORT); their supervisor checked nothing else holds it.
    grpc = (
        GrpcFrontEnd(settings, lifecycle, required=grpc_chosen, share_port=role is not None)
        if settings.grpc_port
        else None
    )
    sockets, hold, on_ready = None, None, None
    if role is not None:
        # A worker serves on the sockets its supervisor bound (main port, then admin port), and
        # accepts from them only once its models loaded: the other workers serve meanwhile, so
        # a replacement worker does not answer "loading" to requests a ready one would serve.
        sockets = inherited_sockets(role.fds) if role.fds else None
        managers: list[ModelManager] = []
        on_ready = managers.append

        async def hold() -> None:
            await managers[0].wait_started()

    app = create_app(settings, lifecycle=lifecycle, grpc=grpc, role=role, on_ready=on_ready)
    server = build_server(settings, app, lifecycle, grpc, hold, supervised=role is not None)

    # uvicorn re-raises the signal it drained on to the handler that was there before it; ours
    # notes it, so that a graceful drain exits 0 as operators expect.
    def drained(signum: int, frame: FrameType | None) -> None:
        log.info("stopped by signal %d after draining", signum)

    previous = {sig: signal.signal(sig, drained) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=sockets)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tensorgate`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args, sys.argv[1:] if argv is None else argv)
    if args.command == "drift":
        return run_drift(args)
    return run(args)
