"""``tensorgate rollout ...``, ``tensorgate apply`` and ``tensorgate validate`` (docs/rollouts.md).

Like the other admin commands these import nothing heavy: ``urllib`` when a call is made, and
``validate`` imports ONNX Runtime and numpy only when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.admin_cli import AdminError, Outcome, call, model_name
from gateway.rollouts.spec import SpecError, parse_spec
from routing.route import Route, RouteError

_ACTIONS = ("pause", "resume", "abort", "promote")
#: ``rollout wait``'s exit statuses: a pipeline's gate.
WAIT_PROMOTED, WAIT_ABORTED, WAIT_ERROR = 0, 1, 2

_ROLLOUT_HELP = """\
Metric-gated rollouts (POST /admin/models/{m}/rollouts): the gateway shadows the candidate,
steps its weight, analyses every window on its own figures and promotes or aborts by itself.

examples:
  tensorgate rollout start fraud -f rollout.json
  tensorgate rollout status fraud
  tensorgate rollout pause fraud --reason "looking at the dashboard"
  tensorgate rollout resume fraud
  tensorgate rollout abort fraud
  tensorgate rollout promote fraud          # skip the remaining steps
  tensorgate rollout wait fraud --timeout 1800 && echo promoted

rollout wait exits 0 when promoted, 1 when aborted, 2 on an error or at --timeout.
"""

_APPLY_HELP = """\
Sets the desired routes and rollouts of several models from one file (TOML or YAML):

  [models.fraud.rollout]            # start this rollout unless the same one already ran
  to = "3"
  steps = [{weight = 10, pause_s = 60}, {weight = 50, pause_s = 120}]
  analysis = {interval_s = 30, min_requests = 200, max_error_rate = 0.01}

  [models.churn.route]              # set this route unless it is already in force
  weights = {"4" = 100}

Applying the same file twice changes nothing; --dry-run prints what would change.
"""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], url: argparse.ArgumentParser,
                 audit: argparse.ArgumentParser) -> None:  # fmt: skip
    """Add ``rollout``, ``apply`` and ``validate`` (``url``/``audit``: the shared --url, --actor, --reason)."""
    text = argparse.RawDescriptionHelpFormatter
    rollout = commands.add_parser("rollout", help="metric-gated rollouts", description=_ROLLOUT_HELP,
                                  formatter_class=text)  # fmt: skip
    actions = rollout.add_subparsers(dest="rollout_action", required=True, metavar="ACTION")
    start = actions.add_parser("start", parents=[audit], help="start a rollout from a spec file (JSON, TOML, YAML)")
    start.add_argument("model", metavar="MODEL", type=model_name)
    start.add_argument("-f", "--file", required=True, type=Path, help="the rollout spec")
    start.set_defaults(run=_start)
    status = actions.add_parser("status", parents=[url], help="the running (or last) rollout")
    status.add_argument("model", metavar="MODEL", type=model_name)
    status.set_defaults(run=_status)
    for action in _ACTIONS:
        sub = actions.add_parser(action, parents=[audit], help=f"{action} the running rollout")
        sub.add_argument("model", metavar="MODEL", type=model_name)
        sub.set_defaults(run=_control, action=action)
    wait = actions.add_parser("wait", parents=[url], help="wait for the end: exit 0 promoted, 1 aborted, 2 error")
    wait.add_argument("model", metavar="MODEL", type=model_name)
    wait.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="give up after S seconds (exit 2)")
    wait.add_argument("--poll", type=float, default=1.0, metavar="S", help="seconds between two looks (default 1)")
    wait.set_defaults(run=_wait)
    apply = commands.add_parser("apply", parents=[audit], help="apply the routes and rollouts a file declares",
                                description=_APPLY_HELP, formatter_class=text)  # fmt: skip
    apply.add_argument("-f", "--file", required=True, type=Path, help="the release file (.toml, .yaml, .json)")
    apply.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    apply.set_defaults(run=_apply)
    validate = commands.add_parser(
        "validate", parents=[url], help="check a new ONNX model against the serving version before registering it"
    )
    validate.add_argument("model", metavar="MODEL", type=model_name, help="the model it is a new version of")
    validate.add_argument("-f", "--file", required=True, type=Path, help="the new model.onnx")
    validate.add_argument("--samples", type=int, default=8, help="random requests to run it on (default 8)")
    validate.set_defaults(run=_validate)


def read_document(path: Path) -> Any:
    """A JSON, TOML or YAML file (by its suffix; YAML needs pyyaml)."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise AdminError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise AdminError("YAML files need pyyaml (pip install pyyaml); or use TOML or JSON") from None
            return yaml.safe_load(text)
        return json.loads(text)
    except AdminError:
        raise
    except Exception as exc:  # tomllib, yaml and json each raise their own error
        raise AdminError(f"{path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None


def _spec(doc: Any, where: str) -> dict[str, Any]:
    try:
        return parse_spec(doc).to_json() | ({"reason": doc["reason"]} if doc.get("reason") else {})
    except SpecError as exc:
        raise AdminError(f"{where}: {exc}") from None


def _start(args: argparse.Namespace) -> Any:
    doc = read_document(args.file)
    spec = _spec(doc, str(args.file))  # checked here first: a typo fails before any call
    return call(args, "POST", f"/admin/models/{args.model}/rollouts", spec)


def _status(args: argparse.Namespace) -> Any:
    return call(args, "GET", f"/admin/models/{args.model}/rollouts/current")


def _control(args: argparse.Namespace) -> Any:
    return call(args, "POST", f"/admin/models/{args.model}/rollouts/current/{args.action}")


def _wait(args: argparse.Namespace) -> Outcome:
    """Poll until promoted (0) or aborted (1); 2 on a refusal or at --timeout. A restart is waited out."""
    deadline = time.monotonic() + args.timeout
    said = None
    while True:
        try:
            doc = call(args, "GET", f"/admin/models/{args.model}/rollouts/current")
        except AdminError as exc:
            if not str(exc).startswith(("cannot reach", "cannot call", "502", "503")):
                print(f"tensorgate: {exc}", file=sys.stderr)
                return Outcome(None, WAIT_ERROR)
            doc = None  # the gateway restarting (the rollout resumes after it): keep waiting
        if doc is not None:
            line = f"{doc.get('phase')}: {doc.get('message')}"
            if line != said:
                print(f"tensorgate: rollout of {args.model}: {line}", file=sys.stderr)
                said = line
            if doc.get("phase") == "promoted":
                return Outcome(doc, WAIT_PROMOTED)
            if doc.get("phase") == "aborted":
                return Outcome(doc, WAIT_ABORTED)
        if time.monotonic() + args.poll > deadline:
            print(f"tensorgate: rollout of {args.model} not over after {args.timeout:g} s", file=sys.stderr)
            return Outcome(doc, WAIT_ERROR)
        time.sleep(args.poll)


# -- apply -----------------------------------------------------------------------------------


def _route_doc(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("weights"), dict):
        raise AdminError(f'{where}: a route needs weights, e.g. weights = {{"1" = 100}}')
    return {
        "weights": {str(v): w for v, w in doc["weights"].items()},
        "shadow": {str(v): f for v, f in (doc.get("shadow") or {}).items()},
        "sticky_header": doc.get("sticky_header"),
    }


def _same_route(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("weights", "shadow", "sticky_header")
    norm = [{k: (x.get(k) or ({} if k != "sticky_header" else None)) for k in keys} for x in (a, b)]
    return norm[0] == norm[1]


def plan(desired: Any, read: Any) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(model, what, description, body) per model; ``read(path)`` GETs (None on 404)."""
    if not isinstance(desired, dict) or not isinstance(desired.get("models"), dict):
        raise AdminError("a release file has a [models.NAME] table per model")
    steps: list[tuple[str, str, str, dict[str, Any] | None]] = []
    for name, entry in sorted(desired["models"].items()):
        if not isinstance(entry, dict) or set(entry) - {"route", "rollout"} or len(entry) != 1:
            raise AdminError(f"models.{name}: give either a route or a rollout table")
        if "route" in entry:
            want = _route_doc(entry["route"], f"models.{name}.route")
            try:  # what the gateway would refuse, a dry run refuses too
                Route.from_json(want)
            except RouteError as exc:
                raise AdminError(f"models.{name}.route: invalid route: {exc}") from None
            have = read(f"/admin/models/{name}/route") or {}
            if _same_route(want, have):
                steps.append((name, "unchanged", "route already in force", None))
            else:
                old = " ".join(f"{v}={w}" for v, w in sorted((have.get("weights") or {}).items())) or "none"
                new = " ".join(f"{v}={w}" for v, w in sorted(want["weights"].items()))
                steps.append((name, "route", f"route {old} -> {new}", want))
            continue
        spec = _spec(entry["rollout"], f"models.{name}.rollout")
        last = read(f"/admin/models/{name}/rollouts/current")
        if last is not None and last.get("spec", {}) | {"reason": None} == spec | {"reason": None}:
            steps.append((name, "unchanged", f"rollout to {spec['to']} already {last.get('phase')}", None))
        elif last is not None and last.get("phase") not in ("promoted", "aborted"):
            raise AdminError(f"models.{name}: another rollout ({last.get('to')}) runs; abort it or wait for it")
        else:
            route = read(f"/admin/models/{name}/route") or {}
            if route.get("weights") == {spec["to"]: 100}:
                steps.append((name, "unchanged", f"version {spec['to']} already takes all the traffic", None))
            else:
                steps.append((name, "rollout", f"start a rollout to version {spec['to']}", spec))
    return steps


def _apply(args: argparse.Namespace) -> Any:
    desired = read_document(args.file)

    def read(path: str) -> Any:
        """GET ``path``; None when there is nothing (no rollout yet, a model with no route yet)."""
        try:
            return call(args, "GET", path)
        except AdminError as exc:
            # A route's 404 is an unknown model: an error, in a dry run too.
            if str(exc).startswith("409:") or (str(exc).startswith("404:") and not path.endswith("/route")):
                return None
            raise

    changes = plan(desired, read)
    done = []
    for name, what, description, body in changes:
        if args.dry_run or body is None:
            print(f"{'=' if what == 'unchanged' else '~'} {name}: {description}", file=sys.stderr)
            done.append({"model": name, "change": what, "description": description, "applied": False})
            continue
        path = f"/admin/models/{name}/route" if what == "route" else f"/admin/models/{name}/rollouts"
        try:
            call(args, "PUT" if what == "route" else "POST", path, body)
        except AdminError:
            print(f"! {name}: {description}: refused", file=sys.stderr)
            raise
        print(f"+ {name}: {description}", file=sys.stderr)  # "+" only once the gateway took it
        done.append({"model": name, "change": what, "description": description, "applied": True})
    return {"dry_run": args.dry_run, "changes": done}


# -- validate --------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> Outcome:
    """Load the file with ONNX Runtime, compare its signature with the serving version's, run samples."""
    problems: list[str] = []
    try:
        serving = call(args, "GET", f"/v2/models/{args.model}")
    except AdminError as exc:
        print(f"tensorgate: cannot read the serving version's signature: {exc}", file=sys.stderr)
        return Outcome(None, 2)
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(args.file), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own hierarchy: any of it is a model that will not load
        print(f"tensorgate: {args.file} does not load: {exc}", file=sys.stderr)
        return Outcome({"ok": False, "problems": [f"does not load: {exc}"]}, 1)
    mine = {"inputs": session.get_inputs(), "outputs": session.get_outputs()}
    for side in ("inputs", "outputs"):
        theirs = {t["name"]: t for t in serving.get(side, [])}
        ours = {t.name: t for t in mine[side]}
        for name in sorted(theirs.keys() - ours.keys()):
            problems.append(f"{side[:-1]} {name!r} of the serving version is missing")
        for name in sorted(ours.keys() & theirs.keys()):
            want = theirs[name]
            got_type = _V2_TYPES.get(ours[name].type)
            if got_type != want.get("datatype"):
                problems.append(f"{side[:-1]} {name!r}: {got_type} where the serving version has {want['datatype']}")
            got_shape = [d if isinstance(d, int) else -1 for d in ours[name].shape]
            if not _shapes_fit(got_shape, want.get("shape", [])):
                problems.append(f"{side[:-1]} {name!r}: shape {got_shape}, serving {want.get('shape')}")
    rng = np.random.default_rng(0)
    ran = 0
    if not problems:
        for _ in range(args.samples):
            feed = {}
            for spec in mine["inputs"]:
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
                dtype = _NUMPY.get(spec.type)
                if dtype is None:
                    problems.append(f"input {spec.name!r}: cannot make sample data of {spec.type}")
                    break
                feed[spec.name] = rng.random(shape).astype(dtype)
            else:
                try:
                    session.run(None, feed)
                    ran += 1
                except Exception as exc:  # a sample it cannot run is the finding
                    problems.append(f"a sample request failed: {exc}")
                    break
    for problem in problems:
        print(f"tensorgate: {args.file}: {problem}", file=sys.stderr)
    return Outcome({"ok": not problems, "model": args.model, "samples_run": ran, "problems": problems},
                   0 if not problems else 1)  # fmt: skip


_V2_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64", "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}  # fmt: skip
_NUMPY = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}  # fmt: skip


def _shapes_fit(mine: list[int], theirs: list[Any]) -> bool:
    if len(mine) != len(theirs):
        return False
    return all(a == -1 or b in (-1, a) for a, b in zip(mine, theirs, strict=True))
