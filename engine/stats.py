"""Descriptive statistics for atlas results: family means, intervals, rank correlation, top two.

The one bootstrap (stratified by family, on scipy.stats.bootstrap) and every decision live in
:mod:`engine.decisions`; the hand-written bootstraps that were here are gone (catalogue v2).
"""

from __future__ import annotations


from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
from scipy import stats as _st

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its (two-sided) confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95

    def includes(self, value: float = 0.0) -> bool:
        return self.low <= value <= self.high

    def to_json(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence}


def group_indices(groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Row indices per group, groups in order of first appearance."""
    out: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        out.setdefault(g, []).append(i)
    return {g: np.asarray(v, dtype=int) for g, v in out.items()}


def family_means(values: np.ndarray, groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Mean over each group's rows of ``values`` ([n, ...])."""
    return {g: values[idx].mean(0) for g, idx in group_indices(groups).items()}


def mean_over_families(values: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Unweighted mean of the family means (every family counts once)."""
    return np.mean(list(family_means(values, groups).values()), axis=0)


def spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Spearman rank correlation and its p-value (``scipy.stats.spearmanr``): the engine's one Spearman.

    Constant input (either side) has no rank order, so the correlation is undefined: ``(nan, nan)``, and scipy's
    ``ConstantInputWarning`` is not raised. A NaN in either input propagates (``(nan, nan)`` too). Callers that
    record a figure use :func:`rank_rho`, which says what an undefined correlation is recorded as.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"spearman: shapes differ {a.shape} vs {b.shape}")
    if np.all(a == a.flat[0]) or np.all(b == b.flat[0]):
        return float("nan"), float("nan")
    result = _st.spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


def rank_rho(a: Sequence[float], b: Sequence[float], *, undefined: float | None = None) -> float | None:
    """The Spearman rho of :func:`spearman` as a recordable figure (JSON has no NaN): ``undefined`` where rho is
    undefined (constant or NaN input). The atlas studies record None there; LOCKIN records 0.0 ("no agreement"),
    as its committed runs always have."""
    rho, _ = spearman(a, b)
    return rho if np.isfinite(rho) else undefined


def top_two(values: np.ndarray) -> tuple[int, int]:
    """Indices of the largest and second-largest entries (ties broken by lower index, like argmax)."""
    order = np.argsort(-np.asarray(values, dtype=float), kind="stable")
    return int(order[0]), int(order[1]) if len(order) > 1 else int(order[0])
