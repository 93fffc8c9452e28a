"""Calibration of the catalogue's rules as the claims use them (catalogue v3): false-confirm, false-fail and power.

For every rule (conjunctions across seeds, Holm families, threshold parts, pairs across suites) and the data type it
decides on, :func:`simulate` draws measurements with no effect and with the claim's delta from the per-family
variance, skew and pairing of committed runs, at a per-family n, calls the production decision function (the
``decide_*`` functions of :mod:`engine.studies` and the primitives of :mod:`engine.decisions`), and counts outcomes.
:func:`rates` runs every rule at every per-family n that a plan of ``engine/data/plans.toml`` uses (enumerated from the
plans, :func:`plan_sizes`), and :func:`write_table` commits them to ``engine/data/calibration.json``, where each rule's
``min_n`` is the smallest n at and above which it held P(false CONFIRMED) <= 5% and P(false FAILED) <= 5%. The Recorder
reads that table: a rigorous record below its rule's ``min_n`` is INCONCLUSIVE with that reason.

Regenerate the table (a few minutes on 2 cores): ``python -m engine.calibration --write``.

Null pools (what "no effect" looks like), read from committed files, never from constants:

* ``kl:<model>``: the six leading layers of the committed CPU-tier rigorous atlases (``results/calibration/``),
  per family (8 prompts each): the hub rules draw rows per family, make the top two layers exchangeable (no effect)
  or give the first a lead of the rule's delta;
* every other data type: the per-example values a committed run's rigorous evidence of that claim decided on
  (``SOURCE_RUN``), centred within each family (inflated by sqrt(n/(n-1)) so the residuals keep the unbiased
  variance), pooled across families and models; a family with one value is centred on the grand mean (its spread
  then includes between-family differences: conservative).

The seed protocol reproduces the seed's method and is not held to the bounds; its rules share the primitives.
The LoRA rules are calibrated at their new unit (the training run) in "Verdicts v3, 2/2".
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engine import decisions as D
from engine.plans import split_claim_key

ROOT = Path(__file__).resolve().parents[1]
ATLAS_POOL = ROOT / "results" / "calibration" / "atlas-layer-effects.json"
SOURCE_RUN = ROOT / "results" / "runs" / "20261202T001047Z-d86816d9c6e1" / "claims.json"
PLANS = Path(__file__).resolve().parent / "data" / "plans.toml"
BOUND = 0.05  # the catalogue's P(false CONFIRMED) and P(false FAILED) bound
POWER_TARGET = 0.8
FULL_PLAN = "full"


# ------------------------------------------------------------------------------------------------ pools


@lru_cache(maxsize=1)
def _atlas_pool() -> dict[str, dict[str, np.ndarray]]:
    data = json.loads(ATLAS_POOL.read_text())["models"]
    out = {}
    for model, d in data.items():
        x, fam = np.asarray(d["per_example"], float), np.asarray(d["families"])
        x = x[:, np.argsort(-x.mean(0))[:6]]  # the six leading layers carry the argmax's mass
        out[model] = {f: x[fam == f] for f in dict.fromkeys(fam.tolist())}
    return out


def _centred(values: np.ndarray, groups: list[str]) -> np.ndarray:
    values, groups = np.asarray(values, float), np.asarray(groups)
    out = []
    for f in dict.fromkeys(groups.tolist()):
        v = values[groups == f]
        if len(v) >= 2:
            out.append((v - v.mean()) * math.sqrt(len(v) / (len(v) - 1)))
    if not out:  # one value per family: centred on the grand mean (includes between-family spread)
        return (values - values.mean()) * math.sqrt(len(values) / max(len(values) - 1, 1))
    return np.concatenate(out)


@lru_cache(maxsize=1)
def skew_shape() -> np.ndarray:
    """Standardised within-family residuals of the committed atlases' top-two layer differences (8 prompts per
    family, both models, not symmetrised): the skew and tails every pool is drawn with."""
    pooled = []
    for families in _atlas_pool().values():
        for own in families.values():
            d = own[:, 0] - own[:, 1]
            pooled.append(d - d.mean())
    shape = np.concatenate(pooled)
    return shape / np.std(shape, ddof=1)


@lru_cache(maxsize=32)
def residual_pool(claim: str, part: str = "") -> np.ndarray:
    """A null pool for ``claim``: the spread (SD) of the values its committed rigorous evidence (``part``) decided on,
    centred within each family, drawn with :func:`skew_shape` (the committed atlases' skew: residuals centred in
    2-per-family strata are exact +- pairs, symmetric, and would hide the small-n tests' sensitivity to skew)."""
    return skew_shape() * float(np.std(_claim_residuals(claim, part), ddof=1))


@lru_cache(maxsize=32)
def _claim_residuals(claim: str, part: str = "") -> np.ndarray:
    """Pooled within-family residuals of the values ``claim``'s rigorous evidence (``part``) decided on."""
    run = json.loads(SOURCE_RUN.read_text())
    pooled = []
    for r in run["records"]:
        if r["claim_id"] != claim or r["protocol"] != "rigorous":
            continue
        for e in r.get("evidence") or []:
            if part and e.get("part") != part:
                continue
            d = e.get("data") or {}
            members = d["members"].values() if "members" in d else [d] if "values" in d else []
            for m in members:
                if len(m["values"]) >= 2:
                    pooled.append(_centred(m["values"], m["groups"]))
    if not pooled:
        raise ValueError(f"calibration: no rigorous evidence of {claim} {part} in {SOURCE_RUN}")
    pool = np.concatenate(pooled)
    if not np.ptp(pool) > 0:
        raise ValueError(f"calibration: the {claim} pool has no spread")
    return pool


# ------------------------------------------------------------------------------------------------ rules


def _outcome(holds) -> str:
    """for / against / undecided of what a decide function returned (an Evidence or a mapping of them): for only
    when every part is for; against when some part is against."""
    evs = list(holds.values()) if isinstance(holds, Mapping) else [holds]
    if all(e.outcome is D.Outcome.FOR for e in evs):
        return "for"
    if any(e.outcome is D.Outcome.AGAINST for e in evs):
        return "against"
    return "undecided"


def _claim_params(claim: str) -> dict[str, Any]:
    """The claim's [claim.params] from the validated catalogue (the same object the claim tests read)."""
    from engine.verdicts import load_catalogue

    return dict(load_catalogue()[claim].params)


def _atlas_rows(model: str, per_family: int, effect: float | None, rng, n_families: int = 12,
                per_family_effect: Mapping[int, float] | None = None) -> tuple:
    """[H n, 6] rows drawn per family; ``effect`` None: the top two layers' family means equal (no effect; each
    layer keeps its own skewed distribution, so the paired difference keeps the committed skew); else the first
    leads the second by ``effect`` (``per_family_effect``: family index -> its own lead)."""
    rows, groups = [], []
    for i, (f, own) in enumerate(list(_atlas_pool()[model].items())[:n_families]):
        lead = effect if per_family_effect is None else per_family_effect.get(i, effect)
        sample = own[rng.integers(0, len(own), per_family)].copy()
        means = own.mean(0)
        # the other leading layers kept >= 3 nats below the top two in every family: the contest is the top two's
        sample[:, 2:] -= np.maximum(0.0, means[2:] - means[1] + 3.0)
        sample[:, 0] += means[1] - means[0]  # layer 0 moved onto layer 1's family mean: no effect, real skew
        if lead:
            sample[:, 0] += lead
        rows.append(sample)
        groups += [f] * per_family
    return np.vstack(rows), groups


def _atlas(values, groups, seed):
    from engine.atlas import Atlas

    return Atlas(model="calibration", fingerprint="c", arch="llama", n_layers=values.shape[1], method="zero",
                 component="layer", positions="all", measure="answer", template="none", seed=seed,
                 example_ids=[f"{g}-{i}" for i, g in enumerate(groups)], example_families=list(groups),
                 per_example=values, n_resamples=500)


@dataclass(frozen=True)
class Rule:
    """One rule as claims use it: ``run(rng, per_family, effect)`` -> outcome; ``delta``: the effect of interest."""

    name: str
    claims: tuple[str, ...]
    data: str
    sizes: tuple[str, str]  # (plans block, field) giving the per-family n
    delta: float
    run: Callable[[Any, int, float | None], str]
    note: str = ""
    powered: bool = True  # held to P(CONFIRMED | delta) >= 0.8 at the full plan (else: measured and reported)
    gates: bool = True  # its min_n gates its claims' records (engine.verdicts.calibration_gate); False: it calibrates
    # one optional look of a claim another rule gates (HUB-BREADTH's 4-family look, sized by another field)


def _hub_rule(model: str, claimed: bool, seeds: int = 3) -> Callable:
    from engine.studies.atlas import hubs

    delta = float(_claim_params("HUB-Q05")["hub_delta"])

    def run(rng, n, effect):
        atlases = {f"seed {s}": _atlas(*_atlas_rows(model, n, effect, rng), s) for s in range(seeds)}
        _, holds = hubs.decide_hub(atlases, 0 if claimed else None, delta)
        return _outcome(holds)

    return run


def _hub_pair_rule(model: str, kind: str) -> Callable:
    from engine.studies.atlas import common, hubs

    delta = float(_claim_params("HUB-Q05")["hub_delta"])

    def run(rng, n, effect):
        a = _atlas(*_atlas_rows(model, n, effect, rng), 0)
        if kind == "same":  # HUB-NL: two suites (independent prompts), the same hub
            b = _atlas(*_atlas_rows(model, n, effect, rng), 1)
            _, holds = common.same_argmax({"synthetic": a, "nl": b}, "argmax layer", delta)
            return _outcome(holds)
        # HUB-BREADTH: the 4-family suite is a restriction of the 12-family one. No effect (the claim false): one
        # layer leads by delta in every family; delta: the 4 narrow families lead the other way by delta and the
        # other 8 by 2 delta, so the 12-family lead is delta at layer 0 and the 4-family one delta at layer 1
        if effect is None:
            a = _atlas(*_atlas_rows(model, n, delta, rng), 0)
        else:
            a = _atlas(*_atlas_rows(model, n, 2 * effect, rng, per_family_effect={i: -effect for i in range(4)}), 0)
        narrow = common.restrict(a, a.families[:4])
        _, holds, undecided = hubs.decide_differ({"12-family": a, "4-family": narrow}, "argmax layer", delta)
        return "undecided" if undecided else _outcome(holds)

    return run


def _breadth_look_rule(model: str) -> Callable:
    """HUB-BREADTH at its 4-family look (``Sizes.breadth_per_family``): the 12-family suite at the full plan's
    rigorous_per_family, the 4-family suite at ``n`` per family whose first rows are the 12-family suite's (one
    nested draw of n per family, as the plan measures it); effects as :func:`_hub_pair_rule`'s. Decided at the
    level the look uses (the error spent over the full plan's looks and this one), not the nominal one."""
    from engine.studies.atlas import common, hubs

    delta = float(_claim_params("HUB-Q05")["hub_delta"])
    atlas = tomllib.loads(PLANS.read_text())["plans"][FULL_PLAN]["cpu"]["atlas"]
    twelve = int(atlas["rigorous_per_family"])
    n_looks = len([s for s in atlas.get("stages", []) if s < twelve]) + 2  # the plan's looks and this one

    def run(rng, n, effect):
        per = max(n, twelve)
        if effect is None:
            values, groups = _atlas_rows(model, per, delta, rng)
        else:
            values, groups = _atlas_rows(model, per, 2 * effect, rng, per_family_effect={i: -effect for i in range(4)})
        a = _atlas(values, groups, 0)
        first = [i for i in range(len(groups)) if i % per < twelve]
        narrow = common.restrict(common.restrict_rows(a, [i for i in range(len(groups)) if i % per < n]),
                                 a.families[:4])
        with D.looks(n_looks):
            _, holds, undecided = hubs.decide_differ({"12-family": common.restrict_rows(a, first),
                                                      "4-family": narrow}, "argmax layer", delta)
        return "undecided" if undecided else _outcome(holds)

    return run


def _shape(total: int) -> tuple[int, int]:
    """(families, per family) of ``total`` steer / quant prompts spread round-robin over the 11 other families."""
    return min(total, 11), max(1, total // 11)


def _greater_rule(claim: str, delta: float, families: int | None, pool_claim: str | None = None, part: str = "",
                  bounds=None, threshold_sd: bool = False) -> Callable:
    """``families`` None: ``n`` is the plan's total number of prompts (:func:`_shape`)."""
    def run(rng, n, effect):
        if families is None:
            return _run_greater(rng, *_shape(n), effect)
        return _run_greater(rng, families, n, effect)

    def _run_greater(rng, families, n, effect):
        pool = residual_pool(pool_claim or claim, part)
        values = rng.choice(pool, size=families * n) + (effect or 0.0)
        groups = [f"f{i}" for i in range(families) for _ in range(n)]
        return D.greater(values, groups, delta=delta, n_resamples=999, seed=int(rng.integers(1 << 30))).outcome.value

    return run


def _controls_rule(claim: str, families: int, n_random: int = 100) -> Callable:
    """STEER-RANDOM / STEER-TRANSFER through the production :func:`engine.studies.steer.control_rule`: ``n_random``
    random-vector effects drawn from N(0, SD of the committed run's direction residuals), the direction's per-prompt
    effects from the committed residuals around the controls' true 95th percentile (no effect) or that + delta;
    the percentile is estimated from the drawn controls, with its order-statistic CI."""
    from scipy import stats as sps

    from engine.studies import steer

    params = _claim_params(claim)

    def run(rng, total, effect):
        families_, n = _shape(total)
        pool = residual_pool(claim)
        sd = float(np.std(pool, ddof=1))
        controls = {"random": rng.normal(0.0, sd, n_random).tolist()}
        true_p95 = float(sps.norm.ppf(0.95) * sd)
        values = true_p95 + rng.choice(pool, size=families_ * n) + (effect or 0.0)
        groups = [f"f{i}" for i in range(families_) for _ in range(n)]
        return steer.control_rule(values, groups, controls, params).outcome.value

    return run


def _threshold_rule(claim: str, part: str, families: int) -> Callable:
    """A threshold part (ABL-MEAN): the true mean exactly at the threshold (no effect: a false for is the claimed side
    decided when it does not hold) or one pooled SD on the claimed side; decided with delta = 0."""
    def run(rng, n, effect):
        pool = residual_pool(claim, part)
        values = rng.choice(pool, size=families * n) + (effect or 0.0)
        groups = [f"f{i}" for i in range(families) for _ in range(n)]
        return D.greater(values, groups, delta=0.0, seed=int(rng.integers(1 << 30))).outcome.value

    return run


def _differs_rule(claim: str, delta: float, pairs: int, families: int) -> Callable:
    """OWN-ATLAS: per pair the paired depth differences; no effect: no pair differs; delta: every pair differs by
    the equivalence margin (the claim holds, barely)."""
    def run(rng, n, effect):
        pool = residual_pool(claim)
        groups = [f"f{i}" for i in range(families) for _ in range(n)]
        ms = {f"p{j}": (rng.choice(pool, size=families * n) + (effect or 0.0), groups) for j in range(pairs)}
        return D.differs(ms, delta=delta).outcome.value

    return run


def _runs_rule(delta: float, families: int, draws: int, claim: str = "LORA-ATLAS") -> Callable:
    """LORA-ATLAS at its unit through the production :func:`engine.studies.lora.decide_atlas`: per family the
    atlas-guided run and ``draws`` random-matched runs under each of ``n`` training seeds, each seed's draws its own
    sets (engine.lora.studies.targeting_study). A layer set has a set effect (SD = delta over random sets), a run a
    run-to-run effect (SD = delta / 2), an example evaluation noise (SD = delta / 4). The atlas-guided set is one
    fixed set, the same under every seed (its set effect enters every seed's run): no effect: its set effect is the
    random sets' mean (the boundary of "no better than a typical random set"; a better-than-typical set is what the
    claim says); delta: the random sets worse by delta on average. (Spreads assumed: no committed run has kept
    per-seed runs yet.) ``claim`` "SKIP-RECOVER": the same runs through :func:`engine.studies.lora.decide_skip`
    (the atlas skip vs each seed's random skips, one member: the mean over family means)."""
    from engine.studies import lora

    per = 3

    def run(rng, n, effect):
        groups = [f"f{i}" for i in range(families) for _ in range(per)]
        e = len(groups)
        sets = rng.normal(0.0, delta, (n, draws, families)).repeat(per, axis=2)  # a fresh set per seed and draw
        random = (sets + (effect or 0.0) + rng.normal(0.0, delta / 2, (n, draws, 1))
                  + rng.normal(0.0, delta / 4, (n, draws, e)))
        atlas = rng.normal(0.0, delta / 2, (n, 1)) + rng.normal(0.0, delta / 4, (n, e))  # set effect 0: the mean
        if claim == "SKIP-RECOVER":
            ev = lora.decide_skip(atlas, random, groups, delta=delta, min_draws=1)
        else:
            ev = lora.decide_atlas(atlas, random, groups, delta=delta, min_seeds=1, min_draws=1)
        return ev.outcome.value

    return run


def _for_every_rule(claim: str, delta: float, members: int, families: int) -> Callable:
    def run(rng, n, effect):
        pool = residual_pool(claim)
        groups = [f"f{i}" for i in range(families) for _ in range(n)]
        # no effect, least favourable: one member at 0, the others far above (4 SD), so only that member can stop a
        # false "for every"; delta: every member at delta
        big = 4.0 * float(np.std(pool, ddof=1))
        shifts = [effect] * members if effect is not None else [0.0] + [big] * (members - 1)
        ms = {f"m{j}": (rng.choice(pool, size=families * n) + shifts[j], groups) for j in range(members)}
        return D.for_every(ms, delta=delta, n_resamples=999).outcome.value

    return run


def _skip_rule(configs: int, families: int, keep: float) -> Callable:
    """SKIP-ALL: per configuration top-5 overlaps (k of 5 tokens kept, binomial) with mean ``keep`` (no effect: the
    claim's threshold exactly) or 0 (the claim: nothing kept); t / betting interval, Holm across configurations."""
    from engine.studies.atlas import skips

    params = {"keep_threshold": keep, "keep_threshold_rationale": "calibration"}

    def run(rng, n, effect):
        p = keep if effect is None else max(keep - effect, 0.0)
        groups = [f"f{i}" for i in range(families) for _ in range(n)]
        overlaps = {f"c{j}": (rng.binomial(5, p, size=families * n) / 5.0).tolist() for j in range(configs)}
        return _outcome(skips.decide_skip("rigorous", overlaps, groups, params, "").holds)

    return run


def _lockin_rule(delta: float, families: int) -> Callable:
    """LOCKIN's claim part: early-checkpoint minus base top-5 overlap with the final atlas, both in {0, .2, .., 1}."""
    from engine.studies import lora

    def run(rng, n, effect):
        base = rng.binomial(5, 0.5, size=families * n) / 5.0
        p = min(0.5 + (effect or 0.0), 1.0)
        ck = rng.binomial(5, p, size=families * n) / 5.0
        groups = [f"f{i}" for i in range(families) for _ in range(n)]
        _, claim = lora.decide_lockin(ck, base, groups, delta=delta, control_delta=delta)
        return claim.outcome.value

    return run


def _lockin_paired_rule(delta: float, families: int, moved: float = 0.2) -> Callable:
    """LOCKIN's claim part as the cpu runs measured it (run 200e01a: the early checkpoint's top-5 equal to the base
    model's on every prompt): paired differences in {-1, .., 1}. No effect: 0 on most prompts, +-0.2 on a ``moved``
    share (mean 0); delta: the least favourable two-point law, 0 or 1 with mean delta (mostly 0, like the null).
    Equal differences take the betting interval, varying ones the stratified t."""
    from engine.studies import lora

    def run(rng, n, effect):
        size = families * n
        if effect is None:
            diff = 0.2 * rng.choice([-1, 0, 1], size=size, p=[moved / 2, 1 - moved, moved / 2])
        else:
            diff = (rng.random(size) < effect).astype(float)  # mean effect, all mass at 0 and 1
        base = np.full(size, 0.4)  # the claim part reads only the differences (the control: 1 - base > 0)
        groups = [f"f{i}" for i in range(families) for _ in range(n)]
        _, claim = lora.decide_lockin(base + diff, base, groups, delta=delta, control_delta=delta)
        return claim.outcome.value

    return run


def _oproj_rule(delta: float, modules: int = 6, sd: float | None = None) -> Callable:
    """LORA-OPROJ at its unit (the training run) through the production :func:`engine.studies.lora.decide_oproj`:
    per training seed each module's run loss = its true gap to o_proj + a run-to-run effect (SD ``sd``, default
    2 delta: run 200e01a's SmolLM2 v_proj - o_proj gaps over seeds 0-2 had SD ~0.095 = 1.9 delta). No effect: one
    module's gap at 0, the others 4 SD above (only it can stop a false "lower than every other"); delta: every
    gap at delta (the claim holds, barely)."""
    from engine.studies import lora

    sd = 2.0 * delta if sd is None else sd
    names = ["o", *lora.OTHER_MODULES[:modules]]
    groups = ["f0", "f1", "f2"]

    def run(rng, n, effect):
        gaps = [0.0] + [4.0 * sd] * (modules - 1) if effect is None else [effect] * modules
        losses = {"o": np.zeros((n, 3))}
        for m, gap in zip(names[1:], gaps):
            losses[m] = (gap + rng.normal(0.0, sd, size=(n, 1))) + np.zeros((n, 3))
        ev = lora.decide_oproj(losses, groups, {m: 1000 for m in names}, delta=delta)
        return ev.outcome.value

    return run


def _late_rule(delta: float, families: int = 3, members: int = 9, sd: float = 0.16) -> Callable:
    """LORA-LATE's "for every other decile" on per-prompt share differences (the last decile's share of the adapter
    effect minus each other decile's; SD ``sd`` per prompt, run 200e01a's Gemma gaps at 30 prompts), Holm over the 9
    other deciles, through :func:`engine.decisions.for_every` as :func:`engine.studies.lora.decide_late` calls it.
    No effect: one decile's gap at 0, the others 4 SD above; delta: every gap at delta."""
    def run(rng, n, effect):
        groups = [f"f{i}" for i in range(families) for _ in range(n)]
        gaps = [0.0] + [4.0 * sd] * (members - 1) if effect is None else [effect] * members
        ms = {f"d{j}": (gap + rng.normal(0.0, sd, size=families * n), groups) for j, gap in enumerate(gaps)}
        return D.for_every(ms, delta=delta).outcome.value

    return run


@lru_cache(maxsize=1)
def rules() -> dict[str, Rule]:
    """Every calibrated rule, keyed by name; ``claims`` lists the catalogue claims (rigorous protocol) it decides."""
    hub_delta = float(_claim_params("HUB-Q05")["hub_delta"])
    steer, quant = _claim_params("STEER-ALL"), _claim_params("QUANT-KL")
    pos, skip, lock = _claim_params("POS-ANSWER"), _claim_params("SKIP-ALL"), _claim_params("LOCKIN")
    own = _claim_params("OWN-ATLAS")
    out = [
        Rule("hub-exists-every-seed:smollm2-135m", ("HUB-Q05", "HUB-Q15", "HUB-Q3", "HUB-SMOL", "HUB-SEEDS"),
             "kl:smollm2-135m", ("atlas", "rigorous_per_family"), hub_delta, _hub_rule("smollm2-135m", False)),
        Rule("hub-exists-every-seed:gemma3-270m", ("HUB-Q05", "HUB-Q15", "HUB-Q3", "HUB-SMOL", "HUB-SEEDS"),
             "kl:gemma3-270m", ("atlas", "rigorous_per_family"), hub_delta, _hub_rule("gemma3-270m", False),
             "the noisier committed KL pool; the conjunction over 3 seeds costs power", powered=False),
        Rule("hub-is-L-every-seed:gemma3-270m", ("HUB-Q05", "HUB-Q15", "HUB-Q3", "HUB-SMOL"), "kl:gemma3-270m",
             ("atlas", "rigorous_per_family"), hub_delta, _hub_rule("gemma3-270m", True),
             "the gpu tier's named layer; the noisier of the two committed KL pools"),
        Rule("hub-same-two-suites", ("HUB-NL",), "kl:gemma3-270m", ("atlas", "rigorous_per_family"), hub_delta,
             _hub_pair_rule("gemma3-270m", "same")),
        Rule("hub-differs-by-breadth", ("HUB-BREADTH",), "kl:gemma3-270m", ("atlas", "rigorous_per_family"),
             hub_delta, _hub_pair_rule("gemma3-270m", "differ"),
             "no effect: the same layer leads by delta in every family (the claim false); delta: the 4 narrow families "
             "lead at another layer by delta (a contrast the 4-family restriction barely resolves)", powered=False),
        Rule("hub-differs-by-breadth-4-family-look", ("HUB-BREADTH",), "kl:gemma3-270m",
             ("atlas", "breadth_per_family"), hub_delta, _breadth_look_rule("gemma3-270m"),
             "the 4-family suite's own look past the 12-family suite's rows (n: its examples per family; the "
             "12-family suite at the full plan's rigorous_per_family); effects as hub-differs-by-breadth's; decided "
             "at the look's own level (the error spent over the plan's 3 looks and this one)",
             powered=False, gates=False),
        Rule("answer-beats-bos-every-layer", ("POS-ANSWER",), "POS-ANSWER residuals", ("atlas", "rigorous_per_family"),
             float(pos["delta"]), _for_every_rule("POS-ANSWER", float(pos["delta"]), 30, 12),
             "Holm over 30 layers; delta 0.05 nats is small against the per-prompt spread", powered=False),
        Rule("skip-below-threshold-every-config", ("SKIP-ALL",), "top-5 overlaps (binomial 5)",
             ("atlas", "rigorous_per_family"), float(skip["keep_threshold"]),
             _skip_rule(8, 12, float(skip["keep_threshold"])), "threshold claim; t where overlaps vary, betting where not; Holm over 8 configurations"),
        Rule("steer-gap", ("STEER-ALL",), "STEER-ALL residuals", ("steer", "n_test"), float(steer["delta"]),
             _greater_rule("STEER-ALL", float(steer["delta"]), None), powered=False),
        Rule("direction-beats-controls", ("STEER-RANDOM", "STEER-TRANSFER"), "STEER-RANDOM residuals",
             ("steer", "n_test"), float(_claim_params("STEER-RANDOM")["delta"]), _controls_rule("STEER-RANDOM", 11),
             "100 random controls drawn per simulation; the percentile's order-statistic CI enters the decision",
             powered=False),
        Rule("quant-ratio", ("QUANT-KL",), "QUANT-KL log-ratio residuals", ("quant", "n_eval"),
             float(np.log1p(float(quant["delta"]))), _greater_rule("QUANT-KL", float(np.log1p(float(quant["delta"]))),
                                                                   None)),
        Rule("threshold-part", ("ABL-MEAN",), "ABL-MEAN zero_ablation_valid residuals", ("atlas", "nl_per_family"),
             float(np.std(residual_pool("ABL-MEAN", "zero_ablation_valid"), ddof=1)),
             _threshold_rule("ABL-MEAN", "zero_ablation_valid", 12),
             "delta = 0 (a threshold); the effect for power: one pooled SD on the claimed side", powered=False),
        Rule("own-atlas-pairs", ("OWN-ATLAS",), "OWN-ATLAS depth-difference residuals", ("atlas", "rigorous_per_family"),
             float(own["depth_tolerance"]), _differs_rule("OWN-ATLAS", float(own["depth_tolerance"]), 1, 12),
             "one pair of cpu models; two-sided, Holm across pairs; against: equivalence within depth_tolerance"),
        Rule("lora-runs-beat-draws", ("LORA-ATLAS",), "normal set and run effects (SD = delta, delta / 2, assumed)",
             ("lora", "n_train_seeds"),
             float(_claim_params("LORA-ATLAS")["delta"]), _runs_rule(float(_claim_params("LORA-ATLAS")["delta"]), 3,
                                                                     _full_lora_draws()),
             "the unit is the training run (n = training seeds, each with the full plan's random draws of its own); "
             "no effect: the atlas-guided set at the random sets' mean set effect", powered=False),
        Rule("skip-runs-beat-draws", ("SKIP-RECOVER",), "normal set and run effects (SD = delta, delta / 2, assumed)",
             ("lora", "n_train_seeds"), float(_claim_params("SKIP-RECOVER")["delta"]),
             _runs_rule(float(_claim_params("SKIP-RECOVER")["delta"]), 3, _full_lora_draws("n_skip_random"),
                        "SKIP-RECOVER"),
             "the unit is the skip + recovery run (n = training seeds, each with the full plan's random skips of its "
             "own); no effect: the atlas skip at the random skips' mean set effect", powered=False),
        Rule("lockin-early-beats-base", ("LOCKIN",), "top-5 overlaps (binomial 5)", ("lora", "lock_per_family"),
             float(lock["delta"]), _lockin_rule(float(lock["delta"]), 3),
             "bounded overlaps: stratified t where they vary, betting where they do not; power 0.58 at 5 per family, "
             "0.93 at 10 (the full cpu plan's size since #30)"),
        Rule("oproj-runs-every-module", ("LORA-OPROJ",), "normal run effects (SD = 2 delta, run 200e01a)",
             ("lora", "n_train_seeds"), float(_claim_params("LORA-OPROJ")["delta"]),
             _oproj_rule(float(_claim_params("LORA-OPROJ")["delta"])),
             "the unit is the training run (t over seeds, Holm over 6 modules); power 0 at 1-3 seeds, so the full "
             "plan runs the default's 1 seed (per_claim: run dedf2f3 projected 24 / 37 seeds, beyond the plan)",
             powered=False),
        Rule("late-decile-every-other", ("LORA-LATE",), "normal per-prompt share gaps (SD 0.16, run 200e01a)",
             ("lora", "n_eval"), float(_claim_params("LORA-LATE")["delta"]), _late_rule(float(_claim_params("LORA-LATE")["delta"])),
             "Holm over the 9 other deciles; the full plan runs it at 20 held-out prompts per family (per_claim)",
             powered=False),
        Rule("lockin-early-beats-base:paired", ("LOCKIN",), "paired overlap differences, mostly 0 (run 200e01a)",
             ("lora", "lock_per_family"), float(lock["delta"]), _lockin_paired_rule(float(lock["delta"]), 3),
             "no effect: 80% of prompts unchanged, 10% each +-0.2; delta: 0 or 1 with mean delta (least favourable); "
             "equal differences take the betting interval", powered=False),
    ]
    return {r.name: r for r in out}


# ------------------------------------------------------------------------------------------------ sizes


def plan_sizes(rule: Rule) -> list[int]:
    """Every n that a plan of plans.toml gives this rule (any tier): examples per family, or for steer / quant the
    total number of test prompts (spread round-robin over the 11 other families: :func:`_shape`)."""
    data = tomllib.loads(PLANS.read_text())["plans"]
    block, key = rule.sizes
    ns = set()
    for plan in data.values():
        for tier in plan.values():
            if not isinstance(tier, Mapping) or block not in tier or (
                    key not in tier[block] and not any(key in f for f in tier[block].get("per_model", {}).values())):
                continue
            if key in tier[block]:
                ns.add(int(tier[block][key]))  # steer / quant: the total prompts (spread over families by _shape)
            for claim, fields in tier[block].get("per_claim", {}).items():  # a claim the plan sizes apart
                if split_claim_key(claim)[0] in rule.claims and key in fields:  # on every model or on one
                    ns.add(int(fields[key]))
            for fields in tier[block].get("per_model", {}).values():  # a model the plan sizes apart
                if key in fields:
                    ns.add(int(fields[key]))
            if key == "rigorous_per_family":  # every sequential look's n below it (each look at a stricter level)
                ns.update(int(n) for n in tier[block].get("stages", []) if n < int(tier[block][key]))
    return sorted(ns)


def _full_lora_draws(field: str = "n_random") -> int:
    return int(tomllib.loads(PLANS.read_text())["plans"][FULL_PLAN]["cpu"]["lora"][field])


def full_plan_n(rule: Rule) -> int:
    """The full cpu plan's n for this rule: its claims' own size where the plan sizes them apart (``per_claim``),
    else the largest of the table's and its models' own (``per_model``)."""
    data = tomllib.loads(PLANS.read_text())["plans"][FULL_PLAN]
    block, key = rule.sizes
    table = data["cpu"][block]
    apart = [int(f[key]) for c, f in table.get("per_claim", {}).items()
             if split_claim_key(c)[0] in rule.claims and key in f]
    if apart:
        return max(apart)
    own = [int(table[key])] if key in table else []
    return max(own + [int(f[key]) for f in table.get("per_model", {}).values() if key in f])


# ------------------------------------------------------------------------------------------------ simulation


def simulate(rule: Rule, n: int, reps: int, seed: int = 0) -> dict[str, float]:
    """P(for | no effect), P(against | delta), P(for | delta) of ``rule`` at ``n`` per family, ``reps`` draws each."""
    rng = np.random.default_rng(seed)
    null = [rule.run(rng, n, None) for _ in range(reps)]
    at_delta = [rule.run(rng, n, rule.delta) for _ in range(reps)]
    per_family = _shape(n)[1] if rule.sizes[0] in ("steer", "quant") else n
    return {"n": n, "per_family": per_family, "reps": reps, "false_confirm": null.count("for") / reps,
            "false_fail": at_delta.count("against") / reps, "power": at_delta.count("for") / reps}


def holds(rate: Mapping[str, float]) -> bool:
    """The bounds at this n: P(false CONFIRMED) <= 5% and P(false FAILED) <= 5% as measured."""
    return rate["false_confirm"] <= BOUND and rate["false_fail"] <= BOUND


def rates(reps: int = 400, names: list[str] | None = None) -> dict[str, Any]:
    out = {}
    for name, rule in rules().items():
        if names and name not in names:
            continue
        if rule.data == "not simulated":
            out[name] = {"claims": list(rule.claims), "data": rule.data, "delta": rule.delta, "note": rule.note,
                         "sizes_from": f"plans.*.*.{rule.sizes[0]}.{rule.sizes[1]}", "full_plan_n": full_plan_n(rule),
                         "rates": [], "min_n": None, "powered": False}
            continue
        table = [simulate(rule, n, reps, seed=n) for n in plan_sizes(rule)]
        # min_n in examples per family (what the Recorder compares): the smallest per-family n at and above which
        # every planned size held both bounds
        per = sorted({r["per_family"] for r in table})
        above = [p for p in per if all(holds(r) for r in table if r["per_family"] >= p)]
        out[name] = {"claims": list(rule.claims), "data": rule.data, "delta": rule.delta, "note": rule.note,
                     "sizes_from": f"plans.*.*.{rule.sizes[0]}.{rule.sizes[1]}", "full_plan_n": full_plan_n(rule),
                     "rates": table, "min_n": min(above) if above else None, "powered": rule.powered,
                     **({} if rule.gates else {"gates": False})}
    return out


def write_table(reps: int = 400, only: list[str] | None = None) -> Path:
    """Write the rates table; ``only``: re-simulate these rules and keep the committed entries of the others."""
    from engine.provenance import engine_identity

    kept = {k: v for k, v in D.calibration_table().get("rules", {}).items() if only and k not in only}

    table = {"about": "P(false CONFIRMED | no effect), P(false FAILED | delta) and power P(CONFIRMED | delta) of each "
                      "rule as the claims use it, at every per-family n that a plan uses (engine/calibration.py); "
                      "min_n: the smallest n at and above which both measured error rates held 5%",
             "source_run": str(SOURCE_RUN.relative_to(ROOT)), "atlas_pool": str(ATLAS_POOL.relative_to(ROOT)),
             "reps": reps, "engine": engine_identity(),
             "rules": {k: v for k, v in {**kept, **rates(reps, only)}.items() if k in rules()}}
    by_claim: dict[str, list[str]] = {}
    for name, entry in table["rules"].items():
        for claim in entry["claims"]:
            by_claim.setdefault(claim, []).append(name)
    table["claims"] = by_claim
    D.CALIBRATION_TABLE.write_text(json.dumps(D._plain(table), indent=1) + "\n")
    D.calibration_table.cache_clear()
    return D.CALIBRATION_TABLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.calibration", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write engine/data/calibration.json")
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--only", action="append", help="re-simulate only this rule (repeatable), keep the others")
    args = parser.parse_args(argv)
    if args.write:
        print(write_table(args.reps, args.only))
    else:
        print(json.dumps(D._plain(rates(args.reps)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
