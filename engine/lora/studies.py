"""The LoRA block's measurements, each under the seed protocol and the rigorous one (seed-protocols.md).

Every study keeps the per-example values its claim's decision resamples (``engine.studies.lora`` decides with
``engine.decisions``): examples are the units, grouped by task family; training seeds and random draws are
averaged per example, except LORA-ATLAS's runs, each its own unit (the rule's minimum numbers of seeds and draws are
checked by the decision).

* :func:`targeting_study` (LORA-ATLAS): atlas-guided vs random-matched vs all-linear adapters, trained on a
  mix of task families. Seed protocol: layers [2, 7, 9] (clipped), one random draw (seed 42), modules
  o/up/down, one training seed, padding labels unmasked (as the seed trained), metric = final training loss
  per training example. Rigorous: top-k layers of the model's own atlas trained with every training seed, and
  ``n_random`` random-matched draws per training seed (each seed's own, never shared), held-out loss per example.
* :func:`module_sweep` (LORA-OPROJ): one module type alone on every layer. Seed: rank r for every module (so
  parameter counts differ), padding unmasked, training loss, loss reduction per parameter. Rigorous: the rank
  of each module chosen so that parameter counts match o_proj's within 5% (:func:`~.adapters.matched_ranks`),
  every training seed, held-out loss per example.
* :func:`skip_study` (SKIP-RECOVER): skip the k least important layers of the model's own atlas vs ``n_random``
  random skips of the same count per training seed (each seed's its own), recover each with the same finetune,
  held-out loss per example.

Every training run goes through :func:`~engine.lora.training.train_cached`, so runs shared by claims (the
all-linear adapter for LORA-ATLAS, LORA-LATE, LOCKIN and SKIP-RECOVER's reference) are trained once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.models import LoadedModel
from engine.tasks import Example

from .adapters import (
    ALL_LINEAR,
    MODULE_GROUPS,
    LoraError,
    LoraTarget,
    adapted,
    atlas_layers,
    least_important_layers,
    matched_ranks,
    random_draws,
    random_layers,
    seed_layers,
)
from .analysis import Recovery, skip_recover
from .evaluation import EvalResult, evaluate, evaluate_cached
from .training import LoraRun, TrainConfig, train, train_cached

FAMILY_SHORT = {"json_schema": "json", "factual_recall": "factual", "code_syntax": "code"}
MODULE_LEAF = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
               "down": "down_proj"}
SEED_RANDOM_SEED = 42


def short(family: str) -> str:
    """Figure-name form of a family ("json_schema" -> "json")."""
    return FAMILY_SHORT.get(family, family)


def seed_config(config: TrainConfig) -> TrainConfig:
    """The seed protocol's training: the same budget, padding labels unmasked, the first training seed."""
    return dataclasses.replace(config, pad_labels=True)


@dataclass
class Outcome:
    """One trained adapter, evaluated on its training examples (seed metric) and held-out ones (rigorous)."""

    name: str
    run: LoraRun
    train_eval: EvalResult
    heldout: EvalResult

    def summary(self) -> dict:
        return {"name": self.name, "layers": list(self.run.target.layers), "modules": list(self.run.target.modules),
                "params": self.run.params.trainable, "param_pct": self.run.params.percent,
                "final_step_loss": self.run.final_loss(), "train": self.train_eval.by_family(),
                "heldout": self.heldout.by_family(), "seconds": self.run.seconds}


def run_outcome(lm: LoadedModel, name: str, target: LoraTarget, train_examples: Sequence[Example],
                eval_examples: Sequence[Example], config: TrainConfig, *, generate: bool = False,
                cache: bool = True) -> Outcome:
    """Train (or fetch) the adapter and evaluate it on the training and the held-out examples."""
    run = (train_cached if cache else train)(lm, train_examples, target, config)
    kwargs = dict(template=config.template, append_eos=config.append_eos, max_len=config.max_len)
    if not cache:
        with adapted(lm, run) as alm:
            return Outcome(name=name, run=run, train_eval=evaluate(alm, train_examples, **kwargs),
                           heldout=evaluate(alm, eval_examples, generate=generate, **kwargs))
    return Outcome(name=name, run=run, train_eval=evaluate_cached(lm, train_examples, run=run, **kwargs),
                   heldout=evaluate_cached(lm, eval_examples, run=run, generate=generate, **kwargs))


def families_of(result: EvalResult) -> list[str]:
    """The family of each evaluated example, in order (the groups of a decision)."""
    return [s.family for s in result.scores]


# ------------------------------------------------------------------------------------------------ LORA-ATLAS


@dataclass
class TargetingStudy:
    """LORA-ATLAS's runs: ``outcomes[name]`` is one :class:`Outcome` per training seed (``seeds``) for ``atlas``;
    ``random-<j>`` is one run, under seed ``j // per_seed`` (each seed's draws are its own); the seed protocol's
    ``seed-layers`` / ``seed-random`` have one (the first seed, padding labels unmasked)."""

    model: str
    n_layers: int
    families: list[str]
    k: int
    modules: tuple[str, ...]
    config: TrainConfig
    seeds: list[int]
    importance: list[float] | None
    base_train: EvalResult
    base_heldout: EvalResult
    outcomes: dict[str, list[Outcome]]
    random_names: list[str]
    n_train: int
    n_eval: int

    def losses(self, protocol: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(atlas [n_seeds, n_examples], random [n_seeds, n_draws, n_examples], families of the examples):
        final training loss per training example (seed) or held-out loss per example (rigorous)."""
        if protocol == "seed":
            atlas, rand = self.outcomes["seed-layers"], [self.outcomes["seed-random"]]
            pick = (lambda o: o.train_eval)
        else:
            atlas, rand = self.outcomes["atlas"], [self.outcomes[n] for n in self.random_names]
            pick = (lambda o: o.heldout)
        a = np.asarray([pick(o).losses() for o in atlas])
        if protocol == "seed":
            r = np.asarray([[pick(draw[i]).losses() for draw in rand] for i in range(len(atlas))])
        else:  # draw d of seed i is random-(i * per_seed + d), trained under that seed only
            per_seed = len(rand) // len(atlas)
            r = np.asarray([[pick(rand[i * per_seed + d][0]).losses() for d in range(per_seed)]
                            for i in range(len(atlas))])
        return a, r, families_of(pick(atlas[0]))

    def figures(self, protocol: str) -> dict:
        """Per-family mean losses of each strategy, parameter counts, layers (catalogue names: atlas_json_loss,
        random_json_loss, all_linear_params, param_ratio, ...)."""
        a, r, groups = self.losses(protocol)
        seed = protocol == "seed"
        atlas = self.outcomes["seed-layers" if seed else "atlas"][0]
        linear = self.outcomes["all-linear"][0]
        names = ["seed-random"] if seed else self.random_names
        cfg = self.config
        figures = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "warmup_steps": cfg.warmup_steps,
                   "r": atlas.run.target.r, "alpha": atlas.run.target.alpha, "n_train": self.n_train,
                   "n_eval": self.n_eval, "families": self.families, "modules": list(self.modules), "k": self.k,
                   "training_seeds": self.seeds[:1] if seed else self.seeds, "n_training_seeds": a.shape[0],
                   "n_random_draws": r.shape[1], "padding_labels": "unmasked (the seed's)" if seed else "masked",
                   "metric": ("final training loss per training example" if seed else "held-out loss per example"),
                   "atlas_params": atlas.run.params.trainable, "atlas_param_pct": atlas.run.params.percent,
                   "atlas_layers": list(atlas.run.target.layers),
                   "random_params": self.outcomes[names[0]][0].run.params.trainable,
                   "random_layer_draws": [list(self.outcomes[n][0].run.target.layers) for n in names],
                   "all_linear_params": linear.run.params.trainable, "all_linear_param_pct": linear.run.params.percent,
                   "param_ratio": linear.run.params.trainable / atlas.run.params.trainable,
                   "train_seconds": sum(o.run.seconds for runs in self.outcomes.values() for o in runs)}
        if seed:
            figures["random_layers"] = figures["random_layer_draws"][0]
        groups_arr = np.asarray(groups)
        base = self.base_train if seed else self.base_heldout
        for family in self.families:
            name, mask = short(family), groups_arr == family
            figures[f"atlas_{name}_loss"] = float(a[:, mask].mean())
            figures[f"random_{name}_loss"] = float(r[:, :, mask].mean())
            figures[f"random_{name}_losses"] = [float(v) for v in r[:, :, mask].mean(axis=2).reshape(-1)]  # per run
            figures[f"base_{name}_loss"] = base.loss(family)
            figures[f"all_linear_{name}_loss"] = (linear.train_eval if seed else linear.heldout).loss(family)
            figures[f"atlas_{name}_exact"] = atlas.heldout.tf_exact(family)
            figures[f"random_{name}_exact"] = float(np.mean([self.outcomes[n][0].heldout.tf_exact(family)
                                                             for n in names]))
            figures[f"all_linear_{name}_exact"] = linear.heldout.tf_exact(family)
            if atlas.heldout.generated and linear.heldout.generated:
                figures[f"atlas_{name}_accuracy"] = atlas.heldout.accuracy(family)
                figures[f"all_linear_{name}_accuracy"] = linear.heldout.accuracy(family)
        return figures


def targeting_study(lm: LoadedModel, train_examples: Sequence[Example], eval_examples: Sequence[Example], *,
                    importance: Sequence[float] | None, config: TrainConfig, k: int = 3, n_random: int = 4,
                    seeds: Sequence[int] = (0,), modules: Sequence[str] = MODULE_GROUPS["seed"], r: int = 8,
                    alpha: int = 16, generate: bool = True, random_seed: int = 0, cache: bool = True,
                    protocols: Sequence[str] = ("seed", "rigorous")) -> TargetingStudy:
    """Train and evaluate the strategies each protocol needs.

    Seed: ``seed-layers`` ([2, 7, 9] clipped) and ``seed-random`` (k layers, ``random.Random(42)``), first seed,
    padding labels unmasked. Rigorous: ``atlas`` (top-k of ``importance``) trained with every seed, and
    ``n_random`` random-matched draws per seed, each trained under its seed only (``n_random * len(seeds)``
    distinct draws, the seed's draw first: seed i's are ``random-(i * n_random) ..``). ``all-linear`` (first seed) for the
    parameter ratio and the exact-match figures; greedy generation (``generate``) only for atlas and all-linear.
    """
    modules = tuple(modules)
    seeds = [int(s) for s in seeds]
    families = list(dict.fromkeys(ex.family for ex in train_examples))
    n = lm.n_layers
    kwargs = dict(template=config.template, append_eos=config.append_eos, max_len=config.max_len)
    base_train = evaluate(lm, train_examples, **kwargs)
    base_heldout = evaluate(lm, eval_examples, **kwargs)
    first = dataclasses.replace(config, seed=seeds[0])
    plan: dict[str, tuple[LoraTarget, list[TrainConfig], bool]] = {
        "all-linear": (LoraTarget(tuple(range(n)), ALL_LINEAR, r, alpha, label="all-linear"), [first], generate)}
    random_names: list[str] = []
    if "seed" in protocols:
        s_cfg = [seed_config(first)]
        plan["seed-layers"] = (LoraTarget(seed_layers(n), modules, r, alpha, label="seed-layers"), s_cfg, False)
        plan["seed-random"] = (LoraTarget(random_layers(n, len(seed_layers(n)), SEED_RANDOM_SEED), modules, r, alpha,
                                          label="seed-random"), s_cfg, False)
    if "rigorous" in protocols:
        if importance is None:
            raise ValueError("targeting_study: the rigorous protocol needs the per-layer importance")
        chosen = atlas_layers(importance, k)
        configs = [dataclasses.replace(config, seed=s) for s in seeds]
        plan["atlas"] = (LoraTarget(chosen, modules, r, alpha, label="atlas"), configs, generate)
        seed_draw = random_layers(n, k, SEED_RANDOM_SEED)
        start = [seed_draw] if seed_draw != chosen else []
        # each training seed gets draws of its own (distinct sets, none shared across seeds): the seeds' ranks are
        # then independent runs, combined across seeds (catalogue v3: the unit is the training run)
        draws = random_draws(n, k, n_random * len(seeds), seed=random_seed, first=start, avoid=[chosen])
        per_seed = len(draws) // len(seeds)
        if per_seed < 1:
            raise LoraError(f"targeting_study: {lm.key} has {len(draws)} random {k}-layer set(s) besides the atlas's, "
                            f"fewer than its {len(seeds)} training seeds (fewer seeds, or a smaller k)")
        for index, layers in enumerate(draws[:per_seed * len(seeds)]):
            name = f"random-{index}"
            plan[name] = (LoraTarget(layers, modules, r, alpha, label=name), [configs[index // per_seed]], False)
            random_names.append(name)
    outcomes = {name: [run_outcome(lm, name, target, train_examples, eval_examples, c, generate=gen, cache=cache)
                       for c in cfgs] for name, (target, cfgs, gen) in plan.items()}
    return TargetingStudy(model=lm.key, n_layers=n, families=families, k=k, modules=modules, config=config,
                          seeds=seeds, importance=[float(v) for v in importance] if importance is not None else None,
                          base_train=base_train, base_heldout=base_heldout, outcomes=outcomes,
                          random_names=random_names, n_train=len(train_examples), n_eval=len(eval_examples))


# ------------------------------------------------------------------------------------------------ LORA-OPROJ


@dataclass
class ModuleSweep:
    """LORA-OPROJ's runs: per protocol, per module (short name), one :class:`Outcome` per training seed."""

    model: str
    layers: list[int]
    config: TrainConfig
    seeds: list[int]
    base_train: EvalResult
    base_heldout: EvalResult
    outcomes: dict[str, dict[str, list[Outcome]]]  # protocol -> module -> per seed
    ranks: dict[str, dict[str, int]]  # protocol -> module -> rank
    n_train: int = 0
    n_eval: int = 0
    tolerance: float = 0.05

    def params(self, protocol: str) -> dict[str, int]:
        return {m: runs[0].run.params.trainable for m, runs in self.outcomes[protocol].items()}

    def losses(self, protocol: str) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
        """({module: [n_seeds, n_examples]}, base loss [n_examples], families): training examples (seed) or
        held-out examples (rigorous)."""
        seed = protocol == "seed"
        out = {m: np.asarray([(o.train_eval if seed else o.heldout).losses() for o in runs])
               for m, runs in self.outcomes[protocol].items()}
        base = self.base_train if seed else self.base_heldout
        return out, np.asarray(base.losses()), families_of(base)

    def figures(self, protocol: str) -> dict:
        """Every module's mean loss, rank, parameter count and loss reduction per million parameters."""
        losses, base, _ = self.losses(protocol)
        params = self.params(protocol)
        cfg = self.config
        figures: dict = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "n_train": self.n_train,
                         "n_eval": self.n_eval, "layers": "all" if len(self.layers) > 3 else self.layers,
                         "metric": "final training loss" if protocol == "seed" else "held-out loss",
                         "padding_labels": "unmasked (the seed's)" if protocol == "seed" else "masked",
                         "training_seeds": self.seeds[:1] if protocol == "seed" else self.seeds,
                         "base_loss": float(base.mean()), "ranks": {MODULE_LEAF[m]: r for m, r in
                                                                   self.ranks[protocol].items()},
                         "train_seconds": sum(o.run.seconds for runs in self.outcomes[protocol].values()
                                              for o in runs)}
        for m, values in losses.items():
            leaf = MODULE_LEAF[m]
            figures[f"{leaf}_loss"] = float(values.mean())
            figures[f"{leaf}_params"] = params[m]
            figures[f"{leaf}_reduction_per_mparam"] = float((base.mean() - values.mean()) / params[m] * 1e6)
        mlp = [m for m in ("gate", "up", "down") if m in losses]
        if mlp:
            figures["mlp_loss"] = float(np.mean([figures[f"{MODULE_LEAF[m]}_loss"] for m in mlp]))
            figures["mlp_params"] = params[mlp[0]]
            mlp_eff = float(np.mean([figures[f"{MODULE_LEAF[m]}_reduction_per_mparam"] for m in mlp]))
            o_eff = figures["o_proj_reduction_per_mparam"]
            figures["efficiency_ratio"] = o_eff / mlp_eff if mlp_eff > 0 else None
            figures["mlp_module"] = "mean of " + "/".join(mlp)
        counts = list(params.values())
        figures["param_spread"] = max(counts) / min(counts) - 1  # 0: identical counts
        figures["loss_ranking"] = [MODULE_LEAF[m] for m in sorted(losses, key=lambda m: losses[m].mean())]
        return figures


def module_sweep(lm: LoadedModel, train_examples: Sequence[Example], eval_examples: Sequence[Example], *,
                 config: TrainConfig, modules: Sequence[str] = ("o", "v", "q", "k", "gate", "up", "down"),
                 layers: Sequence[int] | None = None, r: int = 8, alpha: int = 16, seeds: Sequence[int] = (0,),
                 tolerance: float = 0.05, cache: bool = True,
                 protocols: Sequence[str] = ("seed", "rigorous")) -> ModuleSweep:
    """One adapter per module type (alone, on ``layers``, default every layer), same data and budget.

    Seed: rank ``r`` for every module, padding labels unmasked, the first seed. Rigorous: ranks from
    :func:`~.adapters.matched_ranks` (counts within ``tolerance`` of o_proj's), every seed, alpha/r kept at
    ``alpha / r`` (the same LoRA scaling for every module).
    """
    if "o" not in modules:
        raise ValueError("module_sweep: LORA-OPROJ compares o_proj with the other modules; 'o' is missing")
    layers = tuple(range(lm.n_layers)) if layers is None else tuple(sorted(layers))
    seeds = [int(s) for s in seeds]
    kwargs = dict(template=config.template, append_eos=config.append_eos, max_len=config.max_len)
    sweep = ModuleSweep(model=lm.key, layers=list(layers), config=config, seeds=seeds,
                        base_train=evaluate(lm, train_examples, **kwargs),
                        base_heldout=evaluate(lm, eval_examples, **kwargs), outcomes={}, ranks={},
                        n_train=len(train_examples), n_eval=len(eval_examples), tolerance=tolerance)
    first = dataclasses.replace(config, seed=seeds[0])
    for protocol in protocols:
        if protocol == "seed":
            ranks, configs = {m: r for m in modules}, [seed_config(first)]
        else:
            ranks, _ = matched_ranks(lm, modules, layers, reference="o", r=r, tolerance=tolerance)
            configs = [dataclasses.replace(config, seed=s) for s in seeds]
        sweep.ranks[protocol] = ranks
        sweep.outcomes[protocol] = {}
        for m in modules:
            target = LoraTarget(layers, (m,), ranks[m], alpha * ranks[m] / r, label=f"module-{m}")
            sweep.outcomes[protocol][m] = [run_outcome(lm, target.label, target, train_examples, eval_examples, c,
                                                       cache=cache) for c in configs]
    return sweep


# ------------------------------------------------------------------------------------------------ SKIP-RECOVER


@dataclass
class SkipStudy:
    """SKIP-RECOVER (rigorous; the seed never ran it): the k least important layers of the model's own atlas
    (layer contribution removed) vs ``n_random`` random skips of the same count, each followed by the same
    recovery finetune; held-out loss per example before and after recovery, and the full model with the same
    finetune as the reference (what the finetune alone gives).

    Catalogue v3: the unit is the skip + recovery run. The atlas skip is recovered under every training seed, and
    each seed recovers random skips of its own (none shared across seeds), so the seeds' ranks are independent runs
    (``atlas[i]`` and ``randoms[i]`` belong to training seed ``seeds[i]``).

    No "recovered fraction" is reported: (skipped - recovered) / (skipped - full) exceeds 1 whenever the
    finetune also teaches the task (the cpu runs gave 4.27 and 6.79), so it does not measure recovery. Instead:
    ``damage`` (skipped - full, before recovery) and ``excess`` (recovered - the finetuned full model: the
    cost of the skip that the recovery leaves).
    """

    model: str
    k: int
    config: TrainConfig
    importance: list[float]
    seeds: list[int]
    atlas: list[Recovery]
    randoms: list[list[Recovery]]
    reference: EvalResult
    n_train: int
    n_eval: int

    def losses(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(atlas recovered loss [n_seeds, n_examples], random recovered losses [n_seeds, n_draws, n_examples],
        families)."""
        return (np.asarray([a.recovered_losses for a in self.atlas]),
                np.asarray([[r.recovered_losses for r in rs] for rs in self.randoms]), list(self.atlas[0].families))

    def damage(self) -> tuple[np.ndarray, np.ndarray]:
        """Skip damage before recovery, per example (the same under every seed: no training yet): (atlas [n],
        random [n_draws of every seed, n])."""
        def d(rec: Recovery) -> np.ndarray:
            return np.asarray(rec.skipped_losses) - np.asarray(rec.full_losses)
        return d(self.atlas[0]), np.asarray([d(r) for rs in self.randoms for r in rs])

    def figures(self) -> dict:
        cfg = self.config
        ref = self.reference.loss()
        randoms = [r for rs in self.randoms for r in rs]
        atlas_recovered = float(np.mean([a.recovered_loss for a in self.atlas]))
        random_recovered = float(np.mean([r.recovered_loss for r in randoms]))
        first = self.atlas[0]
        return {"k": self.k, "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "max_len": cfg.max_len,
                "n_train": self.n_train, "n_eval": self.n_eval, "recovery_trainable": first.trainable,
                "train_seconds": sum(a.train_seconds for a in self.atlas) + sum(r.train_seconds for r in randoms),
                "metric": "held-out loss after skip + recovery finetune (per example)",
                "training_seeds": list(self.seeds), "n_random_draws": len(self.randoms[0]),
                "n_random_skips": len(randoms), "atlas_skipped_layers": first.skipped_layers,
                "random_skipped_layers": [[r.skipped_layers for r in rs] for rs in self.randoms],
                "full_loss": first.full_loss, "reference_loss": ref,
                "atlas_skipped_loss": first.skipped_loss,
                "atlas_recovered_losses": [a.recovered_loss for a in self.atlas],
                "atlas_recovered_loss": atlas_recovered,
                "random_skipped_losses": [[r.skipped_loss for r in rs] for rs in self.randoms],
                "random_recovered_losses": [[r.recovered_loss for r in rs] for rs in self.randoms],
                "random_recovered_loss": random_recovered,
                "atlas_damage": first.damage, "random_damage": float(np.mean([r.damage for r in randoms])),
                "atlas_excess_after_recovery": atlas_recovered - ref,
                "random_excess_after_recovery": random_recovered - ref,
                "atlas_exact": [a.recovered_exact for a in self.atlas],
                "random_exact": [[r.recovered_exact for r in rs] for rs in self.randoms]}


def skip_study(lm: LoadedModel, train_examples: Sequence[Example], eval_examples: Sequence[Example], *,
               importance: Sequence[float], config: TrainConfig, k: int | None = None, n_random: int = 3,
               seeds: Sequence[int] = (0,), modules: Sequence[str] = ALL_LINEAR, random_seed: int = 0, r: int = 8,
               alpha: int = 16, cache: bool = True) -> SkipStudy:
    """Skip the k least important layers (by ``importance``), recovered under every training seed in ``seeds``,
    and ``n_random`` random k-layer sets per seed (``n_random * len(seeds)`` distinct sets, never the atlas's;
    seed i's are the i-th block of ``n_random``), each recovered under its seed only; evaluate on the held-out
    examples.

    ``k`` defaults to 10% of the layers (at least 1). The reference is the full model with the same recovery
    finetune on every layer (first seed; a figure, not part of the decision).
    """
    n = lm.n_layers
    seeds = [int(s) for s in seeds]
    k = k if k is not None else max(1, round(0.1 * n))
    kwargs = dict(template=config.template, append_eos=config.append_eos, max_len=config.max_len)
    configs = [dataclasses.replace(config, seed=s) for s in seeds]
    full = evaluate(lm, eval_examples, **kwargs)
    full_train = evaluate(lm, train_examples, **kwargs)
    reference_target = LoraTarget(tuple(range(n)), tuple(modules), r, alpha,
                                  label="all-linear" if tuple(modules) == ALL_LINEAR else "recover-reference")
    reference = run_outcome(lm, reference_target.label, reference_target, train_examples, eval_examples, configs[0],
                            cache=cache).heldout
    common = dict(modules=modules, r=r, alpha=alpha, full=full, full_train=full_train, reference=reference,
                  cache=cache)
    least = least_important_layers(importance, k)
    atlas = [skip_recover(lm, train_examples, eval_examples, least, label="atlas", config=c, **common)
             for c in configs]
    draws = random_draws(n, k, n_random * len(seeds), seed=random_seed, avoid=[least])
    per_seed = len(draws) // len(seeds)
    if per_seed < 1:
        raise LoraError(f"skip_study: {lm.key} has {len(draws)} random {k}-layer skip(s) besides the atlas's, fewer "
                        f"than its {len(seeds)} training seeds (fewer seeds, or another skip_fraction)")
    randoms = [[skip_recover(lm, train_examples, eval_examples, layers, label=f"random-{i * per_seed + j}",
                             config=c, **common)
                for j, layers in enumerate(draws[i * per_seed:(i + 1) * per_seed])] for i, c in enumerate(configs)]
    return SkipStudy(model=lm.key, k=k, config=config, importance=[float(v) for v in importance], seeds=seeds,
                     atlas=atlas, randoms=randoms, reference=reference, n_train=len(train_examples),
                     n_eval=len(eval_examples))


__all__ = ["FAMILY_SHORT", "MODULE_LEAF", "ModuleSweep", "Outcome", "SkipStudy", "TargetingStudy", "families_of",
           "module_sweep", "run_outcome", "seed_config", "short", "skip_study", "targeting_study"]
