"""Building a drift report: read both sides and compare every selected feature and output."""

from __future__ import annotations

import argparse

import numpy as np

from gateway.drift.data import Columns, DriftDataError, log_files, progress_printer, read_log, read_reference
from gateway.drift.report import DriftReport
from gateway.drift.stats import FeatureDrift, compare

_SAMPLE = 20_000  # values per feature kept for the page's histograms
#: Under this many rows on either side, PSI and KS are noise: the report says so.
MIN_ROWS = 100


def build_report(args: argparse.Namespace) -> DriftReport:
    """Read both sides and compare every selected feature and every output.

    ``args`` is the checked namespace of ``tensorgate drift`` (gateway/drift/cli.py): ``since``
    and ``until`` already normalised to the log's timestamps, ``roles`` a set.
    """
    current = read_log(
        log_files(args.log_dir, args.model, args.version), since=args.since, until=args.until, roles=args.roles,
        progress=progress_printer(),
    )  # fmt: skip
    if current.records == 0:
        raise DriftDataError("no answered requests in the window")
    reference = read_reference(args.reference)
    report = DriftReport(
        args.model, args.version, args.since, args.until, str(args.reference), args.psi_threshold, current.records
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
    for side, rows in (("the reference", ref_rows), ("the window", cur_rows)):
        if rows.shape[0] < MIN_ROWS:
            report.warnings.append(
                f"{side} has only {rows.shape[0]} rows of {name!r} (under {MIN_ROWS}): "
                "PSI and KS figures this small mean little"
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
