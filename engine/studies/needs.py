"""What each claim measures (the planner's declarations, :mod:`engine.planner`), block by block.

One function per claim or group of claims: ``(model, tier, params) -> [Need, ...]`` for one model with the plan's
sizes (``engine/data/plans.toml`` through each block's ``sizes_for``). The needs name the same measurements the
procedures request (``tests/test_planner.py`` checks them against the last smoke run's ledger), so the plan shows
before anything runs which claims share which measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine import plans, tasks
from engine.planner import Dynamic, Need, declares

# ------------------------------------------------------------------------------------------------ atlas


def _atlas_sizes(tier: str, params: Mapping[str, Any]):
    from engine.studies import atlas as A

    return A.sizes_for(tier, params)


def _families(sizes) -> int:
    return len(sizes.families or tasks.FAMILIES)


def _seed_sweep(model: str, sizes, suite: str = "synthetic", positions: str = "all") -> Need:
    """The seed protocol's residual zeroing on the first k per family (``common.seed_atlas``)."""
    return Need(model, "atlas", f"seed first-k {suite}", sizes.seed_per_family * _families(sizes), "zero/resid",
                positions)


def _rigorous(model: str, sizes, seed: int, method: str = "zero", component: str = "layer", suite="synthetic",
              positions: str = "all") -> Need:
    """``common.rigorous_atlas``: that seed's stratified sample."""
    per = sizes.nl_per_family if suite == "nl" else sizes.rigorous_per_family
    return Need(model, "atlas", f"{suite} seed {seed}", per * _families(sizes), f"{method}/{component}", positions)


def _robustness(model: str, sizes) -> list[Need]:
    """``common.robustness_figures``: mean and resample ablation of the contribution on seed 42's sample."""
    from engine.studies.atlas.common import ROBUSTNESS_METHODS

    return [_reported(model, sizes, m) for m in ROBUSTNESS_METHODS]


def _reported(model: str, sizes, method: str = "zero", component: str = "layer", positions: str = "all") -> Need:
    """``common.reported_atlas``: seed 42's sample, or its first ``reported_per_family`` per family."""
    from engine.studies.atlas.common import SEEDS

    k = sizes.reported_per_family
    if k is None:
        return _rigorous(model, sizes, SEEDS[0], method=method, component=component, positions=positions)
    return Need(model, "atlas", f"synthetic seed {SEEDS[0]} first {k}/family", k * _families(sizes),
                f"{method}/{component}", positions)


@declares("HUB-Q05", "HUB-Q15", "HUB-Q3", "HUB-SMOL", "HUB-SEEDS")
def _hub(model: str, tier: str, params: Mapping[str, Any]) -> list[Need]:
    from engine.studies.atlas.common import SEEDS

    sizes = _atlas_sizes(tier, params)
    return [_seed_sweep(model, sizes)] + [_rigorous(model, sizes, s) for s in SEEDS] + _robustness(model, sizes)


@declares("HUB-NL")
def _hub_nl(model: str, tier: str, params: Mapping[str, Any]) -> list[Need]:
    from engine.studies.atlas.common import SEEDS

    sizes = _atlas_sizes(tier, params)
    return [_seed_sweep(model, sizes), _seed_sweep(model, sizes, "nl"), _rigorous(model, sizes, SEEDS[0]),
            _rigorous(model, sizes, SEEDS[0], suite="nl")] + _robustness(model, sizes)


@declares("HUB-BREADTH", "OWN-ATLAS")
def _one_seed(model: str, tier: str, params: Mapping[str, Any]) -> list[Need]:
    from engine.models import spec_for
    from engine.studies.atlas.common import SEEDS

    sizes = _atlas_sizes(spec_for(model).tier if tier == "cpu" else tier, params)
    return [_seed_sweep(model, sizes), _rigorous(model, sizes, SEEDS[0])] + _robustness(model, sizes)


@declares("HUB-CODER", "HUB-MIGRATE")
def _cpu_untested(model: str, tier: str, params: Mapping[str, Any]) -> list[Need]:
    """UNTESTED on the cpu tier (no coder/base pair, one size per family): nothing measured there."""
    if tier != "gpu":
        return []
    return _one_seed(model, tier, params)


@declares("POS-ANSWER")
def _positions(model: str, tier: str, params: Mapping[str, Any]) -> list[Need]:
    from engine.studies.atlas.common import SEEDS

    sizes = _atlas_sizes(tier, params)
    return [_seed_sweep(model, sizes, positions="last3"), _seed_sweep(model, sizes, positions="first")] + [
        _rigorous(model, sizes, SEEDS[0], component="resid", positions=p) for p in ("[-2]", "first")] + [
        _reported(model, sizes, component="resid", positions="answer")]


@declares("ABL-MEAN")
def _abl_mean(model: str, tier: str, params: Mapping[str, Any]) -> list[Need]:
    from engine.interventions import methods
    from engine.studies.atlas.common import SEEDS

    sizes = _atlas_sizes(tier, params)
    seed_n = sizes.seed_per_family * _families(sizes)
    nl_n = sizes.nl_per_family * _families(sizes)
    return [Need(model, "seed-mean-hook", "seed first-k synthetic", min(seed_n, sizes.noop_examples)),
            _seed_sweep(model, sizes), Need(model, "residual-mean-ratios", "seed first-k synthetic", seed_n),
            Need(model, "residual-mean-ratios", f"nl seed {SEEDS[0]}", nl_n)] + [
        _rigorous(model, sizes, SEEDS[0], method=m, suite="nl") for m in methods.names()]


@declares("SKIP-ALL")
def _skip_all(model: str, tier: str, params: Mapping[str, Any]) -> list[Need]:
    from engine.studies.atlas.common import SEEDS

    sizes = _atlas_sizes(tier, params)
    return [Need(model, "skip-overlaps", "seed first-k synthetic", sizes.seed_per_family * _families(sizes), "resid"),
            Need(model, "skip-overlaps", f"synthetic seed {SEEDS[0]}", sizes.rigorous_per_family * _families(sizes),
                 "layer")]


# ------------------------------------------------------------------------------------------------ steer, quant


@declares("STEER-ALL", "STEER-RANDOM")
def _steer(model: str, tier: str, params: Mapping[str, Any]) -> list[Need]:
    return [Need(model, "steer-study-v2", "the steer plan's prompts")]


@declares("STEER-TRANSFER", per_member=False)
def _steer_transfer(models: list[str], tier: str, params: Mapping[str, Any]) -> list[Need]:
    """The source model's (the target's first member) steering study and the mapped transfer."""
    return [Need(models[0], "steer-study-v2", "the steer plan's prompts"), Need("", "steer-transfer-v2", "mapped")]


@declares("QUANT-KL", "QUANT-SPEED")
def _quant(model: str, tier: str, params: Mapping[str, Any]) -> list[Need]:
    from engine.studies.quant import QuantSizes

    sizes = plans.load("quant", QuantSizes, "gpu" if tier == "gpu" else "cpu", params)
    return [Need(model, "quant-study-v2", "the quant plan's prompts", sizes.n_eval)]


# ------------------------------------------------------------------------------------------------ lora

_LORA_DYNAMIC = "trainings and evaluations follow the layers the model's atlas picks (and the random draws)"


@declares("LORA-ATLAS", "LORA-OPROJ", "LORA-LATE", "LOCKIN", "SKIP-RECOVER")
def _lora(model: str, tier: str, params: Mapping[str, Any]) -> Dynamic:
    """The LoRA block: what it trains is decided by the model's atlas at run time (LORA-ATLAS reads the atlas
    block's seed-42 atlas, ``engine.studies.lora.model_atlas``)."""
    return Dynamic((), _LORA_DYNAMIC)
