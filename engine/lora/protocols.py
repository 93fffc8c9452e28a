"""The LoRA block's claims as measurements: one plan per tier, one bench per model that runs and shares them.

A :class:`LoraPlan` fixes what the measurements cost: the task families and sample sizes, the training budget
(steps, batch, learning rate, sequence length), the number of random draws, the checkpoint fractions and the
atlas prompts. The plans are data: ``[plans.<plan>.<tier>.lora]`` in ``engine/data/plans.toml``, read by
``plan_for(tier, params)`` (``CPU_PLAN`` / ``GPU_PLAN`` hold the default plan). The cpu plan is sized for the cpu
tier's budget (the whole lora block on SmolLM2-135M and Gemma-3-270M within 20 minutes on 2 cores); the gpu plan is
the seed's own setting (r=8, alpha=16, AdamW lr 2e-4, linear schedule, 10 warm-up steps, 100 steps, 5-6 training
examples per family, 256 tokens). A claim's ``[claim.params]`` may override any field (the rule of
:func:`engine.plans.override`: a key named like a field, or a ``cpu`` / ``gpu`` sub-table for one tier).

The claims' decision rules on a bench's measurements are :mod:`engine.studies.lora`.

A :class:`LoraBench` holds one model and a plan and computes each claim's measurement once, sharing what claims
have in common: the training/held-out examples, the model's own atlas (layer contribution removed: the rigorous
importance) and the seed's atlas (residual zeroed), and the all-linear adapter trained with checkpoints (used by
LORA-ATLAS, LORA-LATE, LOCKIN and as SKIP-RECOVER's reference). Training runs are cached by content on disk.

Seed vs rigorous, per claim (``seed-protocols.md``; the decisions are :mod:`engine.studies.lora`):

* LORA-ATLAS: seed = layers [2, 7, 9] (clipped) vs one random draw (seed 42), one training seed, padding labels
  unmasked, final training loss; rigorous = top-k of the model's own atlas vs ``n_random`` random-matched draws,
  ``n_train_seeds`` training seeds, held-out loss.
* LORA-OPROJ: seed = rank r for every module, training loss, loss reduction per parameter; rigorous = ranks
  matched to o_proj's parameter count (within 5%), every training seed, held-out loss.
* LORA-LATE: the all-linear adapter's per-layer effect, share per depth decile per example: training prompts
  (seed) or held-out prompts (rigorous).
* LOCKIN (G3) and SKIP-RECOVER (G4): the seed never ran these blocks, so only the rigorous protocol measures:
  per-prompt own atlases of the checkpoints and the base model (LOCKIN); the own-atlas skip vs ``n_skip_random``
  random skips per training seed (SKIP-RECOVER, :class:`~engine.lora.studies.SkipStudy`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from dataclasses import dataclass
from functools import cached_property

from engine import plans
from engine.models import LoadedModel
from engine.tasks import FAMILIES, Example, sample, suite_hash

from .adapters import ALL_LINEAR, LoraTarget
from .analysis import Localisation, LockIn, localise, lock_in
from .studies import ModuleSweep, SkipStudy, TargetingStudy, module_sweep, skip_study, targeting_study
from .training import LoraRun, TrainConfig, train_cached

LORA_FAMILIES = ("json_schema", "factual_recall", "code_syntax")  # the seed's three LoRA task families


@plans.sizes_of("lora")
@dataclass(frozen=True)
class LoraPlan:
    """Sizes and budgets of the LoRA block's measurements (see the module docstring)."""

    tier: str
    families: tuple[str, ...] = LORA_FAMILIES
    split: str = "short"
    n_train: int = 4  # training examples per family
    n_eval: int = 3  # held-out examples per family (disjoint from the training ones)
    data_seed: int = 0
    max_len: int | None = 40  # prompt tokens beyond this are cut from the left (the target is always kept)
    steps: int = 12
    batch_size: int = 4
    lr: float = 2e-3
    warmup_steps: int = 2
    train_seed: int = 0
    n_train_seeds: int = 1  # training seeds train_seed, train_seed + 1, ... (LORA-ATLAS's rule needs >= 3)
    r: int = 8
    alpha: int = 16
    k: int = 3  # atlas-guided / random-matched layers
    n_random: int = 3  # random-matched draws (rigorous; the rule needs >= 10); the first is the seed's draw
    checkpoints: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    sweep_modules: tuple[str, ...] = ("o", "v", "q", "k", "gate", "up", "down")
    atlas_per_family: int = 1  # the model's own atlas: this many prompts of each of the 12 families
    lock_per_family: int = 2  # LOCKIN's per-checkpoint atlases: held-out prompts of the LoRA families
    skip_fraction: float = 0.1  # SKIP-RECOVER skips this share of the layers (at least 1)
    n_skip_random: int = 2  # random skips of the same count per training seed (SKIP-RECOVER's rule needs >= 10)
    generate: bool = True  # greedy generation scored by the suite (held-out) for LORA-ATLAS
    name: str = plans.DEFAULT_PLAN  # the plan of engine/data/plans.toml this was read from (set by the loader)

    @property
    def train_seeds(self) -> tuple[int, ...]:
        return tuple(range(self.train_seed, self.train_seed + self.n_train_seeds))

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
                           seed=self.train_seed, max_len=self.max_len, checkpoints=self.checkpoints)

    def with_params(self, params: Mapping | None) -> "LoraPlan":
        """A copy with the fields named in ``params`` replaced (unknown names are ignored: they are rule
        thresholds read by the claims' procedures; ``tier`` and ``name`` are never replaced)."""
        return plans.override(self, None, params)

    def describe(self) -> dict:
        return {"tier": self.tier, "families": list(self.families), "n_train_per_family": self.n_train,
                "n_eval_per_family": self.n_eval, "steps": self.steps, "batch_size": self.batch_size, "lr": self.lr,
                "warmup_steps": self.warmup_steps, "max_len": self.max_len, "r": self.r, "alpha": self.alpha,
                "train_seeds": list(self.train_seeds), "data_seed": self.data_seed}


def plan_for(tier: str, params: Mapping | None = None, plan: str | None = None, claim: str | None = None,
             model: str | None = None) -> LoraPlan:
    """The tier's plan (``cpu`` | ``gpu``) from ``engine/data/plans.toml``, with the plan's fields for ``claim``
    alone (``per_claim``), then for ``claim`` on ``model`` alone (``per_claim."CLAIM-ID[model]"``), and a claim's
    ``[claim.params]`` overrides applied (flat keys named like a field, then the ``params[tier]`` sub-table)."""
    return plans.load("lora", LoraPlan, tier, params, plan=plan, claim=claim, model=model)


PLANS = {tier: plan_for(tier) for tier in plans.TIERS}  # the default plan
CPU_PLAN, GPU_PLAN = PLANS["cpu"], PLANS["gpu"]


def split_examples(plan: LoraPlan) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples: stratified samples of the plan's families; held-out ids never train."""
    train = sample(list(plan.families), per_family=plan.n_train, seed=plan.data_seed, split=plan.split)
    seen = {ex.id for ex in train}
    pool = sample(list(plan.families), per_family=plan.n_train + plan.n_eval, seed=plan.data_seed + 1,
                  split=plan.split)
    held: list[Example] = []
    for family in plan.families:
        held.extend([ex for ex in pool if ex.family == family and ex.id not in seen][:plan.n_eval])
    return train, held


class LoraBench:
    """One model's LoRA measurements under a plan, each computed once (see the module docstring)."""

    def __init__(self, lm: LoadedModel, plan: LoraPlan, *, atlas: Callable[[LoadedModel], Any] | None = None):
        """``atlas(lm)``: the model's atlas the layer choice reads (default: :meth:`own_atlas` on
        ``atlas_per_family`` prompts); the claims pass the atlas block's rigorous atlas of the same plan, so the
        hub claims and LORA-ATLAS share one measurement."""
        self.lm = lm
        self.plan = plan
        self._atlas = atlas
        self.config = plan.train_config()
        self._loc: dict[str, Localisation] = {}
        self._lock: dict[int, LockIn] = {}

    # ----- data and atlases

    @cached_property
    def examples(self) -> tuple[list[Example], list[Example]]:
        return split_examples(self.plan)

    @property
    def train_examples(self) -> list[Example]:
        return self.examples[0]

    @property
    def eval_examples(self) -> list[Example]:
        return self.examples[1]

    @cached_property
    def atlas_examples(self) -> list[Example]:
        return sample(list(FAMILIES), per_family=self.plan.atlas_per_family, seed=self.plan.data_seed,
                      split=self.plan.split)

    def own_atlas(self, lm: LoadedModel | None = None, examples: list[Example] | None = None):
        """The rigorous atlas: each layer's contribution removed (output := input), KL at the answer position."""
        from engine.atlas import atlas

        return atlas(lm or self.lm, examples or self.atlas_examples, method="zero", component="layer", cache=True)

    @cached_property
    def importance(self) -> list[float]:
        chosen = self._atlas(self.lm) if self._atlas is not None else self.own_atlas()
        return [float(v) for v in chosen.layer_effect]

    def common_figures(self) -> dict:
        return {**self.plan.describe(), "suite_train": suite_hash(self.train_examples)[:12],
                "suite_eval": suite_hash(self.eval_examples)[:12]}

    # ----- shared adapter

    @cached_property
    def all_linear(self) -> LoraRun:
        """The all-linear adapter (every layer, q/k/v/o/gate/up/down) with checkpoints."""
        target = LoraTarget(tuple(range(self.lm.n_layers)), ALL_LINEAR, self.plan.r, self.plan.alpha,
                            label="all-linear")
        return train_cached(self.lm, self.train_examples, target, self.config)

    # ----- claims

    @cached_property
    def targeting(self) -> TargetingStudy:
        _ = self.all_linear  # trained with checkpoints first, so the study's all-linear run is the shared one
        return targeting_study(self.lm, self.train_examples, self.eval_examples, importance=self.importance,
                               config=self.config, k=self.plan.k, n_random=self.plan.n_random,
                               seeds=self.plan.train_seeds, r=self.plan.r, alpha=self.plan.alpha,
                               generate=self.plan.generate, random_seed=self.plan.data_seed)

    @cached_property
    def sweep(self) -> ModuleSweep:
        return module_sweep(self.lm, self.train_examples, self.eval_examples, config=self.config,
                            modules=self.plan.sweep_modules, r=self.plan.r, alpha=self.plan.alpha,
                            seeds=self.plan.train_seeds)

    def localisation(self, protocol: str) -> Localisation:
        """The all-linear adapter's per-layer effect: training prompts (seed) or held-out prompts (rigorous)."""
        if protocol not in self._loc:
            from engine.cache import measured

            from .adapters import adapted, adapter_digest

            examples = self.train_examples if protocol == "seed" else self.eval_examples

            def compute() -> dict:
                with adapted(self.lm, self.all_linear) as alm:
                    return localise(alm, examples).to_dict()

            from engine import executors

            remote = executors.remote(localise_json, self.lm, list(examples), self.all_linear,
                                      label=f"lora-localise {self.lm.key}")
            # keyed on the base model and the adapter's own weights, so a hit attaches nothing
            data = measured("lora-localise", self.lm, examples, compute, remote=remote,
                            adapter=adapter_digest(self.all_linear.state))
            self._loc[protocol] = Localisation(**data)
        return self._loc[protocol]

    @cached_property
    def lock_prompts(self) -> list[Example]:
        """LOCKIN's atlas prompts: ``lock_per_family`` prompts per LoRA family that the adapter never trained on."""
        train_ids = {ex.id for ex in self.train_examples}
        pool = sample(list(self.plan.families), per_family=self.plan.lock_per_family + self.plan.n_train,
                      seed=self.plan.data_seed + 2, split=self.plan.split)
        out: list[Example] = []
        for family in self.plan.families:
            out.extend([ex for ex in pool if ex.family == family and ex.id not in train_ids][:self.plan.lock_per_family])
        return out

    def lock(self, k: int) -> LockIn:
        """Per-prompt own atlases (layer contribution removed) of each checkpoint of the all-linear adapter, of
        the final one and of the base model, on :attr:`lock_prompts`, compared by top-``k`` overlap (LOCKIN's
        ``top_k``)."""
        if k not in self._lock:
            prompts = self.lock_prompts

            def importance(alm):
                return self.own_atlas(alm, prompts).per_example

            self._lock[k] = lock_in(self.lm, self.all_linear, importance, k=k, threshold=1.0)
        return self._lock[k]

    @cached_property
    def skip(self) -> SkipStudy:
        _ = self.all_linear
        k = max(1, round(self.plan.skip_fraction * self.lm.n_layers))
        return skip_study(self.lm, self.train_examples, self.eval_examples, importance=self.importance,
                          config=self.config, k=k, n_random=self.plan.n_skip_random, seeds=self.plan.train_seeds,
                          r=self.plan.r,
                          alpha=self.plan.alpha, random_seed=self.plan.data_seed)


def localise_json(lm, examples, run) -> dict:
    """The cached payload of ``LoraBench.localisation``, computed in this process (a measurement executor's worker)."""
    from .adapters import adapted

    with adapted(lm, run) as alm:
        return localise(alm, examples).to_dict()
