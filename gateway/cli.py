"""The ``tensorgate`` command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from gateway import __version__
from gateway.admin_cli import add_commands, run
from gateway.drift.cli import add_command as add_drift
from gateway.drift.cli import run as run_drift
from gateway.lifecycle import Lifecycle
from gateway.registry.config import ConfigError
from gateway.settings import load_settings, setting_help, setting_types
from gateway.telemetry.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorgate", description="Model serving gateway (Open Inference Protocol).")
    parser.add_argument("--version", action="version", version=f"tensorgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the models of a repository over HTTP",
        description="Every setting is also a tensorgate.toml key and a TENSORGATE_<NAME> variable; "
        "flags win over the environment, which wins over the file (docs/configuration.md).",
    )
    serve.add_argument("--config", type=Path, help="a tensorgate.toml (env TENSORGATE_CONFIG)")
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


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM or SIGINT, then drain (docs/operations.md)."""
    try:
        settings = load_settings(args.config, overrides={k: getattr(args, k) for k in setting_types()})
    except ConfigError as exc:
        print(f"tensorgate: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # Imported here: the admin subcommands need none of the server (nor ONNX Runtime).
    from gateway.api.app import create_app
    from gateway.api.server import build_server

    log = logging.getLogger(__name__)
    log.info("tensorgate %s serving %s on http://%s:%d", __version__, settings.repository, settings.host, settings.port)
    lifecycle = Lifecycle(settings.max_concurrent_requests)
    server = build_server(settings, create_app(settings, lifecycle=lifecycle), lifecycle)

    # uvicorn re-raises the signal it drained on to the handler that was there before it; ours
    # notes it, so that a graceful drain exits 0 as operators expect.
    def drained(signum: int, frame: FrameType | None) -> None:
        log.info("stopped by signal %d after draining", signum)

    previous = {sig: signal.signal(sig, drained) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tensorgate`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "drift":
        return run_drift(args)
    return run(args)
