"""The drift report: a table for the terminal, JSON for pipelines, a page for people."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.drift.stats import FeatureDrift

_HIST_BINS = 24


@dataclass
class DriftReport:
    """Everything one ``tensorgate drift`` run found."""

    model: str
    version: str | None
    since: str | None
    until: str | None
    reference: str
    threshold: float
    current_records: int
    inputs: list[FeatureDrift] = field(default_factory=list)
    outputs: list[FeatureDrift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Reasons to distrust the figures (too few rows); shown first in every form of the report.
    warnings: list[str] = field(default_factory=list)
    #: feature -> (reference values, current values), for the page's histograms.
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def drifted(self) -> list[str]:
        """The features (inputs and outputs) over the threshold."""
        return [f.feature for f in [*self.inputs, *self.outputs] if f.drifted]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON: window, verdict, and every statistic of every feature."""
        return {
            "model": self.model,
            "version": self.version,
            "since": self.since,
            "until": self.until,
            "reference": self.reference,
            "psi_threshold": self.threshold,
            "current_records": self.current_records,
            "drifted": self.drifted,
            "inputs": [f.to_json() for f in self.inputs],
            "outputs": [f.to_json() for f in self.outputs],
            "notes": self.notes,
            "warnings": self.warnings,
        }

    def table(self) -> str:
        """A fixed-width table, one line per feature, drifted ones marked."""
        header = (
            f"{'feature':<28} {'PSI':>8} {'KS':>7} {'p-value':>9} "
            f"{'mean ref':>10} {'mean now':>10} {'std ref':>9} {'std now':>9}"
        )
        lines = [
            f"model {self.model}" + (f" version {self.version}" if self.version else "") +
            f": {self.current_records:,} requests in the window, reference {self.reference}",
            header,
            "-" * len(header),
        ]  # fmt: skip
        for group in (self.inputs, self.outputs):
            for f in group:
                mark = "  DRIFT" if f.drifted else ""
                lines.append(
                    f"{f.feature:<28.28} {f.psi:>8.4f} {f.ks_statistic:>7.4f} {f.ks_pvalue:>9.2e} "
                    f"{f.reference_mean:>10.4g} {f.current_mean:>10.4g} "
                    f"{f.reference_std:>9.4g} {f.current_std:>9.4g}{mark}"
                )
        lines += self.notes
        lines += [f"WARNING: {w}" for w in self.warnings]
        verdict = (
            f"{len(self.drifted)} feature(s) over PSI {self.threshold}: {', '.join(self.drifted)}"
            if self.drifted
            else f"no feature over PSI {self.threshold}"
        )
        return "\n".join([*lines, verdict])

    def html(self) -> str:
        """A self-contained page: the verdict, the table, and a histogram per feature."""
        rows = []
        for f in [*self.inputs, *self.outputs]:
            style = ' class="drift"' if f.drifted else ""
            rows.append(
                f"<tr{style}><td>{html.escape(f.feature)}</td><td>{f.psi:.4f}</td><td>{f.ks_statistic:.4f}</td>"
                f"<td>{f.ks_pvalue:.2e}</td><td>{f.reference_mean:.4g}</td><td>{f.current_mean:.4g}</td>"
                f"<td>{f.reference_std:.4g}</td><td>{f.current_std:.4g}</td></tr>"
            )
        charts = [
            f"<figure><figcaption>{html.escape(name)}"
            f"{' <b>drift</b>' if name in self.drifted else ''}</figcaption>{_histogram(ref, cur)}</figure>"
            for name, (ref, cur) in self.samples.items()
        ]
        verdict = (
            f"{len(self.drifted)} feature(s) over PSI {self.threshold}: {html.escape(', '.join(self.drifted))}"
            if self.drifted
            else f"No feature over PSI {self.threshold}."
        )
        title = f"Drift: {self.model}" + (f" version {self.version}" if self.version else "")
        window = f"{self.since or 'start of the log'} to {self.until or 'end of the log'}"
        notes = "".join(f'<p class="warning"><strong>Warning:</strong> {html.escape(w)}</p>' for w in self.warnings)
        notes += "".join(f"<p>{html.escape(n)}</p>" for n in self.notes)
        return _PAGE.format(
            title=html.escape(title), verdict=verdict, window=html.escape(window),
            records=f"{self.current_records:,}", reference=html.escape(self.reference),
            rows="\n".join(rows), charts="\n".join(charts), notes=notes,
            verdict_class="bad" if self.drifted else "good",
        )  # fmt: skip


def _histogram(reference: np.ndarray, current: np.ndarray, width: int = 360, height: int = 140) -> str:
    """An inline SVG: reference (grey) and current (orange) densities over the same bins."""
    both = np.concatenate([reference, current])
    both = both[np.isfinite(both)]
    if both.size == 0:
        return "<svg></svg>"
    low, high = np.quantile(both, [0.005, 0.995])
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, _HIST_BINS + 1)
    ref_counts, _ = np.histogram(np.clip(reference, low, high), edges)
    cur_counts, _ = np.histogram(np.clip(current, low, high), edges)
    ref_share = ref_counts / max(1, ref_counts.sum())
    cur_share = cur_counts / max(1, cur_counts.sum())
    top = max(float(ref_share.max()), float(cur_share.max()), 1e-9)
    bar = width / _HIST_BINS
    shapes = []
    for i in range(_HIST_BINS):
        for share, color, offset in ((ref_share[i], "#9aa5b1", 0.0), (cur_share[i], "#e8833a", bar / 2)):
            h = (height - 20) * share / top
            shapes.append(
                f'<rect x="{i * bar + offset:.1f}" y="{height - 20 - h:.1f}" width="{bar / 2 - 1:.1f}" '
                f'height="{h:.1f}" fill="{color}"/>'
            )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        + "".join(shapes)
        + f'<text x="0" y="{height - 4}" font-size="11">{low:.3g}</text>'
        + f'<text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">{high:.3g}</text></svg>'
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #1f2933; }}
.good {{ color: #2f855a; }} .bad {{ color: #c53030; }}
.warning {{ background: #fffbea; border-left: 4px solid #d69e2e; padding: 4px 8px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border-bottom: 1px solid #e4e7eb; padding: 4px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.drift td {{ background: #fff5f5; font-weight: 600; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; padding: 0.5em; border: 1px solid #e4e7eb; border-radius: 6px; }}
figcaption {{ font-size: 0.9em; margin-bottom: 4px; }}
.legend span {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }}
</style></head><body>
<h1>{title}</h1>
<p class="{verdict_class}"><strong>{verdict}</strong></p>
<p>Window: {window}; {records} requests; reference: {reference}.</p>
{notes}
<table><thead><tr><th>feature</th><th>PSI</th><th>KS</th><th>p-value</th><th>mean (reference)</th>
<th>mean (now)</th><th>std (reference)</th><th>std (now)</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<p class="legend">Share of values per bin:<span style="background:#9aa5b1"></span>reference
<span style="background:#e8833a"></span>now</p>
<div class="charts">
{charts}
</div>
</body></html>
"""
