"""Per-feature drift statistics: PSI, Kolmogorov-Smirnov, mean and standard-deviation shift."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Proportions are floored at this before the logarithm: an empty bin must not make PSI infinite.
EPSILON = 1e-4


def bin_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (equal-mass bins), duplicates removed."""
    finite = reference[np.isfinite(reference)]
    if finite.size == 0:
        return np.empty(0)
    edges: np.ndarray = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    return edges


def proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of ``values`` in each bin (``len(edges) + 1`` bins; values on an edge go right)."""
    finite = values[np.isfinite(values)]
    counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
    shares: np.ndarray = counts / max(1, finite.size)
    return shares


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``.

    Equal-mass bins from the reference's quantiles; a feature with at most ``bins`` distinct
    values in the reference (a flag, a category, a constant) gets one bin per value plus one
    for anything else. 0.1-0.2 is usually read as a moderate shift, over 0.2 as a significant one.
    """
    ref_values = reference[np.isfinite(reference)]
    cur_values = current[np.isfinite(current)]
    if ref_values.size == 0 or cur_values.size == 0:
        return 0.0
    distinct = np.unique(ref_values)
    if distinct.size <= bins:
        ref = _category_shares(ref_values, distinct)
        cur = _category_shares(cur_values, distinct)
    else:
        edges = bin_edges(ref_values, bins)
        ref, cur = proportions(ref_values, edges), proportions(cur_values, edges)
    ref, cur = np.maximum(ref, EPSILON), np.maximum(cur, EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _category_shares(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """The share of each category, then of everything else."""
    index = np.searchsorted(categories, values)
    known = (index < categories.size) & (categories[np.minimum(index, categories.size - 1)] == values)
    counts = np.bincount(np.where(known, index, categories.size), minlength=categories.size + 1)
    shares: np.ndarray = counts / values.size
    return shares


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One feature's comparison."""

    feature: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    reference_mean: float
    current_mean: float
    reference_std: float
    current_std: float
    reference_count: int
    current_count: int
    drifted: bool

    @property
    def mean_shift(self) -> float:
        """Current mean minus reference mean, in reference standard deviations (0 when constant)."""
        if self.reference_std == 0:
            return 0.0
        return (self.current_mean - self.reference_mean) / self.reference_std

    def to_json(self) -> dict[str, Any]:
        """The fields, plus the mean shift."""
        return {**asdict(self), "mean_shift_std": self.mean_shift}


def compare(feature: str, reference: np.ndarray, current: np.ndarray, *, bins: int, threshold: float) -> FeatureDrift:
    """Every statistic for one feature; ``drifted`` when PSI is over ``threshold``."""
    ref = reference[np.isfinite(reference)].astype(np.float64)
    cur = current[np.isfinite(current)].astype(np.float64)
    if ref.size and cur.size:
        # Imported here: scipy.stats costs about half a second, and online drift needs only PSI.
        from scipy.stats import ks_2samp

        ks = ks_2samp(ref, cur)
        statistic, pvalue = float(ks.statistic), float(ks.pvalue)
    else:
        statistic, pvalue = 0.0, 1.0
    value = psi(ref, cur, bins)
    return FeatureDrift(
        feature=feature,
        psi=value,
        ks_statistic=statistic,
        ks_pvalue=pvalue,
        reference_mean=float(ref.mean()) if ref.size else float("nan"),
        current_mean=float(cur.mean()) if cur.size else float("nan"),
        reference_std=float(ref.std()) if ref.size else float("nan"),
        current_std=float(cur.std()) if cur.size else float("nan"),
        reference_count=int(ref.size),
        current_count=int(cur.size),
        drifted=value > threshold,
    )
