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
from gateway.registry.config import ConfigError
from gateway.settings import Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorgate", description="Model serving gateway (Open Inference Protocol).")
    parser.add_argument("--version", action="version", version=f"tensorgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the models of a repository over HTTP")
    serve.add_argument("--config", type=Path, help="a tensorgate.toml (env TENSORGATE_CONFIG)")
    serve.add_argument("--repository", help="model repository directory (default: ./models)")
    serve.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: 8000)")
    serve.add_argument("--state-dir", dest="state_dir", help="routes, history and the admin token")
    serve.add_argument("--log-dir", dest="log_dir", help="the prediction log")
    serve.add_argument("--max-body-bytes", dest="max_body_bytes", type=int, help="request body limit")
    serve.add_argument("--log-level", dest="log_level", help="critical, error, warning, info or debug")
    serve.add_argument("--admin-token-file", dest="admin_token_file", help="file holding the admin bearer token")
    add_commands(commands)
    return parser


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM or SIGINT; graceful drain is uvicorn's."""
    keys = ("repository", "host", "port", "state_dir", "log_dir", "max_body_bytes", "log_level", "admin_token_file")
    try:
        settings = load_settings(args.config, overrides={k: getattr(args, k) for k in keys})
    except ConfigError as exc:
        print(f"tensorgate: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info(
        "tensorgate %s serving %s on http://%s:%d", __version__, settings.repository, settings.host, settings.port
    )

    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to whatever handler was there
    # before it; ours notes it, so that a graceful drain exits 0 as operators expect.
    def drained(signum: int, frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("stopped by signal %d after draining", signum)

    previous = {sig: signal.signal(sig, drained) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _run(settings)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _run(settings: Settings) -> None:
    import uvicorn

    from gateway.api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        log_config=None,
        # We trust no forwarding proxy by default; X-Forwarded-* would be the client's word.
        proxy_headers=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tensorgate`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return run(args)
