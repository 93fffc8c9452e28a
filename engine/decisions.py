"""The catalogue's decision primitives (v3: decide at the n you have), on tests valid at every sample size.

Every rule of the catalogue is built from these primitives, each returning an :class:`Evidence`:

* :func:`greater` - "A > B" on per-example (paired) differences, stratified by family. The 95% CI of the mean over
  family means comes from :func:`interval`. Precedence (catalogue v3): **against** first, when the CI's upper bound
  is below ``delta`` (the claim's smallest effect of interest; a real but negligible effect does not confirm a claim
  of a meaningful one); else **for** when the lower bound is above 0; else **undecided**. ``delta = 0`` is a
  threshold claim ("x > T" on x - T): for when the whole CI is above, against when the whole CI is below.
* :func:`argmax` - "the argmax is unit L": multiple comparisons with the best (Hsu). For: L beats every other unit in
  its paired one-sided test (intersection-union: every comparison at the full one-sided level, no multiplicity
  penalty). With L chosen from the same data ("an argmax exists") each comparison runs at half that level: the
  events "unit i beats every other unit" are disjoint, so with two exchangeable top units the false "exists" rate
  is at most the one-sided level. Against: L's lead over some unit is decided below ``delta`` (Holm across the
  other units), or an exact tie of the top two in a measurement that can see the units. An exact tie where the
  measurement's erasure guard fired (``erasing``: the ablated output does not depend on the prompt) is a failed
  precondition: undecided "the method cannot separate layers on this architecture", never evidence.
* :func:`beats_draws` - "our training runs beat the random-matched draws" (LoRA claims): the unit is the run; an
  exact rank-sum permutation p-value over seeds (its floor 1 / (D + 1) ** S sizes the plans), against over runs.
* :func:`differs` - "some pair differs" (OWN-ATLAS): two-sided per member, Holm; against when every member is
  equivalent to 0 within ``delta``.
* :func:`for_every` - "at every layer / on every family / for every configuration": one-sided p-values of every
  member, Holm's step-down across the members for each side; against (some member decided below ``delta``) first.

:func:`interval` - one estimator, valid at every n:

* all families with >= 2 examples: the stratified t-interval (stratified variance, Welch-Satterthwaite df);
* some family with 1 example (the seed's and the CLI's smallest samples): the exact sign-flip test of the family
  means (all 2^H sign patterns up to 16 families, Monte Carlo beyond), inverted into a CI; it needs no
  within-family variance, so a large effect in every family is still decided;
* bounded per-example values (``bounds``: top-5 overlaps in [0, 1]) that did not vary: the betting interval (a
  test martingale per side: the mean over a fixed grid of constant bets of prod_i (1 + lambda w_i (x_i - m)),
  p = 1 / that, Markov's inequality; Waudby-Smith & Ramdas, JRSS-B 2024), valid at any n for independent values
  in [lo, hi] and never of zero width; unlike Hoeffding's it uses how far the values sit from the bounds, so 30
  equal overlaps decide what Hoeffding's needs ~190 for. Bounded values that vary take the t / sign-flip path.

A zero-width CI from a measurement that could not vary (every value equal, or no within-family variance) is a
failed precondition (``degenerate``), never decisive. There is no minimum-n gate: each rule's calibration
(``engine/data/calibration.json``, written by :mod:`engine.calibration`) measures the smallest n per family at which
it holds its error bounds, and the Recorder reads that table (:func:`calibrated_min_n`).

An undecided :class:`Evidence` says what could not be decided and the n per family at which a power projection
(80% power, from the observed effect and its standard error) expects it to be decided, naming those inputs. Every
:class:`Evidence` keeps the per-example data and the parameters it was decided with, so :func:`recompute` reproduces
it offline.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from functools import lru_cache
from pathlib import Path
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as sps

LEVEL = 0.95  # two-sided CI level of "A > B" and "for every"; one-sided tests at (1 - LEVEL) / 2
_LOOKS: ContextVar[int] = ContextVar("mi_atlas_looks", default=1)  # sequential looks the error is spent over
N_RESAMPLES = 2000  # Monte Carlo sign patterns where the exact enumeration is too large (> 2^16)
EXACT_SIGN_FLIPS = 16  # up to this many families every sign pattern is enumerated
MIN_PER_STRATUM = 2  # the t-interval needs a within-family variance; below it the sign-flip test of family means
POWER = 0.8  # the power a projection of n aims at
TIE_RTOL = 1e-6  # top-two means equal to this relative precision are an exact tie
Z = 1.959963984540054  # two-sided 95% normal quantile
CALIBRATION_TABLE = Path(__file__).resolve().parent / "data" / "calibration.json"
DEGENERATE = ("degenerate measurement: no variation {where} (a zero-width CI from a measurement that could not vary is "
              "not evidence)")
CANNOT_SEPARATE = ("the method cannot separate layers on this architecture: an exact tie of {k} units at {value:.4g} "
                   "where the erasure guard fired (the ablated output does not depend on the prompt)")


class Outcome(str, Enum):
    FOR = "for"
    AGAINST = "against"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Evidence:
    """What one primitive decided, with the figures, the parameters and the data it used."""

    primitive: str
    label: str
    outcome: Outcome
    statement: str  # one line: the figures that decided (or could not)
    estimate: Any = None
    ci: tuple[float, float] | None = None  # None: no CI could be formed
    n: int = 0
    n_strata: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    undecided: str = ""  # what could not be decided (empty when decided)
    n_to_decide: int | None = None  # examples per family a power projection expects to decide (undecided only)
    details: Mapping[str, Any] = field(default_factory=dict)  # e.g. per-comparison p-values, Holm steps
    data: Mapping[str, Any] = field(default_factory=dict)  # per-example values and groups (for recompute)

    @property
    def decided(self) -> bool:
        return self.outcome is not Outcome.UNDECIDED

    @property
    def per_family(self) -> int:
        """The smallest number of examples in a family (the n a calibration table is read at)."""
        groups = self.data.get("groups")
        if self.primitive == "beats_draws":  # the unit is the training run: training seeds
            return min((len(m["ours"]) for m in self.data.get("members", {}).values()), default=0)
        if groups is None and "members" in self.data:
            counts = [_smallest_stratum(m["groups"]) for m in self.data["members"].values()]
            return min(counts) if counts else 0
        return _smallest_stratum(groups or [])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["outcome"] = self.outcome.value
        out["ci"] = list(self.ci) if self.ci is not None else None
        return _plain(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Evidence":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["outcome"] = Outcome(known["outcome"])
        if known.get("ci") is not None:
            known["ci"] = tuple(known["ci"])
        return cls(**known)


# ------------------------------------------------------------------------------------------------ the interval


def _strata(values: np.ndarray, groups: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """Per-family samples (rows of ``values``) in first-seen order of the families."""
    groups = np.asarray([str(g) for g in groups])
    if len(groups) != len(values):
        raise ValueError(f"{len(values)} values but {len(groups)} group labels")
    names = list(dict.fromkeys(groups.tolist()))
    return names, [values[groups == name] for name in names]


def _smallest_stratum(groups: Sequence[str]) -> int:
    counts: dict[str, int] = {}
    for g in groups:
        counts[str(g)] = counts.get(str(g), 0) + 1
    return min(counts.values()) if counts else 0


@lru_cache(maxsize=64)
def _sign_patterns(h: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_patterns, h] of +-1: every pattern for h <= EXACT_SIGN_FLIPS (the identity first), else the identity and
    ``n_resamples`` random ones."""
    if h <= EXACT_SIGN_FLIPS:
        return np.asarray(list(itertools.product((1.0, -1.0), repeat=h)))
    rng = np.random.default_rng(seed)
    return np.vstack([np.ones((1, h)), rng.choice((1.0, -1.0), size=(n_resamples, h))])


def _flip_sums(patterns: np.ndarray, means: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    key = (patterns.shape, float(patterns[1:].sum()) if len(patterns) > 1 else 0.0, means)
    hit = _FLIPS.get(key)
    if hit is None:
        y = np.asarray(means)
        hit = (patterns @ y / len(y), patterns.mean(axis=1))
        if len(_FLIPS) > 256:
            _FLIPS.clear()
        _FLIPS[key] = hit
    return hit


_FLIPS: dict = {}


@dataclass(frozen=True)
class Interval:
    """The mean over family means of per-example values, its CI and one-sided p-values, by one of three methods
    (``stratified-t``, ``sign-flip``, ``betting``); ``low``/``high`` None: no CI (``why``)."""

    estimate: float
    low: float | None
    high: float | None
    standard_error: float | None
    method: str
    n: int
    n_strata: int
    df: float | None = None
    degenerate: str = ""  # non-empty: the measurement could not vary (the CI is not evidence)
    why: str = ""  # why there is no CI
    family_means: tuple[float, ...] = ()
    betting: tuple | None = None  # betting: (values, weights, lo, hi), the data its test martingales bet on
    patterns: Any = None
    level: float = LEVEL

    @property
    def per_family(self) -> float:
        return self.n / max(self.n_strata, 1)

    def p_above(self, m: float = 0.0) -> float:
        """One-sided p-value of H0 "mean <= m" (small: the mean is above m)."""
        return self._p(m, +1)

    def p_below(self, m: float) -> float:
        """One-sided p-value of H0 "mean >= m" (small: the mean is below m)."""
        return self._p(m, -1)

    def _p(self, m: float, side: int) -> float:
        if self.low is None or self.degenerate:
            return 1.0
        gap = side * (self.estimate - m)
        if self.method == "stratified-t":
            return float(sps.t.sf(gap / self.standard_error, self.df))
        if self.method == "betting":
            return _betting_p(*self.betting, m, side)
        y = np.asarray(self.family_means)  # sign-flip: mean(e (y - m)) = mean(e y) - m mean(e)
        flipped, signs = _flip_sums(self.patterns, self.family_means)
        stats_ = flipped - m * signs
        observed = float(np.mean(y)) - m
        hits = np.sum(side * stats_ >= side * observed - 1e-12 * max(1.0, abs(observed)))
        return float(hits / len(stats_))


def interval(values: Sequence[float] | np.ndarray, groups: Sequence[str], *, level: float = LEVEL,
             bounds: tuple[float, float] | None = None, n_resamples: int = N_RESAMPLES, seed: int = 0,
             discrete: bool = False) -> Interval:
    """The mean over family means of ``values`` (each family weighs the same) with a CI valid at every n.

    ``bounds`` (lo, hi): every value lies in [lo, hi] (top-k overlaps): the betting interval where they did not vary
    (:func:`_betting_p`). Else all families
    with >= 2 examples: the stratified t-interval (Var = sum_h s_h^2 / n_h / H^2, Welch-Satterthwaite df); some
    family with one example, or no variation within any family: the exact sign-flip test of the family means,
    inverted into a CI. Every value the same is a degenerate measurement, except for a ``discrete`` one (argmax
    depths: they could vary) whose common value is not 0.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise ValueError(f"interval: non-finite measurement at index {bad} ({arr[bad]}); a decision needs finite "
                         "per-example values")
    names, samples = _strata(arr, groups)
    if not samples:
        return Interval(float("nan"), None, None, None, "none", 0, 0, why="no examples")
    h = len(samples)
    means = np.asarray([s.mean() for s in samples])
    estimate = float(means.mean())
    common = dict(estimate=estimate, n=len(arr), n_strata=h, family_means=tuple(float(x) for x in means),
                  level=level)
    alpha2 = 1.0 - level
    if bounds is not None:
        lo_b, hi_b = float(bounds[0]), float(bounds[1])
        if not hi_b > lo_b:
            raise ValueError(f"interval: bounds must be (lo, hi) with hi > lo, got {bounds}")
        if arr.min() < lo_b - 1e-9 or arr.max() > hi_b + 1e-9:
            raise ValueError(f"interval: values outside the stated bounds {bounds} ([{arr.min():.4g}, "
                             f"{arr.max():.4g}])")
    if bounds is not None and np.ptp(arr) == 0:
        # bounded values that did not vary (every top-5 overlap 0): the t / sign-flip interval would have zero
        # width; the betting interval needs no variance estimate and is valid at any n. Values that vary take the
        # t / sign-flip path. Weights w_i = N / (H n_h): the family-weighted mean is mean(w_i x_i).
        weights = np.concatenate([np.full(len(s), len(arr) / (h * len(s))) for s in samples])
        data = (tuple(np.concatenate(samples).tolist()), tuple(weights.tolist()), lo_b, hi_b)
        low = _betting_bound(data, alpha2 / 2, estimate, lo_b, side=+1)
        high = _betting_bound(data, alpha2 / 2, estimate, hi_b, side=-1)
        # standard_error (power projections only, never a decision): Hoeffding's sub-Gaussian scale
        scale = (hi_b - lo_b) * math.sqrt(sum(1.0 / (h * h * len(s)) for s in samples))
        return Interval(low=low, high=high, standard_error=scale / 2.0, method="betting", betting=data, **common)
    if len(arr) >= 2 and np.ptp(arr) == 0 and (not discrete or arr[0] == 0):
        # every value the same: a measurement that could not vary (a checkpoint equal to the base model, a hook that
        # changed nothing); a discrete measurement (argmax depths) that could vary and gave one non-zero value in
        # every prompt is left to the sign-flip test below
        return Interval(low=estimate, high=estimate, standard_error=0.0, method="none",
                        degenerate=DEGENERATE.format(where="at all (every value is the same)"), **common)
    if min(len(s) for s in samples) >= MIN_PER_STRATUM:
        w = np.asarray([s.var(ddof=1) / (h * h * len(s)) for s in samples])
        var = float(w.sum())
        if var > 0:
            df = float(var ** 2 / np.sum(w ** 2 / np.asarray([len(s) - 1 for s in samples])))
            se = math.sqrt(var)
            q = float(sps.t.ppf(1 - alpha2 / 2, df))
            return Interval(low=estimate - q * se, high=estimate + q * se, standard_error=se, method="stratified-t",
                            df=df, **common)
        # no variation within any family: the t-interval has no variance to use; the sign-flip test of the family
        # means needs none
    # some family has one example: the sign-flip test of the H family means
    se = float(np.std(means, ddof=1) / math.sqrt(h)) if h > 1 else None
    patterns = _sign_patterns(h, n_resamples, seed)
    if h < 2 or 1.0 / len(patterns) > alpha2 / 2:
        return Interval(low=None, high=None, standard_error=se, method="sign-flip", patterns=patterns,
                        why=f"{h} famil{'y' if h == 1 else 'ies'} with one example: a sign-flip test cannot reach "
                            f"p <= {alpha2 / 2:g} with 2^{h} sign patterns", **common)
    iv = Interval(low=None, high=None, standard_error=se, method="sign-flip", patterns=patterns, **common)
    span = float(np.ptp(means)) + abs(estimate) + 1e-9
    low = _invert(iv, alpha2 / 2, estimate, estimate - 4 * span, side=+1)
    high = _invert(iv, alpha2 / 2, estimate, estimate + 4 * span, side=-1)
    return replace(iv, low=low, high=high)


BETTING_GRID = 100  # constant bets lambda_g = g / G of the largest safe bet, g = 1..G (fixed before the data)


def _betting_p(values: np.ndarray, weights: np.ndarray, lo: float, hi: float, m: float, side: int) -> float:
    """One-sided p-value of H0 "weighted mean <= m" (side +1) or ">= m" (side -1) for independent values in [lo, hi].

    K = mean over the grid of prod_i (1 + lambda_g w_i side (x_i - m)), each bet lambda_g at most the largest that keeps
    every factor >= 0 whatever x_i in [lo, hi] is. Under H0, E K <= 1 (independence, then the AM-GM inequality over
    the factors' means, which average to 1 + lambda_g side (m' - m) with m' the weighted mean, sum w_i = N), so
    p = min(1, 1 / K) is valid by Markov's inequality at every n; the grid is fixed before the data, so no bet is
    chosen from them."""
    room = (m - lo) if side > 0 else (hi - m)  # how far a value can go against the bet
    if room <= 0:
        return 1.0
    values, weights = np.asarray(values), np.asarray(weights)
    top = 1.0 / (float(np.max(weights)) * room)
    lambdas = top * np.arange(1, BETTING_GRID + 1) / BETTING_GRID
    factors = 1.0 + np.outer(lambdas, weights * side * (values - m))
    with np.errstate(divide="ignore"):
        logs = np.log(np.clip(factors, 0.0, None)).sum(axis=1)
    log_k = float(np.logaddexp.reduce(logs) - math.log(BETTING_GRID))
    return float(min(1.0, math.exp(-log_k))) if log_k > -700 else 1.0


def _betting_bound(data: tuple, alpha: float, inside: float, edge: float, side: int) -> float:
    """The betting CI's bound between ``inside`` (the estimate: never rejected) and ``edge`` (the range's end):
    bisection on m of :func:`_betting_p` at ``alpha`` (side +1: the lower bound, -1: the upper)."""
    near = edge + side * 1e-9 * (data[3] - data[2])  # just inside the range (at its end no bet is safe)
    if _betting_p(*data, near, side) > alpha:
        return float(edge)
    a, b = inside, near  # p(a) > alpha (not rejected), p(b) <= alpha (rejected)
    for _ in range(60):
        mid = 0.5 * (a + b)
        if _betting_p(*data, mid, side) > alpha:
            a = mid
        else:
            b = mid
    return float(a)


def _invert(iv: Interval, alpha: float, inside: float, outside: float, side: int) -> float:
    """The CI bound between ``inside`` (not rejected) and ``outside`` (rejected): bisection on the shift m of the
    sign-flip test (side +1: the lower bound, H0 "mean <= m"; -1: the upper bound)."""
    probe = replace(iv, low=0.0, high=0.0)  # p-values need a formed interval

    def rejects(m: float) -> bool:
        return (probe.p_above(m) if side > 0 else probe.p_below(m)) <= alpha

    a, b = inside, outside
    for _ in range(48):
        mid = 0.5 * (a + b)
        if rejects(mid):
            b = mid
        else:
            a = mid
        if abs(b - a) <= 1e-10 * max(1.0, abs(inside)):
            break
    return float(a)

# ------------------------------------------------------------------------------------------------ primitives


def _ci_text(label: str, iv: Interval, delta: float | None) -> str:
    d = "" if delta is None else f" (delta {delta:g})"
    if iv.low is None:
        return f"{label} = {iv.estimate:.4g}, no CI ({iv.why})"
    return (f"{label} = {iv.estimate:.4g}, {iv.level:.0%} CI [{iv.low:.4g}, {iv.high:.4g}]{d}, n = {iv.n} in "
            f"{iv.n_strata} families, {iv.method}")


def greater(diffs: Sequence[float], groups: Sequence[str], *, delta: float, label: str = "A - B",
            level: float | None = None, n_resamples: int = N_RESAMPLES, seed: int = 0, rationale: str = "",
            precondition: str = "", bounds: tuple[float, float] | None = None, discrete: bool = False) -> Evidence:
    """"A > B" on per-example paired differences ``diffs`` (A - B), stratified by ``groups``.

    against: CI upper < ``delta`` (decided first); for: CI lower > 0; else undecided, with the projected n per
    family. ``delta = 0``: a threshold claim on ``diffs`` = x - T. ``precondition``: non-empty when a control or
    precondition of the rule did not hold: undecided for that reason whatever the CI says (stored, so
    :func:`recompute` decides the same). ``bounds``: the range of the per-example values (the betting interval).
    """
    level = looked_level() if level is None else level
    if not math.isfinite(delta):
        raise ValueError(f"greater({label}): delta must be finite (the smallest effect of interest; 0: a threshold "
                         f"claim; negative: against only below it, e.g. after an estimated threshold's "
                         f"uncertainty is taken off the margin), got {delta}")
    diffs = np.asarray(diffs, dtype=np.float64)
    iv = interval(diffs, groups, level=level, bounds=bounds, n_resamples=n_resamples, seed=seed, discrete=discrete)
    params = ({"delta": delta, "level": level, "n_resamples": n_resamples, "seed": seed, "rationale": rationale,
               "method": iv.method} | ({"bounds": list(bounds)} if bounds is not None else {})
              | ({"discrete": True} if discrete else {})
              | ({"precondition": precondition} if precondition else {}))
    data = {"values": diffs.tolist(), "groups": [str(g) for g in groups]}
    common = dict(primitive="greater", label=label, estimate=iv.estimate, n=iv.n, n_strata=iv.n_strata,
                  params=params, data=data, details={"method": iv.method, "df": iv.df, "se": iv.standard_error})
    ci = None if iv.low is None else (float(iv.low), float(iv.high))
    text = _ci_text(label, iv, delta)
    why = precondition or iv.degenerate or ("" if ci is not None else f"no CI: {iv.why}")
    if why:
        projected = _projection(iv, delta, (1 - level) / 2)
        return Evidence(outcome=Outcome.UNDECIDED, ci=ci, statement=f"{text}; {why}", undecided=why,
                        n_to_decide=projected[0], details={**common.pop("details"), "projection": projected[1]},
                        **common)
    lo, hi = ci
    if hi < delta:
        side = "upper bound < delta" if delta > 0 else "upper bound < 0 (the whole CI below the threshold)"
        return Evidence(outcome=Outcome.AGAINST, ci=ci, statement=f"{text}: {side}", **common)
    if lo > 0:
        return Evidence(outcome=Outcome.FOR, ci=ci, statement=f"{text}: lower bound > 0", **common)
    n_next, how = _projection(iv, delta, (1 - level) / 2)
    return Evidence(outcome=Outcome.UNDECIDED, ci=ci, statement=f"{text}: straddles 0..delta; {how}",
                    undecided=f"the CI of {label} straddles the decision boundary (neither > 0 nor < {delta:g})",
                    n_to_decide=n_next, details={**common.pop("details"), "projection": how}, **common)


def paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Per-example differences A - B of two conditions measured on the same prompts."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired: the conditions were not measured on the same prompts ({a.shape} vs {b.shape})")
    return a - b


def argmax(values: Sequence | np.ndarray, groups: Sequence[str], *, claimed: int | None = None,
           units: Sequence[int] | None = None, label: str = "argmax layer", delta: float = 0.0,
           level: float | None = None, n_resamples: int = N_RESAMPLES, seed: int = 0, erasing: bool = False,
           rationale: str = "") -> Evidence:
    """"The argmax is unit L" on per-example effects ``values`` [n_examples, n_units] (units: layer indices).

    L = ``claimed``, or (None: "an argmax exists") the unit with the largest mean over family means. For: L's paired
    difference to every other unit is decided > 0 (one-sided at (1 - level) / 2 each; at half that when L was
    selected from the data). Against: an exact tie of the top two in a measurement that can see the units, or L's
    lead over some unit decided < ``delta`` (Holm across the other units; another unit beating L is such a case).
    An exact tie where ``erasing`` (the measurement's erasure guard fired): undecided, a failed precondition.
    """
    level = looked_level() if level is None else level
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] < 1:
        raise ValueError(f"argmax({label}): values must be [n_examples >= 1, n_units >= 2], got shape {arr.shape}")
    units = list(range(arr.shape[1])) if units is None else [int(u) for u in units]
    if len(units) != arr.shape[1] or len(set(units)) != len(units):
        raise ValueError(f"argmax({label}): {len(units)} unit labels for {arr.shape[1]} columns (they must be "
                         f"unique, one per column)")
    if claimed is not None and claimed not in units:
        raise ValueError(f"argmax({label}): the claimed unit {claimed} is not among the units {units}")
    if not delta >= 0 or not math.isfinite(delta):
        raise ValueError(f"argmax({label}): delta must be finite and >= 0, got {delta}")
    names, samples = _strata(arr, groups)
    means = np.mean([s.mean(axis=0) for s in samples], axis=0)
    order = np.argsort(-means, kind="stable")
    top, second = int(order[0]), int(order[1])
    alpha = (1 - level) / 2
    alpha_for = alpha if claimed is not None else alpha / 2  # a unit selected from the data: half the level
    params = {"level": level, "alpha_for": alpha_for, "delta": delta, "n_resamples": n_resamples, "seed": seed,
              "claimed": claimed, "tie_rtol": TIE_RTOL, "erasing": bool(erasing), "rationale": rationale,
              "selection": "named in advance" if claimed is not None else "selected from the data (level halved)"}
    data = {"values": arr.tolist(), "groups": [str(g) for g in groups], "units": units}
    common = dict(primitive="argmax", label=label, n=int(arr.shape[0]), n_strata=len(names), params=params, data=data)
    claim_text = "an argmax exists" if claimed is None else f"the argmax is {claimed}"
    layer_means = {units[i]: float(means[i]) for i in range(len(units))}
    if math.isclose(means[top], means[second], rel_tol=TIE_RTOL, abs_tol=1e-12):
        tied = [units[i] for i in range(len(units)) if math.isclose(means[i], means[top], rel_tol=TIE_RTOL,
                                                                      abs_tol=1e-12)]
        details = {"tied_units": tied, "unit_means": layer_means}
        if erasing:
            why = CANNOT_SEPARATE.format(k=len(tied), value=means[top])
            return Evidence(outcome=Outcome.UNDECIDED, estimate=None, details=details, undecided=why,
                            statement=f"{label}: exact tie of {len(tied)} units at {means[top]:.4g}; {why}",
                            **{**common, "params": {**params, "precondition": why}})
        return Evidence(outcome=Outcome.AGAINST, estimate=None, details=details,
                        statement=f"{label}: exact tie of {len(tied)} units at {means[top]:.4g} in a measurement "
                                  f"that separates prompts (no single argmax); claim: {claim_text}", **common)
    lead = units.index(claimed) if claimed is not None else top
    others = [j for j in range(len(units)) if j != lead]
    ivs = {units[j]: interval(arr[:, lead] - arr[:, j], groups, level=level, n_resamples=n_resamples, seed=seed)
           for j in others}
    p_for = {u: iv.p_above(0.0) for u, iv in ivs.items()}
    p_against = {u: iv.p_below(delta) if delta > 0 else iv.p_below(0.0) for u, iv in ivs.items()}
    beaten = [u for u, p in p_for.items() if p <= alpha_for]
    against = [u for u, r in zip(p_against, holm(list(p_against.values()), alpha)) if r]
    runner = units[second] if lead == top else units[top]
    gap = ivs[runner]
    details = {"unit_means": layer_means, "runner_up": runner, "lead": units[lead],
               "top_two_gap": float(gap.estimate), "top_two_gap_se": gap.standard_error,
               "top_two_gap_ci": None if gap.low is None else [float(gap.low), float(gap.high)],
               "p_for": p_for, "p_against": p_against, "beaten": beaten, "against_units": against,
               "method": gap.method, "alpha_for": alpha_for}
    worst = max(p_for, key=p_for.get)
    statement = (f"{label} = {units[lead]} (runner-up {runner}, gap {gap.estimate:.4g}"
                 + ("" if gap.low is None else f", {level:.0%} CI [{gap.low:.4g}, {gap.high:.4g}]")
                 + f", {gap.method}); beats {len(beaten)} of {len(others)} other units at one-sided "
                 f"{alpha_for:g}; claim: {claim_text}")
    degenerate = [u for u, iv in ivs.items() if iv.degenerate]
    if degenerate and len(degenerate) == len(ivs):
        why = ivs[degenerate[0]].degenerate
        return Evidence(outcome=Outcome.UNDECIDED, estimate=units[lead], details=details, statement=statement,
                        undecided=why, **{**common, "params": {**params, "precondition": why}})
    if against:
        what = (f"another unit leads ({', '.join(map(str, against[:4]))})"
                if any(ivs[u].high is not None and ivs[u].high < 0 for u in against)
                else f"its lead over {', '.join(map(str, against[:4]))} is below delta {delta:g}")
        return Evidence(outcome=Outcome.AGAINST, estimate=units[lead], details=details,
                        statement=f"{statement}: {what} (Holm)", **common)
    if len(beaten) == len(others):
        return Evidence(outcome=Outcome.FOR, estimate=units[lead], details=details,
                        statement=f"{statement}: every comparison decided", **common)
    binding = ivs[worst]
    n_next, how = _projection(binding, delta, alpha_for)
    no_ci = [str(u) for u, iv in ivs.items() if iv.low is None]
    why = (f"no test: {ivs[int(no_ci[0])].why}" if no_ci else
           f"{units[lead]} does not beat unit {worst} at one-sided {alpha_for:g} (p = {p_for[worst]:.3g}, gap "
           f"{binding.estimate:.4g})")
    return Evidence(outcome=Outcome.UNDECIDED, estimate=units[lead], details={**details, "projection": how},
                    statement=f"{statement}; {how}", undecided=why, n_to_decide=n_next, **common)


# ------------------------------------------------------------------------------------------------ sequential looks


def looked_level(level: float = LEVEL) -> float:
    """The CI level a decision uses inside :func:`looks`: the error ``1 - level`` spent evenly over the looks
    (Bonferroni), so the chance of any false decision over all looks together stays within ``1 - level``."""
    return 1.0 - (1.0 - level) / _LOOKS.get()


@contextmanager
def looks(k: int):
    """Decide inside as one of ``k`` sequential looks at growing samples (every primitive's default level becomes
    :func:`looked_level`); the levels used are stored in each evidence's params, so :func:`recompute` agrees."""
    if k < 1:
        raise ValueError(f"looks: {k} looks")
    token = _LOOKS.set(k)
    try:
        yield
    finally:
        _LOOKS.reset(token)


def decided(outcome: Outcome | None) -> bool:
    return outcome in (Outcome.FOR, Outcome.AGAINST)


def sequential(stages: Sequence[int], decide_at, outcome_of) -> tuple[int, Any, list[tuple[int, str]]]:
    """Group-sequential looks (catalogue v3 bounds over all looks together): ``decide_at(n)`` at each stage ``n``
    in order, every look at :func:`looked_level` for ``len(stages)`` looks, stopping at the first look whose
    ``outcome_of(result)`` is decided. Returns (the index of the look that stopped, its result, every look's
    (n, outcome))."""
    history = []
    with looks(len(stages)):
        for i, n in enumerate(stages):
            result = decide_at(n)
            outcome = outcome_of(result)
            history.append((n, "undecided" if outcome is None else outcome.value))
            if decided(outcome) or i == len(stages) - 1:
                return i, result, history
    raise ValueError("sequential: no stages")


def holm(pvalues: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down: which null hypotheses are rejected at family-wise level ``alpha``."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    rejected = [False] * m
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        if p[index] > alpha / (m - rank):
            break
        rejected[int(index)] = True
    return rejected


def for_every(members: Mapping[str, tuple[Sequence[float], Sequence[str]]], *, delta: float,
              label: str = "every member", level: float | None = None, n_resamples: int = N_RESAMPLES, seed: int = 0,
              rationale: str = "", precondition: str = "", bounds: tuple[float, float] | None = None,
              discrete: bool = False) -> Evidence:
    """"For every X, A > B": ``members`` maps X to its (per-example differences, groups).

    One-sided p-values per member (:class:`Interval`) for H0 "effect <= 0" and for H0 "effect >= delta"; Holm at
    alpha = (1 - level) / 2 across the members, for each side. against (first): some member's ">= delta" rejected;
    for: every member's "<= 0" rejected (a member without a valid test makes for impossible); else undecided.
    ``delta = 0``: a threshold claim on each member (against: some member's whole CI below it).
    """
    level = looked_level() if level is None else level
    if not members:
        raise ValueError(f"for_every({label}): no members")
    if not delta >= 0 or not math.isfinite(delta):
        raise ValueError(f"for_every({label}): delta must be finite and >= 0, got {delta}")
    alpha = (1 - level) / 2
    ivs = {str(k): interval(np.asarray(v[0], dtype=np.float64), v[1], level=level, bounds=bounds,
                            n_resamples=n_resamples, seed=seed, discrete=discrete) for k, v in members.items()}
    names = list(ivs)
    p_for = [ivs[n].p_above(0.0) for n in names]
    p_against = [ivs[n].p_below(delta) for n in names]
    all_for, some_against = holm(p_for, alpha), holm(p_against, alpha)
    params = ({"delta": delta, "level": level, "alpha_one_sided": alpha, "n_resamples": n_resamples, "seed": seed,
               "rationale": rationale, "correction": "holm"} | ({"bounds": list(bounds)} if bounds else {})
              | ({"discrete": True} if discrete else {}) | ({"precondition": precondition} if precondition else {}))
    data = {"members": {str(k): {"values": np.asarray(v[0], dtype=np.float64).tolist(),
                                 "groups": [str(g) for g in v[1]]} for k, v in members.items()}}
    estimates = {n: float(ivs[n].estimate) for n in names}
    details = {"estimates": estimates, "p_for": dict(zip(names, p_for)), "p_against": dict(zip(names, p_against)),
               "holm_for": dict(zip(names, all_for)), "holm_against": dict(zip(names, some_against)),
               "cis": {n: None if ivs[n].low is None else [float(ivs[n].low), float(ivs[n].high)] for n in names},
               "method": ivs[names[0]].method}
    common = dict(primitive="for_every", label=label, estimate=estimates,
                  n=int(sum(len(v[0]) for v in members.values())), n_strata=len(names), params=params, data=data)
    degenerate = [n for n in names if ivs[n].degenerate]
    if precondition or (degenerate and len(degenerate) == len(names)):
        why = precondition or ivs[degenerate[0]].degenerate
        return Evidence(outcome=Outcome.UNDECIDED, statement=f"{label}: {why}", undecided=why, details=details,
                        **common)
    against = [n for n, r in zip(names, some_against) if r]
    if against:
        return Evidence(outcome=Outcome.AGAINST, details=details,
                        statement=f"{label}: below {'delta ' + format(delta, 'g') if delta else 'the threshold'} "
                                  f"(Holm, alpha {alpha:g}) at {', '.join(against[:6])}"
                                  f"{' ...' if len(against) > 6 else ''}", **common)
    if all(all_for) and not degenerate:
        return Evidence(outcome=Outcome.FOR, details=details,
                        statement=f"{label}: > 0 at all {len(names)} (Holm, alpha {alpha:g})", **common)
    open_ = [n for n, r in zip(names, all_for) if not r] or degenerate
    no_ci = [n for n in open_ if ivs[n].low is None]
    why = (f"no test for {', '.join(no_ci[:4])} ({ivs[no_ci[0]].why})" if no_ci else
           f"not > 0 after Holm at {', '.join(open_[:6])}{' ...' if len(open_) > 6 else ''}, and no member "
           f"decisively below delta {delta:g}")
    worst = max(open_, key=lambda n: p_for[names.index(n)])
    n_next, how = _projection(ivs[worst], delta, alpha / len(names))
    return Evidence(outcome=Outcome.UNDECIDED, statement=f"{label}: {why}; {how}", undecided=why, n_to_decide=n_next,
                    details={**details, "projection": how}, **common)


def differs(members: Mapping[str, tuple[Sequence[float], Sequence[str]]], *, delta: float,
            label: str = "some member differs", level: float | None = None, n_resamples: int = N_RESAMPLES, seed: int = 0,
            rationale: str = "", precondition: str = "", discrete: bool = False) -> Evidence:
    """"Some X differs from 0" (e.g. some pair of models' hub depths differ; the direction is not chosen from the
    data): ``members`` maps X to its (per-example paired differences, groups).

    Two-sided p-value per member, Holm at alpha = 1 - level across the members. against (first): every member is
    equivalent to 0 within ``delta`` (both one-sided tests at (1 - level) / 2 reject, per member: an
    intersection-union test needs no correction); for: some member's two-sided test rejected after Holm; else
    undecided.
    """
    level = looked_level() if level is None else level
    if not members:
        raise ValueError(f"differs({label}): no members")
    if not delta > 0 or not math.isfinite(delta):
        raise ValueError(f"differs({label}): delta must be finite and > 0 (the equivalence margin), got {delta}")
    alpha2, alpha = 1 - level, (1 - level) / 2
    ivs = {str(k): interval(np.asarray(v[0], dtype=np.float64), v[1], level=level, n_resamples=n_resamples,
                            seed=seed, discrete=discrete) for k, v in members.items()}
    names = list(ivs)
    p_two = [min(1.0, 2 * min(ivs[n].p_above(0.0), ivs[n].p_below(0.0))) for n in names]
    equivalent = [max(ivs[n].p_below(delta), ivs[n].p_above(-delta)) <= alpha for n in names]
    rejected = holm(p_two, alpha2)
    params = ({"delta": delta, "level": level, "alpha_two_sided": alpha2, "n_resamples": n_resamples, "seed": seed,
               "rationale": rationale, "correction": "holm"} | ({"discrete": True} if discrete else {})
              | ({"precondition": precondition} if precondition else {}))
    data = {"members": {str(k): {"values": np.asarray(v[0], dtype=np.float64).tolist(),
                                 "groups": [str(g) for g in v[1]]} for k, v in members.items()}}
    estimates = {n: float(ivs[n].estimate) for n in names}
    details = {"estimates": estimates, "p_two_sided": dict(zip(names, p_two)), "holm": dict(zip(names, rejected)),
               "equivalent": dict(zip(names, equivalent)),
               "cis": {n: None if ivs[n].low is None else [float(ivs[n].low), float(ivs[n].high)] for n in names}}
    common = dict(primitive="differs", label=label, estimate=estimates,
                  n=int(sum(len(v[0]) for v in members.values())), n_strata=len(names), params=params, data=data,
                  details=details)
    degenerate = [n for n in names if ivs[n].degenerate]
    if precondition or (degenerate and len(degenerate) == len(names)):
        why = precondition or ivs[degenerate[0]].degenerate
        return Evidence(outcome=Outcome.UNDECIDED, statement=f"{label}: {why}", undecided=why, **common)
    if all(equivalent):
        return Evidence(outcome=Outcome.AGAINST, statement=f"{label}: every member within +-{delta:g} "
                                                           f"(equivalence, one-sided {alpha:g} each)", **common)
    found = [n for n, r in zip(names, rejected) if r and not ivs[n].degenerate]
    if found:
        return Evidence(outcome=Outcome.FOR, statement=f"{label}: {', '.join(found[:4])} differ (two-sided, Holm "
                                                       f"at {alpha2:g})", **common)
    best = min(names, key=lambda n: p_two[names.index(n)])
    n_next, how = _projection(ivs[best], delta, alpha2 / 2 / len(names))
    why = (f"no member differs after Holm (smallest two-sided p {p_two[names.index(best)]:.3g} at {best}) and not "
           f"every member is within +-{delta:g}")
    return Evidence(outcome=Outcome.UNDECIDED, statement=f"{label}: {why}; {how}", undecided=why,
                    n_to_decide=n_next, **{**common, "details": {**details, "projection": how}})


def rank_sum_p(ranks: Sequence[int], n_draws: int) -> float:
    """Exact P(T <= t) of the sum T of independent ranks, each uniform on 1..n_draws + 1 (the null: a run is
    exchangeable with its draws), at t = sum(ranks): the permutation p-value of "our runs rank low" combined over
    seeds. Its floor is (1 / (n_draws + 1)) ** len(ranks)."""
    k = n_draws + 1
    dist = np.ones(1)
    for _ in ranks:
        dist = np.convolve(dist, np.ones(k) / k)  # index i: T = len(ranks) + i
    t = int(sum(ranks)) - len(ranks)
    return float(dist[: t + 1].sum())


def beats_draws(members: Mapping[str, tuple[Sequence[float], Sequence[Sequence[float]]]], *, delta: float,
                label: str = "ours beats its draws", level: float | None = None, rationale: str = "",
                precondition: str = "") -> Evidence:
    """"Our run beats the random-matched draws" with the training run as the unit (LORA-ATLAS, SKIP-RECOVER):
    ``members`` maps a family (or "all") to (ours [S]: our run's loss per training seed, draws [S, D]: each random
    draw's loss for that seed; lower is better; evaluation-example noise is inside each run's mean loss).

    for: per member the exact permutation p-value of our runs' rank among the draws, summed over seeds
    (:func:`rank_sum_p`; ties count against us), rejected for every member after Holm at (1 - level) / 2.
    against (first): for some member (Holm) the exact p-value of "ours is better by ``delta``" rejected: were it
    so, ours + delta would be exchangeable with the draws (a location shift), so its rank from the top, summed over
    seeds, is uniform. Else undecided, naming the floor of the p-value. The CI over runs of mean(draws) - ours (the
    t interval over the seeds' gaps; with one seed, over the draws' gaps to our one run, whose own noise is then
    not observable) is reported, never deciding.
    """
    level = looked_level() if level is None else level
    if not members:
        raise ValueError(f"beats_draws({label}): no members")
    if not math.isfinite(delta):
        raise ValueError(f"beats_draws({label}): delta must be finite, got {delta}")
    alpha = (1 - level) / 2
    names, p_for, p_against, estimates, cis, floors, ranks_of = [], [], [], {}, {}, {}, {}
    for name, (ours, draws) in members.items():
        ours, draws = np.asarray(ours, float).reshape(-1), np.atleast_2d(np.asarray(draws, float))
        if draws.shape[0] != ours.shape[0] or not np.isfinite(ours).all() or not np.isfinite(draws).all():
            raise ValueError(f"beats_draws({label}): member {name}: draws must be [n_seeds, n_draws] matching ours "
                             f"{ours.shape} and finite, got {draws.shape}")
        ranks = [1 + int(np.sum(d <= o)) for o, d in zip(ours, draws)]
        gaps = draws.mean(axis=1) - ours
        # over runs: the seeds' gaps (each seed's own run noise included); with one seed, the draws' gaps to our one
        # run (our run's own noise is then not observable)
        per_run = gaps if len(ours) >= 2 else (draws[0] - ours[0])
        iv = interval(per_run, ["runs"] * len(per_run), level=level)
        # against: were ours better by delta, ours + delta would be exchangeable with the draws (a location shift);
        # its rank from the top, summed over seeds, is the exact p-value of "not better by delta" (ties count for us)
        shifted = [1 + int(np.sum(d >= o + delta)) for o, d in zip(ours, draws)]
        names.append(str(name))
        ranks_of[str(name)] = ranks
        p_for.append(rank_sum_p(ranks, draws.shape[1]))
        p_against.append(rank_sum_p(shifted, draws.shape[1]))
        estimates[str(name)] = float(gaps.mean())
        cis[str(name)] = None if iv.low is None else [float(iv.low), float(iv.high)]
        floors[str(name)] = (1.0 / (draws.shape[1] + 1)) ** len(ours)
    all_for, some_against = holm(p_for, alpha), holm(p_against, alpha)
    params = {"delta": delta, "level": level, "alpha_one_sided": alpha, "rationale": rationale, "correction": "holm",
              "unit": "training run"} | ({"precondition": precondition} if precondition else {})
    data = {"members": {str(k): {"ours": np.asarray(v[0], float).reshape(-1).tolist(),
                                 "draws": np.atleast_2d(np.asarray(v[1], float)).tolist()} for k, v in members.items()}}
    n_seeds = len(next(iter(data["members"].values()))["ours"])
    n_draws = len(next(iter(data["members"].values()))["draws"][0])
    details = {"estimates": estimates, "cis": cis, "ranks": ranks_of, "p_for": dict(zip(names, p_for)),
               "p_against": dict(zip(names, p_against)), "p_floor": floors, "n_runs": n_seeds * (n_draws + 1),
               "n_training_seeds": n_seeds, "n_random_draws": n_draws}
    only = cis[names[0]] if len(names) == 1 else None
    common = dict(primitive="beats_draws", label=label, estimate=estimates, n=n_seeds * (n_draws + 1),
                  n_strata=len(names), params=params, data=data, details=details,
                  ci=None if only is None else tuple(only))
    if precondition:
        return Evidence(outcome=Outcome.UNDECIDED, statement=f"{label}: {precondition}", undecided=precondition,
                        **common)
    against = [n for n, r in zip(names, some_against) if r]
    if against:
        return Evidence(outcome=Outcome.AGAINST, statement=f"{label}: not better than the draws by delta {delta:g} "
                                                           f"(exact shifted-rank p, Holm) at {', '.join(against)}",
                        **common)
    if all(all_for):
        return Evidence(outcome=Outcome.FOR, statement=f"{label}: our runs rank below the draws at every member "
                                                       f"(exact rank-sum p, Holm at {alpha:g}): "
                        + ", ".join(f"{n} p = {p:.3g}" for n, p in zip(names, p_for)), **common)
    floor = max(floors.values())
    reachable = floor <= alpha / len(names)
    why = ("not every member's rank p-value is below its Holm level ("
           + ", ".join(f"{n} p = {p:.3g}" for n, p in zip(names, p_for)) + ")"
           + ("" if reachable else f"; with {n_seeds} training seed(s) x {n_draws} draw(s) the p-value cannot go "
                                   f"below {floor:.3g} > {alpha / len(names):.3g}: the plan needs more runs "
                                   f"({smallest_runs(len(names), level)})"))
    return Evidence(outcome=Outcome.UNDECIDED, statement=f"{label}: {why}", undecided=why, **common)


def smallest_runs(n_members: int, level: float = LEVEL) -> str:
    """The smallest (training seeds, draws) at which :func:`beats_draws` can decide for ``n_members`` (Holm): the
    exact p-value's floor (1 / (D + 1)) ** S at or below the first Holm level."""
    target = (1 - level) / 2 / n_members
    options = []
    for seeds in (1, 2, 3, 4, 5):
        draws = max(1, math.ceil(target ** (-1.0 / seeds) - 1 - 1e-9))
        while (1.0 / (draws + 1)) ** seeds > target:
            draws += 1
        options.append(f"{seeds} seed(s) x {draws} draws")
    return "at least one of: " + ", ".join(options)


# ------------------------------------------------------------------------------------------------ projection


def _projection(iv: Interval, delta: float, alpha: float) -> tuple[int | None, str]:
    """(examples per family, the sentence naming its inputs) at which a one-sided test at ``alpha`` of the
    observed effect, with the observed standard error shrinking as 1/sqrt(n), has :data:`POWER` to clear the nearer
    decision boundary (0 when the estimate is above delta/2, else delta). None: no n is expected to decide."""
    se, est, per = iv.standard_error, iv.estimate, iv.per_family
    if se is None or not (se > 0) or not per > 0 or not math.isfinite(est):
        return None, "no projection: no standard error from this sample"
    target, boundary = (est, "0") if est >= delta / 2 else (delta - est, f"delta {delta:g}")
    if target <= 0:
        return None, f"no projection: the estimate {est:.4g} sits on the decision boundary"
    z = float(sps.norm.isf(alpha) + sps.norm.ppf(POWER))
    n = max(int(math.ceil(per * (z * se / target) ** 2)), 1)
    return n, (f"projected {n}/family for {POWER:.0%} power from the observed effect {est:.4g} (distance "
               f"{target:.4g} to {boundary}) and SE {se:.3g} at {per:g}/family, one-sided alpha {alpha:.3g}")


# ------------------------------------------------------------------------------------------------ calibration


@lru_cache(maxsize=1)
def calibration_table() -> dict[str, Any]:
    """The committed rates table (``engine/data/calibration.json``): per rule the measured P(false for),
    P(false against) and power at every per-family n that a plan uses, and the smallest n at which it holds."""
    if not CALIBRATION_TABLE.exists():
        return {"rules": {}}
    return json.loads(CALIBRATION_TABLE.read_text())


def calibrated_min_n(claim: str) -> tuple[int | None, str]:
    """(the smallest per-family n at which every calibrated rule of ``claim`` held its error bounds, the rules) from
    the committed table; (None, "") when the claim has no calibrated rule; a rule that held them at no plan's n
    gives a very large n (the claim cannot be decided by it at any planned size). A rule marked ``"gates": false``
    (one optional look's, sized by another field) does not count."""
    table = calibration_table()
    names = [name for name in table.get("claims", {}).get(claim, [])
             if table["rules"][name].get("gates", True)]
    if not names:
        return None, ""
    ns = [table["rules"][name].get("min_n") for name in names]
    return (max(n if n is not None else 10**9 for n in ns)), ", ".join(names)


# ------------------------------------------------------------------------------------------------ offline


PRIMITIVES = {"greater", "argmax", "for_every", "differs", "beats_draws"}


def recompute(evidence: Evidence | Mapping[str, Any]) -> Evidence:
    """Decide again from the evidence's stored data and parameters (the same call the claim made).

    ``params["precondition"]``: a precondition or control of the rule did not hold (set by the primitive or by the
    Recorder from the test's ``undecided``): undecided whatever the data say.
    ``params["negated"]``: the claim read the primitive's decision for the opposite statement (e.g. "the argmax
    is the other suite's layer" decided *for* is "the hubs differ" decided *against*): the outcome is flipped back.
    """
    ev = evidence if isinstance(evidence, Evidence) else Evidence.from_dict(evidence)
    if ev.params.get("precondition") and ev.primitive == "argmax":
        raw = recompute(replace(ev, params={k: v for k, v in ev.params.items() if k != "precondition"}))
        if raw.outcome is Outcome.UNDECIDED and raw.params.get("precondition"):
            return raw
        return replace(raw, outcome=Outcome.UNDECIDED, undecided=ev.params["precondition"], params=ev.params)
    if ev.params.get("negated"):
        raw = recompute(replace(ev, params={k: v for k, v in ev.params.items() if k != "negated"}))
        flip = {Outcome.FOR: Outcome.AGAINST, Outcome.AGAINST: Outcome.FOR}
        return replace(raw, outcome=flip.get(raw.outcome, raw.outcome), label=ev.label, statement=ev.statement,
                       params=ev.params)
    p, d = dict(ev.params), ev.data
    n_resamples = int(p.get("n_resamples", N_RESAMPLES))
    if not 0 < n_resamples <= 1_000_000:
        raise ValueError(f"recompute: n_resamples {n_resamples} is outside 1..1000000")
    bounds = tuple(p["bounds"]) if p.get("bounds") is not None else None
    if ev.primitive == "greater":
        return greater(d["values"], d["groups"], delta=p["delta"], label=ev.label, level=p["level"],
                       n_resamples=n_resamples, seed=p["seed"], rationale=p.get("rationale", ""),
                       precondition=p.get("precondition", ""), bounds=bounds, discrete=bool(p.get("discrete")))
    if ev.primitive == "argmax":
        return argmax(d["values"], d["groups"], claimed=p.get("claimed"), units=d.get("units"), label=ev.label,
                      delta=p.get("delta", 0.0), level=p["level"], n_resamples=n_resamples, seed=p["seed"],
                      erasing=bool(p.get("erasing", False)), rationale=p.get("rationale", ""))
    if ev.primitive == "for_every":
        members = {k: (m["values"], m["groups"]) for k, m in d["members"].items()}
        return for_every(members, delta=p["delta"], label=ev.label, level=p["level"], n_resamples=n_resamples,
                         seed=p["seed"], rationale=p.get("rationale", ""), precondition=p.get("precondition", ""),
                         bounds=bounds, discrete=bool(p.get("discrete")))
    if ev.primitive == "beats_draws":
        members = {k: (m["ours"], m["draws"]) for k, m in d["members"].items()}
        return beats_draws(members, delta=p["delta"], label=ev.label, level=p["level"],
                           rationale=p.get("rationale", ""), precondition=p.get("precondition", ""))
    if ev.primitive == "differs":
        members = {k: (m["values"], m["groups"]) for k, m in d["members"].items()}
        return differs(members, delta=p["delta"], label=ev.label, level=p["level"], n_resamples=n_resamples,
                       seed=p["seed"], rationale=p.get("rationale", ""), precondition=p.get("precondition", ""),
                       discrete=bool(p.get("discrete")))
    raise ValueError(f"recompute: unknown primitive {ev.primitive!r} (known: {', '.join(sorted(PRIMITIVES))})")


def _plain(value: Any) -> Any:
    """JSON-able: numpy scalars/arrays to Python, tuples to lists, dict keys to str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Enum):
        return value.value
    return value
