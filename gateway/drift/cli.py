"""``tensorgate drift``: a window of the prediction log against a reference; exit 1 on drift.

Exit statuses are a contract with pipelines: 0 no drift, 1 drift, 2 anything else (a usage
error, an unreadable input, a crash). Only a finished comparison may exit 1, so a pipeline
never reads a typo or a bug as drift. numpy, scipy and the readers are imported by ``run``
alone: ``tensorgate --help`` and the admin commands do not pay for them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.registry.names import is_model_name

EXIT_DRIFT = 1
EXIT_ERROR = 2
ROLES = ("primary", "canary", "pinned", "shadow")

_EXAMPLES = """\
exit status: 0 no feature drifted, 1 some feature's PSI is over the threshold,
2 a usage or input error (never 1: a pipeline must not read an error as drift).
A window or reference under 100 rows is reported with a warning.

examples:
  tensorgate drift --model fraud --reference baseline.jsonl
  tensorgate drift --model fraud --version 2 --reference training.npy \\
      --since 2026-11-27 --until 2026-11-28T12:00:00Z --json drift.json --html drift.html
  tensorgate drift --model fraud --reference train.csv --features 0,3,7 --psi-threshold 0.1
"""


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``drift`` on the ``tensorgate`` parser."""
    drift = commands.add_parser(
        "drift",
        help="compare a window of the prediction log with a reference data set",
        description="Per feature (a column of the last axis of an input, like features[3]) and per output: "
        "PSI, Kolmogorov-Smirnov statistic and p-value, mean and standard deviation (docs/drift.md).",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default_dir = os.environ.get("TENSORGATE_LOG_DIR", ".tensorgate/predictions")
    drift.add_argument(
        "--log-dir", type=Path, default=Path(default_dir), metavar="DIR",
        help=f"the prediction log (env TENSORGATE_LOG_DIR, default {default_dir})",
    )  # fmt: skip
    drift.add_argument("--model", required=True, help="the model whose log is read, e.g. fraud")
    drift.add_argument("--version", help="one version, e.g. 2 (default: every version)")
    drift.add_argument(
        "--reference", type=Path, required=True, metavar="FILE",
        help="JSONL in the log's format (inputs, optionally outputs), CSV or .npy rows of features",
    )  # fmt: skip
    drift.add_argument("--since", metavar="TIME", help="start of the window, ISO 8601, inclusive (e.g. 2026-11-27)")
    drift.add_argument("--until", metavar="TIME", help="end of the window, ISO 8601, exclusive")
    drift.add_argument("--input", metavar="NAME", help="the input to compare (default: the first numeric input)")
    drift.add_argument("--features", metavar="I,J,...", help="column indexes to compare, e.g. 0,1,2 (default: all)")
    drift.add_argument(
        "--roles", default="primary,canary,pinned",
        help=f"record roles to read, comma-separated, of {', '.join(ROLES)} (default: %(default)s)",
    )  # fmt: skip
    drift.add_argument(
        "--psi-threshold", type=float, default=0.2, metavar="X", help="drift when a PSI is over this, > 0 (0.2)"
    )
    drift.add_argument(
        "--bins", type=int, default=10, metavar="N", help="PSI bins at the reference's quantiles, 2 to 1000 (10)"
    )
    drift.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON here")
    drift.add_argument(
        "--html", type=Path, metavar="FILE", help="write a self-contained page with a histogram per feature here"
    )


class UsageError(ValueError):
    """An option that cannot be used; the message names it."""


def utc_bound(text: str, option: str) -> str:
    """An ISO 8601 date or time (any offset; naive means UTC) as the log writes it, for comparing."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (ValueError, OverflowError):  # OverflowError: year 1 at a negative offset
        raise UsageError(f"{option}: not an ISO 8601 date or time: {text!r}") from None


def check_args(args: argparse.Namespace) -> None:
    """Validate every option before anything is read, normalising times and roles in place."""
    if not is_model_name(args.model):
        raise UsageError(f"--model: {args.model!r} is not a model name")
    if args.version is not None and not (args.version.isascii() and args.version.isdigit() and args.version[0] != "0"):
        raise UsageError(f"--version: expected a positive integer, got {args.version!r}")
    if not math.isfinite(args.psi_threshold) or args.psi_threshold <= 0:
        raise UsageError(f"--psi-threshold: must be a number > 0, got {args.psi_threshold}")
    if not 2 <= args.bins <= 1000:
        raise UsageError(f"--bins: must be 2 to 1000, got {args.bins}")
    roles = frozenset(r.strip() for r in args.roles.split(",") if r.strip())
    unknown = sorted(roles.difference(ROLES))
    if not roles or unknown:
        raise UsageError(f"--roles: expected some of {', '.join(ROLES)}, got {args.roles!r}")
    args.roles = roles
    if args.features is not None:
        parts = [p.strip() for p in args.features.split(",") if p.strip()]
        if not parts or not all(p.isascii() and p.isdigit() for p in parts):
            raise UsageError(f"--features: expected column indexes like 0,1,2, got {args.features!r}")
    args.since = utc_bound(args.since, "--since") if args.since else None
    args.until = utc_bound(args.until, "--until") if args.until else None
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise UsageError("--since must be before --until")
    if not args.reference.is_file():
        raise UsageError(f"--reference: {args.reference} is not a file")
    if not args.log_dir.is_dir():
        raise UsageError(f"--log-dir: {args.log_dir} is not a directory")
    for option in ("json", "html"):
        target: Path | None = getattr(args, option)
        if target is not None and (target.is_dir() or not target.absolute().parent.is_dir()):
            raise UsageError(f"--{option}: cannot write {target} (a directory, or its directory does not exist)")


def run(args: argparse.Namespace) -> int:
    """Run the command; the exit status (0, 1 on drift, 2 on any error)."""
    try:
        check_args(args)
    except UsageError as exc:
        print(f"tensorgate drift: {exc}", file=sys.stderr)
        return EXIT_ERROR
    import orjson

    from gateway.drift.build import build_report
    from gateway.drift.data import DriftDataError

    try:
        report = build_report(args)
    except DriftDataError as exc:
        print(f"tensorgate drift: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        print("tensorgate drift: out of memory: narrow the window (--since/--until) or --features", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug must still exit 2, never 1, and never as a traceback
        print(f"tensorgate drift: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(report.table())
    for warning in report.warnings:
        print(f"tensorgate drift: warning: {warning}", file=sys.stderr)
    try:
        if args.json is not None:
            args.json.write_bytes(
                orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
            )
        if args.html is not None:
            args.html.write_text(report.html(), "utf-8")
    except OSError as exc:
        print(f"tensorgate drift: cannot write the report: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_DRIFT if report.drifted else 0
