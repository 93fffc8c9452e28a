"""Statistics for atlas results: family means, stratified bootstrap CIs (scipy), rank correlation.

The atlas's "mean over families" gives every family the same weight whatever its size, so bootstrap
resamples examples *within* each family (a stratified bootstrap: scipy's multi-sample ``bootstrap`` with one
index sample per family). The statistic is recomputed exactly as the point estimate is, so a CI of the
gap between the hub and the runner-up answers "is the hub separated, or is it a tie?".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

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


def stratified_bootstrap(values: np.ndarray, groups: Sequence[str], statistic: Callable[[np.ndarray], np.ndarray],
                         *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                         seed: int = 0) -> Interval:
    """CI of ``statistic(mean_over_families(values))`` with examples resampled within each family.

    ``statistic`` maps an array [..., K] of family-mean vectors to [...] scalars (vectorised over leading
    axes). BCa intervals, falling back to percentile when BCa is undefined (e.g. a degenerate, constant
    bootstrap distribution, as in an exact tie).
    """
    values = np.asarray(values, dtype=float)
    index = group_indices(groups)
    estimate = float(statistic(mean_over_families(values, groups)))
    blocks = [values[idx] for idx in index.values()]

    def stat(*samples, axis=-1):
        means = [block[np.asarray(s, dtype=int)].mean(-values.ndim) for block, s in zip(blocks, samples)]
        return statistic(np.mean(means, axis=0))

    data = tuple(np.arange(len(idx)) for idx in index.values())
    if all(len(d) < 2 for d in data):  # nothing to resample
        return Interval(estimate, estimate, estimate, confidence)
    return _bca_or_percentile(data, stat, estimate, confidence=confidence, n_resamples=n_resamples, seed=seed,
                              vectorized=True, paired=False)


def gap_ci(values: np.ndarray, groups: Sequence[str], a: int, b: int, **kwargs) -> Interval:
    """CI of (family-mean effect of unit ``a``) - (of unit ``b``); ``values`` is [n_examples, n_units]."""
    return stratified_bootstrap(values, groups, lambda m: m[..., a] - m[..., b], **kwargs)


def mean_ci(values: np.ndarray, groups: Sequence[str], unit: int, **kwargs) -> Interval:
    """CI of the family-mean effect of one unit."""
    return stratified_bootstrap(values, groups, lambda m: m[..., unit], **kwargs)


def bootstrap_ci(sample: Sequence[float], statistic: Callable = np.mean, *, confidence: float = 0.95,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Plain (one-sample) bootstrap CI of ``statistic`` (BCa, percentile fallback)."""
    sample = np.asarray(sample, dtype=float)
    estimate = float(statistic(sample))
    if sample.size < 2 or np.all(sample == sample[0]):
        return Interval(estimate, estimate, estimate, confidence)
    return _bca_or_percentile((sample,), statistic, estimate, confidence=confidence, n_resamples=n_resamples,
                              seed=seed)


def _bca_or_percentile(data: tuple, statistic: Callable, estimate: float, *, confidence: float, n_resamples: int,
                       seed: int, **options) -> Interval:
    """``scipy.stats.bootstrap`` CI around ``estimate``: BCa, percentile where BCa is undefined, and the estimate
    itself where neither is (a constant bootstrap distribution: every resample gives the estimate)."""
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate distributions are handled here
            result = _st.bootstrap(data, statistic, n_resamples=n_resamples, confidence_level=confidence,
                                   method=method, rng=np.random.default_rng(seed), **options)
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return Interval(estimate, low, high, confidence)
    return Interval(estimate, estimate, estimate, confidence)


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
