"""The admin subcommands of ``tensorgate``: the admin API for pipelines that prefer a CLI to curl.

Read-only commands (``models``, ``route get``, ``history``) take ``--url`` only; commands that
change something also take ``--actor`` and ``--reason`` for the audit trail. ``urllib`` is
imported when a call is made, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gateway.registry.names import is_model_name

DEFAULT_URL = "http://127.0.0.1:8000"

_AUTH_NOTE = "The admin token comes from TENSORGATE_ADMIN_TOKEN (e.g. $(cat .tensorgate/state/admin-token))."

_EXAMPLES = {
    "models": "tensorgate models\n  tensorgate models --url http://gateway:8000",
    "load": 'tensorgate load fraud 3 --reason "candidate for the next release"',
    "unload": 'tensorgate unload fraud 1 --reason "retired"',
    "route": "tensorgate route get fraud\n  tensorgate route set fraud 2=90 3=10 --sticky-header x-user-id",
    "route get": "tensorgate route get fraud",
    "route set": 'tensorgate route set fraud 2=90 3=10 --sticky-header x-user-id --reason "10% canary"\n'
    "  tensorgate route set fraud 2=80 3=20            # keeps x-user-id and any shadows\n"
    "  tensorgate route set fraud 2=100 --shadow 3=1.0  # mirror every request to 3\n"
    "  tensorgate route set fraud 2=100 --no-shadow --no-sticky",
    "swap": 'tensorgate swap fraud 3 --reason "promote"',
    "rollback": "tensorgate rollback fraud\n  tensorgate rollback fraud --to 4",
    "history": "tensorgate history fraud",
}

_ROUTE_SET = """\
Replaces the model's weights (PUT /admin/models/{m}/route). What the command line does not
mention is kept: the current sticky header and shadows stay unless --no-sticky / --no-shadow
(or --sticky-header / --shadow give new ones); a kept shadow that now takes traffic is dropped.
What changed, and what was kept, is printed on stderr; the new route as JSON on stdout.
"""


class AdminError(Exception):
    """The server refused the call, or could not be reached; the message says which."""

    #: The command's exit status: 1, or 2 for a usage error (a malformed argument).
    status = 1


class UsageError(AdminError):
    """An argument the command cannot use (a bad ``--url``, a weight that is not a number): exit 2."""

    status = 2


class Outcome:
    """A command's answer with an exit status of its own (``rollout wait``: 0, 1 or 2)."""

    def __init__(self, doc: Any, status: int) -> None:
        self.doc = doc
        self.status = status


def model_name(text: str) -> str:
    """A MODEL argument: a valid model name, else argparse's usage error (exit 2), not a 404 later."""
    if not is_model_name(text):
        raise argparse.ArgumentTypeError(
            f"invalid model name {text[:40]!r}: use 1-128 of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return text


def _epilog(name: str) -> str:
    return f"example:\n  {_EXAMPLES[name]}\n\n{_AUTH_NOTE}"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models``, ``load``, ``unload``, ``route``, ``swap``, ``rollback`` and ``history``."""
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument("--url", default=os.environ.get("TENSORGATE_URL", DEFAULT_URL),
                     help=f"the gateway (env TENSORGATE_URL, default {DEFAULT_URL})")  # fmt: skip
    url.set_defaults(run=None, actor=None, reason=None)
    audit = argparse.ArgumentParser(add_help=False, parents=[url])
    audit.add_argument("--actor", help="who acts, for the audit trail (default: $USER)")
    audit.add_argument("--reason", help="why, for the audit trail")
    text = argparse.RawDescriptionHelpFormatter

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, changes: bool, help_text: str, **kw: Any
    ) -> argparse.ArgumentParser:
        full = name if parent is commands else f"route {name}"
        parents = [changing if changes else url]
        epilog = _epilog(full)
        return parent.add_parser(name, parents=parents, help=help_text, epilog=epilog, formatter_class=text, **kw)

    # --wait (fleet mode, docs/operations.md): answer once every live replica applied the change.
    changing = argparse.ArgumentParser(add_help=False, parents=[audit])
    changing.add_argument("--wait", action="store_true",
                          help="wait until every live replica applied it (exit 2 naming those pending)")  # fmt: skip
    changing.add_argument("--wait-timeout", type=float, default=30.0, metavar="S",
                          help="how long --wait waits, in seconds (default 30)")  # fmt: skip

    command(commands, "models", False, "list models, versions and routes").set_defaults(run=_models)
    for verb in ("load", "unload"):
        sub = command(commands, verb, True, f"{verb} a model version")
        sub.add_argument("model", metavar="MODEL", type=model_name, help="the model, e.g. fraud")
        sub.add_argument("version", metavar="VERSION", help="the version, e.g. 3")
        sub.set_defaults(run=_load if verb == "load" else _unload)
    route = commands.add_parser(
        "route", help="show or set a model's route", epilog=_epilog("route"), formatter_class=text
    )
    actions = route.add_subparsers(dest="route_action", required=True, metavar="ACTION")
    get = command(actions, "get", False, "show the route")
    get.add_argument("model", metavar="MODEL", type=model_name, help="the model, e.g. fraud")
    get.set_defaults(run=_route_get)
    put = command(actions, "set", True, "set the weights: VERSION=WEIGHT ...", description=_ROUTE_SET)
    put.add_argument("model", metavar="MODEL", type=model_name, help="the model, e.g. fraud")
    put.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT", help="integer weights summing to 100")
    shadow = put.add_mutually_exclusive_group()
    shadow.add_argument("--shadow", action="append", metavar="VERSION=FRACTION",
                        help="mirror a fraction (0, 1] of requests to VERSION; replaces current shadows")  # fmt: skip
    shadow.add_argument("--no-shadow", action="store_true", help="clear the shadows")
    sticky = put.add_mutually_exclusive_group()
    sticky.add_argument("--sticky-header", dest="sticky_header", metavar="HEADER",
                        help="requests with this header stick to one version, e.g. x-user-id")  # fmt: skip
    sticky.add_argument("--no-sticky", action="store_true", help="clear the sticky header")
    put.set_defaults(run=_route_set)
    swap = command(commands, "swap", True, "move 100%% of the traffic to a version (loading it if needed)")
    swap.add_argument("model", metavar="MODEL", type=model_name, help="the model, e.g. fraud")
    swap.add_argument("version", metavar="VERSION", help="the version that takes all the traffic")
    swap.set_defaults(run=_swap)
    rollback = command(commands, "rollback", True, "restore the route before the last change")
    rollback.add_argument("model", metavar="MODEL", type=model_name, help="the model, e.g. fraud")
    rollback.add_argument("--to", type=int, metavar="SEQ", help="restore the route in force after change SEQ")
    rollback.set_defaults(run=_rollback)
    history = command(commands, "history", False, "the audit trail of a model")
    history.add_argument("model", metavar="MODEL", type=model_name, help="the model, e.g. fraud")
    history.set_defaults(run=_history)
    from gateway.rollouts.cli import add_commands as add_rollout_commands  # rollout, apply, validate

    add_rollout_commands(commands, url, audit)


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import urllib.error
    import urllib.request

    token = os.environ.get("TENSORGATE_ADMIN_TOKEN", "").strip()
    if not token:
        raise AdminError("set TENSORGATE_ADMIN_TOKEN to the gateway's admin token")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    actor = args.actor or os.environ.get("USER")
    if actor and method != "GET":
        headers["x-actor"] = actor
    data = None
    if method != "GET":
        payload = dict(body or {})
        if args.reason:
            payload["reason"] = args.reason
        data = json.dumps(payload).encode()
    url = args.url.rstrip("/") + path
    if method != "GET" and getattr(args, "wait", False):
        url += f"?wait=all&timeout={args.wait_timeout:g}"
    try:
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        if request.type not in ("http", "https") or not request.host:
            raise ValueError("an http:// or https:// URL is needed")
    except ValueError as exc:  # "notaurl", "http://[::1", "ftp://..."
        raise UsageError(f"--url {args.url!r} is not a gateway URL: {exc}") from None
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            doc = json.loads(response.read() or b"{}")
            if response.status == 202:  # saved, but not every live replica applied it in time
                print(f"tensorgate: {doc.get('message', 'not applied by every replica yet')}", file=sys.stderr)
                return Outcome(doc, 2)
            return doc
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise AdminError(f"{exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise AdminError(f"cannot reach {args.url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # a reset connection, a bad --url
        raise AdminError(f"cannot call {args.url}: {exc}") from None


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One admin API call (``--url``, the token from the environment, ``--actor``/``--reason`` if any)."""
    return _call(args, method, path, body)


def _pairs(items: list[str], cast: type, what: str) -> dict[str, Any]:
    parsed = {}
    for item in items:
        version, sep, value = item.partition("=")
        if not sep or not version:
            raise UsageError(f"expected VERSION={what.upper()}, got {item!r}")
        try:
            parsed[version] = cast(value)
        except ValueError:
            raise UsageError(f"{what} of version {version} is not a number: {value!r}") from None
    return parsed


def _models(args: argparse.Namespace) -> Any:
    return _call(args, "GET", "/admin/models")


def _load(args: argparse.Namespace) -> Any:
    return _call(args, "POST", f"/admin/models/{args.model}/versions/{args.version}/load")


def _unload(args: argparse.Namespace) -> Any:
    return _call(args, "POST", f"/admin/models/{args.model}/versions/{args.version}/unload")


def _route_get(args: argparse.Namespace) -> Any:
    return _call(args, "GET", f"/admin/models/{args.model}/route")


def _current_route(args: argparse.Namespace) -> dict[str, Any]:
    """The model's route now ({} when it has none yet: nothing to keep)."""
    try:
        route = _call(args, "GET", f"/admin/models/{args.model}/route")
    except AdminError as exc:
        if str(exc).startswith("409:"):
            return {}
        raise
    return route if isinstance(route, dict) else {}


def _fmt(pairs: dict[str, Any]) -> str:
    return " ".join(f"{v}={w}" for v, w in sorted(pairs.items(), key=lambda p: int(p[0]) if p[0].isdigit() else 0))


def _route_set(args: argparse.Namespace) -> Any:
    """PUT replaces the route, so the CLI sends what it keeps explicitly, and says so."""
    weights = _pairs(args.weights, int, "weight")
    current = _current_route(args)
    said: list[str] = []
    if current.get("weights"):
        said.append(f"weights: {_fmt(current['weights'])} -> {_fmt(weights)}")
    body: dict[str, Any] = {"weights": weights}
    old_shadow: dict[str, Any] = dict(current.get("shadow") or {})
    if args.shadow:
        body["shadow"] = _pairs(args.shadow, float, "fraction")
        said.append(f"shadow: {_fmt(old_shadow) or 'none'} -> {_fmt(body['shadow'])}")
    elif args.no_shadow:
        body["shadow"] = {}
        if old_shadow:
            said.append(f"shadow: {_fmt(old_shadow)} -> none (--no-shadow)")
    elif old_shadow:
        # A version cannot both take traffic and shadow it: one now weighted stops shadowing.
        kept = {v: f for v, f in old_shadow.items() if weights.get(v, 0) == 0}
        body["shadow"] = kept
        for version in sorted(old_shadow.keys() - kept.keys()):
            said.append(f"shadow: {version} dropped: it now takes traffic")
        if kept:
            said.append(f"shadow: {_fmt(kept)} kept (--no-shadow clears it)")
    old_sticky = current.get("sticky_header")
    if args.sticky_header:
        body["sticky_header"] = args.sticky_header
        if args.sticky_header != old_sticky:
            said.append(f"sticky header: {old_sticky or 'none'} -> {args.sticky_header}")
    elif args.no_sticky:
        if old_sticky:
            said.append(f"sticky header: {old_sticky} -> none (--no-sticky)")
    elif old_sticky:
        body["sticky_header"] = old_sticky
        said.append(f"sticky header: {old_sticky} kept (--no-sticky clears it)")
    result = _call(args, "PUT", f"/admin/models/{args.model}/route", body)
    for line in said:
        print(f"tensorgate: route of {args.model}: {line}", file=sys.stderr)
    return result


def _swap(args: argparse.Namespace) -> Any:
    return _call(args, "POST", f"/admin/models/{args.model}/swap", {"version": args.version})


def _rollback(args: argparse.Namespace) -> Any:
    return _call(args, "POST", f"/admin/models/{args.model}/rollback", {} if args.to is None else {"to": args.to})


def _history(args: argparse.Namespace) -> Any:
    return _call(args, "GET", f"/admin/models/{args.model}/history")


def run(args: argparse.Namespace) -> int:
    """Run one admin command: the answer as JSON on stdout, exit 0; else the error, exit 1 (2: usage)."""
    try:
        result = args.run(args)
    except AdminError as exc:
        print(f"tensorgate: {exc}", file=sys.stderr)
        return exc.status
    if isinstance(result, Outcome):
        if result.doc is not None:
            print(json.dumps(result.doc, indent=2))
        return result.status
    print(json.dumps(result, indent=2))
    return 0
