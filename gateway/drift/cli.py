"""``tensorgate drift``: a window of the prediction log against a reference; exit 1 on drift."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import orjson

from gateway.drift.data import Columns, DriftDataError, log_files, progress_printer, read_log, read_reference, utc_bound
from gateway.drift.report import DriftReport
from gateway.drift.stats import FeatureDrift, compare

EXIT_DRIFT = 1
EXIT_ERROR = 2
_SAMPLE = 20_000  # values per feature kept for the page's histograms


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``drift`` on the ``tensorgate`` parser."""
    drift = commands.add_parser(
        "drift",
        help="compare a window of the prediction log with a reference data set",
        description="Per feature (a column of the last axis of an input, like features[3]) and per output: "
        "PSI, Kolmogorov-Smirnov statistic and p-value, mean and standard deviation. Exit status 1 when any "
        "PSI is over the threshold, 0 when none is, 2 on errors.",
    )
    default_dir = os.environ.get("TENSORGATE_LOG_DIR", ".tensorgate/predictions")
    drift.add_argument(
        "--log-dir", type=Path, default=Path(default_dir), help=f"the prediction log (default {default_dir})"
    )
    drift.add_argument("--model", required=True)
    drift.add_argument("--version", help="one version (default: all)")
    drift.add_argument("--reference", type=Path, required=True, help="JSONL in the log's format, CSV or .npy")
    drift.add_argument("--since", help="start of the window, ISO 8601 (inclusive)")
    drift.add_argument("--until", help="end of the window, ISO 8601 (exclusive)")
    drift.add_argument("--input", help="the input to compare (default: the first numeric input)")
    drift.add_argument("--features", help="column indexes to compare, such as 0,1,2 (default: all)")
    drift.add_argument("--roles", default="primary,canary,pinned", help="record roles to read (default: %(default)s)")
    drift.add_argument("--psi-threshold", type=float, default=0.2)
    drift.add_argument("--bins", type=int, default=10, help="PSI bins, at the reference's quantiles")
    drift.add_argument("--json", type=Path, help="write the report as JSON here")
    drift.add_argument("--html", type=Path, help="write a self-contained page with a histogram per feature here")


def run(args: argparse.Namespace) -> int:
    """Run the command; the exit status."""
    try:
        report = build_report(args)
    except DriftDataError as exc:
        print(f"tensorgate drift: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(report.table())
    try:
        if args.json is not None:
            args.json.write_bytes(
                orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
            )
        if args.html is not None:
            args.html.write_text(report.html(), "utf-8")
    except OSError as exc:
        print(f"tensorgate drift: cannot write the report: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_DRIFT if report.drifted else 0


def build_report(args: argparse.Namespace) -> DriftReport:
    """Read both sides and compare every selected feature and every output."""
    since = utc_bound(args.since) if args.since else None
    until = utc_bound(args.until) if args.until else None
    roles = frozenset(r.strip() for r in args.roles.split(",") if r.strip())
    current = read_log(
        log_files(args.log_dir, args.model, args.version), since=since, until=until, roles=roles,
        progress=progress_printer(),
    )  # fmt: skip
    if current.records == 0:
        raise DriftDataError("no answered requests in the window")
    reference = read_reference(args.reference)
    report = DriftReport(
        args.model, args.version, since, until, str(args.reference), args.psi_threshold, current.records
    )
    name = _input_name(args.input, current, reference)
    ref_rows = reference.inputs.get(name, reference.inputs.get(""))
    if ref_rows is None:
        raise DriftDataError(f"the reference has no input {name!r}")
    cur_rows = current.inputs[name]
    if ref_rows.shape[1] != cur_rows.shape[1]:
        raise DriftDataError(
            f"the reference has {ref_rows.shape[1]} features, the log's {name!r} has {cur_rows.shape[1]}"
        )
    columns = _columns(args.features, cur_rows.shape[1])
    for column in columns:
        feature = f"{name}[{column}]"
        report.inputs.append(_compare(report, feature, ref_rows[:, column], cur_rows[:, column], args))
    for output, cur_out in current.outputs.items():
        ref_out = reference.outputs.get(output)
        if ref_out is None or ref_out.shape[1] != cur_out.shape[1]:
            continue
        for column in range(cur_out.shape[1]):
            feature = f"{output}[{column}]"
            report.outputs.append(_compare(report, feature, ref_out[:, column], cur_out[:, column], args))
    if current.outputs and not report.outputs:
        report.notes.append("outputs not compared: the reference carries no outputs (use a JSONL reference for that)")
    return report


def _compare(
    report: DriftReport, feature: str, ref: np.ndarray, cur: np.ndarray, args: argparse.Namespace
) -> FeatureDrift:
    report.samples[feature] = (_sample(ref), _sample(cur))
    return compare(feature, ref, cur, bins=args.bins, threshold=args.psi_threshold)


def _sample(values: np.ndarray) -> np.ndarray:
    if values.size <= _SAMPLE:
        return values
    return np.random.default_rng(0).choice(values, _SAMPLE, replace=False)


def _input_name(wanted: str | None, current: Columns, reference: Columns) -> str:
    if wanted is not None:
        if wanted not in current.inputs:
            raise DriftDataError(
                f"the log has no numeric input {wanted!r} (it has: {', '.join(current.inputs) or 'none'})"
            )
        return wanted
    for name in current.inputs:
        if name in reference.inputs or "" in reference.inputs:
            return name
    raise DriftDataError("no numeric input is both in the log and in the reference")


def _columns(text: str | None, width: int) -> list[int]:
    if not text:
        return list(range(width))
    try:
        columns = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DriftDataError(f"--features must be column indexes like 0,1,2, got {text!r}") from None
    bad = [c for c in columns if not 0 <= c < width]
    if bad:
        raise DriftDataError(f"--features {bad} out of range: the input has {width} features")
    return columns
