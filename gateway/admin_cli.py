"""The admin subcommands of ``tensorgate``: the admin API for pipelines that prefer a CLI to curl."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


class AdminError(Exception):
    """The server refused the call, or could not be reached; the message says which."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models``, ``load``, ``unload``, ``route``, ``swap``, ``rollback`` and ``history``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("TENSORGATE_URL", DEFAULT_URL),
                        help=f"the gateway (env TENSORGATE_URL, default {DEFAULT_URL})")  # fmt: skip
    common.add_argument("--actor", help="who acts, for the audit trail (default: $USER)")
    common.add_argument("--reason", help="why, for the audit trail")
    common.set_defaults(run=None)

    commands.add_parser("models", parents=[common], help="list models, versions and routes").set_defaults(run=_models)
    for verb in ("load", "unload"):
        command = commands.add_parser(verb, parents=[common], help=f"{verb} a model version")
        command.add_argument("model")
        command.add_argument("version")
        command.set_defaults(run=_load if verb == "load" else _unload)
    route = commands.add_parser("route", parents=[common], help="show or set a model's route")
    actions = route.add_subparsers(dest="route_action", required=True)
    get = actions.add_parser("get", parents=[common], help="show the route")
    get.add_argument("model")
    get.set_defaults(run=_route_get)
    put = actions.add_parser("set", parents=[common], help="replace the route: VERSION=WEIGHT ...")
    put.add_argument("model")
    put.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    put.add_argument("--shadow", action="append", default=[], metavar="VERSION=FRACTION")
    put.add_argument("--sticky-header", dest="sticky_header")
    put.set_defaults(run=_route_set)
    swap = commands.add_parser("swap", parents=[common], help="move 100%% of the traffic to a version")
    swap.add_argument("model")
    swap.add_argument("version")
    swap.set_defaults(run=_swap)
    rollback = commands.add_parser("rollback", parents=[common], help="restore the route before the last change")
    rollback.add_argument("model")
    rollback.add_argument("--to", type=int, help="restore the route in force after change SEQ")
    rollback.set_defaults(run=_rollback)
    history = commands.add_parser("history", parents=[common], help="the audit trail of a model")
    history.add_argument("model")
    history.set_defaults(run=_history)


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = os.environ.get("TENSORGATE_ADMIN_TOKEN", "").strip()
    if not token:
        raise AdminError("set TENSORGATE_ADMIN_TOKEN to the gateway's admin token")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    actor = args.actor or os.environ.get("USER")
    if actor:
        headers["x-actor"] = actor
    data = None
    if method != "GET":
        payload = dict(body or {})
        if args.reason:
            payload["reason"] = args.reason
        data = json.dumps(payload).encode()
    url = args.url.rstrip("/") + path
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise AdminError(f"{exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise AdminError(f"cannot reach {args.url}: {exc.reason}") from None


def _pairs(items: list[str], cast: type, what: str) -> dict[str, Any]:
    parsed = {}
    for item in items:
        version, sep, value = item.partition("=")
        if not sep or not version:
            raise AdminError(f"expected VERSION={what.upper()}, got {item!r}")
        try:
            parsed[version] = cast(value)
        except ValueError:
            raise AdminError(f"{what} of version {version} is not a number: {value!r}") from None
    return parsed


def _models(args: argparse.Namespace) -> Any:
    return _call(args, "GET", "/admin/models")


def _load(args: argparse.Namespace) -> Any:
    return _call(args, "POST", f"/admin/models/{args.model}/versions/{args.version}/load")


def _unload(args: argparse.Namespace) -> Any:
    return _call(args, "POST", f"/admin/models/{args.model}/versions/{args.version}/unload")


def _route_get(args: argparse.Namespace) -> Any:
    return _call(args, "GET", f"/admin/models/{args.model}/route")


def _route_set(args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"weights": _pairs(args.weights, int, "weight")}
    if args.shadow:
        body["shadow"] = _pairs(args.shadow, float, "fraction")
    if args.sticky_header:
        body["sticky_header"] = args.sticky_header
    return _call(args, "PUT", f"/admin/models/{args.model}/route", body)


def _swap(args: argparse.Namespace) -> Any:
    return _call(args, "POST", f"/admin/models/{args.model}/swap", {"version": args.version})


def _rollback(args: argparse.Namespace) -> Any:
    return _call(args, "POST", f"/admin/models/{args.model}/rollback", {} if args.to is None else {"to": args.to})


def _history(args: argparse.Namespace) -> Any:
    return _call(args, "GET", f"/admin/models/{args.model}/history")


def run(args: argparse.Namespace) -> int:
    """Run one admin command: the answer as JSON on stdout, exit 0; else the error, exit 1."""
    try:
        result = args.run(args)
    except AdminError as exc:
        print(f"tensorgate: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0
