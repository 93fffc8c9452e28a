"""The LoRA block's measurements, each under the seed protocol and the rigorous one (seed-protocols.md).

* :func:`targeting_study` (LORA-ATLAS): atlas-guided vs random-matched vs all-linear adapters, trained on a
  mix of task families. Seed protocol: layers [2, 7, 9] (clipped), one random draw (seed 42), modules
  o/up/down, metric = final training loss per family (loss on the training examples after training) and
  exact-prefix match on held-out JSON prompts. Rigorous: top-k layers of the model's own atlas, random-matched
  as a distribution over several draws (percentile of atlas-guided), held-out loss and the suite's scorer.
* :func:`module_sweep` (LORA-OPROJ): one module type alone on every layer; loss reduction per parameter.
* :func:`skip_study` (SKIP-RECOVER): skip the k least important layers vs k random layers, recover with a
  short finetune, compare recovered fractions (and the finetuned full model as a reference).

Every training run goes through :func:`~engine.lora.training.train_cached`, so runs shared by claims (the
all-linear adapter for LORA-ATLAS, LORA-LATE, LOCKIN and SKIP-RECOVER's reference) are trained once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.models import LoadedModel
from engine.tasks import Example

from .adapters import (ALL_LINEAR, MODULE_GROUPS, LoraTarget, adapted, atlas_layers, least_important_layers,
                       random_draws, random_layers, seed_layers)
from .analysis import Recovery, skip_recover
from .evaluation import EvalResult, evaluate
from .training import LoraRun, TrainConfig, train, train_cached

FAMILY_SHORT = {"json_schema": "json", "factual_recall": "factual", "code_syntax": "code"}
MODULE_LEAF = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
               "down": "down_proj"}
SEED_RANDOM_SEED = 42


def short(family: str) -> str:
    """Figure-name form of a family ("json_schema" -> "json")."""
    return FAMILY_SHORT.get(family, family)


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
    with adapted(lm, run) as alm:
        train_eval = evaluate(alm, train_examples, **kwargs)
        heldout = evaluate(alm, eval_examples, generate=generate, **kwargs)
    return Outcome(name=name, run=run, train_eval=train_eval, heldout=heldout)


def _percentile(value: float, draws: Sequence[float]) -> float:
    """Share of random draws that ``value`` beats (lower loss is better); ties count half."""
    draws = list(draws)
    return float((sum(value < d for d in draws) + 0.5 * sum(value == d for d in draws)) / len(draws))


# ------------------------------------------------------------------------------------------------ LORA-ATLAS


@dataclass
class TargetingStudy:
    model: str
    n_layers: int
    families: list[str]
    k: int
    modules: tuple[str, ...]
    config: TrainConfig
    importance: list[float] | None
    base_train: EvalResult
    base_heldout: EvalResult
    outcomes: dict[str, Outcome]
    random_names: list[str]
    n_train: int
    n_eval: int

    def _fam_figures(self, prefix: str, outcome: Outcome, metric: str) -> dict:
        out = {}
        for family in self.families:
            name = short(family)
            if metric == "train":
                out[f"{prefix}_{name}_loss"] = outcome.train_eval.loss(family)
            else:
                out[f"{prefix}_{name}_loss"] = outcome.heldout.loss(family)
                if outcome.heldout.generated:
                    out[f"{prefix}_{name}_accuracy"] = outcome.heldout.accuracy(family)
            out[f"{prefix}_{name}_exact"] = outcome.heldout.tf_exact(family)
        return out

    def _params(self, prefix: str, outcome: Outcome) -> dict:
        return {f"{prefix}_params": outcome.run.params.trainable, f"{prefix}_param_pct": outcome.run.params.percent,
                f"{prefix}_layers": list(outcome.run.target.layers)}

    def _common(self) -> dict:
        cfg = self.config
        return {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "warmup_steps": cfg.warmup_steps,
                "r": self.outcomes["all-linear"].run.target.r, "alpha": self.outcomes["all-linear"].run.target.alpha,
                "n_train": self.n_train, "n_eval": self.n_eval, "families": self.families,
                "mean_seq_len": self.outcomes["all-linear"].run.mean_seq_len, "train_seed": cfg.seed,
                "modules": list(self.modules), "k": self.k,
                "train_seconds": sum(o.run.seconds for o in self.outcomes.values())}

    def figures(self, protocol: str) -> dict:
        """Figures named like the catalogue's (atlas_json_loss, random_json_exact, all_linear_params, ...)."""
        if protocol == "seed":
            atlas, rand = self.outcomes["seed-layers"], self.outcomes["seed-random"]
            figures = {**self._common(), "metric": "final training loss per family (training examples, after "
                       "training); exact = teacher-forced exact prefix on held-out prompts",
                       "param_ratio": self.outcomes["all-linear"].run.params.trainable / atlas.run.params.trainable}
            figures.update(self._params("atlas", atlas) | self._params("random", rand)
                           | self._params("all_linear", self.outcomes["all-linear"]))
            for prefix, outcome in (("atlas", atlas), ("random", rand), ("all_linear", self.outcomes["all-linear"])):
                figures.update(self._fam_figures(prefix, outcome, "train"))
            for family in self.families:
                figures[f"base_{short(family)}_loss"] = self.base_train.loss(family)
            return figures
        if protocol != "rigorous":
            raise ValueError(f"unknown protocol {protocol!r}")
        if self.importance is None:
            raise ValueError("the rigorous protocol needs the model's own atlas (importance)")
        atlas, linear = self.outcomes["atlas"], self.outcomes["all-linear"]
        draws = [self.outcomes[n] for n in self.random_names]
        figures = {**self._common(), "metric": "held-out loss per family; accuracy = suite scorer on greedy output",
                   "param_ratio": linear.run.params.trainable / atlas.run.params.trainable,
                   "n_random_draws": len(draws), "random_layer_draws": [list(o.run.target.layers) for o in draws],
                   "importance": self.importance}
        figures.update(self._params("atlas", atlas) | self._params("all_linear", linear))
        figures["random_params"] = draws[0].run.params.trainable
        figures.update(self._fam_figures("atlas", atlas, "heldout"))
        figures.update(self._fam_figures("all_linear", linear, "heldout"))
        for family in self.families:
            name = short(family)
            losses = [o.heldout.loss(family) for o in draws]
            figures[f"random_{name}_losses"] = losses
            figures[f"random_{name}_loss"] = float(np.mean(losses))
            figures[f"random_{name}_exact"] = float(np.mean([o.heldout.tf_exact(family) for o in draws]))
            if atlas.heldout.generated:
                figures[f"random_{name}_accuracy"] = float(np.mean([o.heldout.accuracy(family) for o in draws]))
            figures[f"atlas_{name}_percentile"] = _percentile(atlas.heldout.loss(family), losses)
            figures[f"base_{name}_loss"] = self.base_heldout.loss(family)
        return figures

    def beats_random(self, protocol: str) -> dict[str, bool]:
        """Per family: does the atlas-guided adapter have the lower loss (rigorous: than every random draw)?"""
        figures = self.figures(protocol)
        if protocol == "seed":
            return {f: figures[f"atlas_{short(f)}_loss"] < figures[f"random_{short(f)}_loss"] for f in self.families}
        return {f: figures[f"atlas_{short(f)}_percentile"] == 1.0 for f in self.families}


def targeting_study(lm: LoadedModel, train_examples: Sequence[Example], eval_examples: Sequence[Example], *,
                    importance: Sequence[float] | None, config: TrainConfig, k: int = 3, n_random: int = 4,
                    modules: Sequence[str] = MODULE_GROUPS["seed"], r: int = 8, alpha: int = 16,
                    generate: bool = True, random_seed: int = 0, cache: bool = True,
                    protocols: Sequence[str] = ("seed", "rigorous")) -> TargetingStudy:
    """Train and evaluate the strategies each protocol needs (runs shared between protocols).

    Seed: ``seed-layers`` ([2, 7, 9] clipped), ``seed-random`` (k layers, ``random.Random(42)``), ``all-linear``.
    Rigorous: ``atlas`` (top-k of ``importance``), ``random-0..n_random-1`` (distinct draws), ``all-linear``.
    """
    modules = tuple(modules)
    families = list(dict.fromkeys(ex.family for ex in train_examples))
    n = lm.n_layers
    kwargs = dict(template=config.template, append_eos=config.append_eos, max_len=config.max_len)
    base_train = evaluate(lm, train_examples, **kwargs)
    base_heldout = evaluate(lm, eval_examples, generate=generate, **kwargs)
    plan: dict[str, LoraTarget] = {"all-linear": LoraTarget(tuple(range(n)), ALL_LINEAR, r, alpha, label="all-linear")}
    random_names: list[str] = []
    if "seed" in protocols:
        plan["seed-layers"] = LoraTarget(seed_layers(n), modules, r, alpha, label="seed-layers")
        plan["seed-random"] = LoraTarget(random_layers(n, len(seed_layers(n)), SEED_RANDOM_SEED), modules, r, alpha,
                                         label="seed-random")
    if "rigorous" in protocols:
        if importance is None:
            raise ValueError("targeting_study: the rigorous protocol needs the per-layer importance")
        chosen = atlas_layers(importance, k)
        plan["atlas"] = LoraTarget(chosen, modules, r, alpha, label="atlas")
        seed_draw = random_layers(n, k, SEED_RANDOM_SEED)  # the seed protocol's draw is the first of the distribution
        first = [seed_draw] if seed_draw != chosen else []
        for index, layers in enumerate(random_draws(n, k, n_random, seed=random_seed, first=first, avoid=[chosen])):
            name = f"random-{index}"
            plan[name] = LoraTarget(layers, modules, r, alpha, label=name)
            random_names.append(name)
    outcomes: dict[str, Outcome] = {}
    done: dict[tuple, Outcome] = {}  # the same layers and modules under two names (e.g. the seed's random draw) train once
    for name, target in plan.items():
        wants = generate
        signature = (target.layers, target.modules, target.r, target.alpha)
        shared = done.get(signature)
        if shared is not None and (shared.heldout.generated or not wants):
            outcomes[name] = dataclasses.replace(shared, name=name)
            continue
        outcomes[name] = done[signature] = run_outcome(lm, name, target, train_examples, eval_examples, config,
                                                       generate=wants, cache=cache)
    return TargetingStudy(model=lm.key, n_layers=n, families=families, k=k, modules=modules, config=config,
                          importance=[float(v) for v in importance] if importance is not None else None,
                          base_train=base_train, base_heldout=base_heldout, outcomes=outcomes,
                          random_names=random_names, n_train=len(train_examples), n_eval=len(eval_examples))


# ------------------------------------------------------------------------------------------------ LORA-OPROJ


@dataclass
class SweepRow:
    module: str  # short name (o, v, q, k, gate, up, down)
    params: int
    train_loss: float  # loss on the training examples after training (the seed's metric)
    eval_loss: float  # held-out loss
    train_reduction: float  # base - adapted, training examples
    eval_reduction: float
    seconds: float

    def per_param(self, metric: str) -> float:
        """Loss reduction per million trainable parameters."""
        reduction = self.train_reduction if metric == "train" else self.eval_reduction
        return reduction / self.params * 1e6


@dataclass
class ModuleSweep:
    model: str
    layers: list[int]
    config: TrainConfig
    base_train_loss: float
    base_eval_loss: float
    rows: dict[str, SweepRow] = field(default_factory=dict)
    n_train: int = 0
    n_eval: int = 0

    def figures(self, protocol: str) -> dict:
        """o_proj_loss, o_proj_params, mlp_loss, mlp_params, efficiency_ratio, and every module's figures.

        Seed: training loss; MLP = mean over gate/up/down. Rigorous: held-out loss; MLP = its most efficient
        module (the strongest competitor), efficiency = loss reduction per parameter.
        """
        metric = "train" if protocol == "seed" else "eval"
        cfg = self.config
        figures: dict = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "n_train": self.n_train,
                         "n_eval": self.n_eval, "layers": "all" if len(self.layers) > 3 else self.layers,
                         "metric": "final training loss" if metric == "train" else "held-out loss",
                         "base_loss": self.base_train_loss if metric == "train" else self.base_eval_loss,
                         "train_seconds": sum(r.seconds for r in self.rows.values())}
        for name, row in self.rows.items():
            leaf = MODULE_LEAF[name]
            figures[f"{leaf}_loss"] = row.train_loss if metric == "train" else row.eval_loss
            figures[f"{leaf}_params"] = row.params
            figures[f"{leaf}_reduction_per_mparam"] = row.per_param(metric)
        mlp = [self.rows[m] for m in ("gate", "up", "down") if m in self.rows]
        o = self.rows["o"]
        if protocol == "seed":
            mlp_loss = float(np.mean([r.train_loss for r in mlp]))
            mlp_eff = float(np.mean([r.per_param(metric) for r in mlp]))
            figures["mlp_module"] = "mean of gate/up/down"
        else:
            best = max(mlp, key=lambda r: r.per_param(metric))
            mlp_loss, mlp_eff = best.eval_loss, best.per_param(metric)
            figures["mlp_module"] = MODULE_LEAF[best.module]
        figures.update(o_proj_loss=figures["o_proj_loss"], o_proj_params=o.params, mlp_loss=mlp_loss,
                       mlp_params=mlp[0].params, o_proj_efficiency=o.per_param(metric), mlp_efficiency=mlp_eff,
                       efficiency_ratio=o.per_param(metric) / mlp_eff if mlp_eff > 0 else None)
        ranking = sorted(self.rows.values(), key=lambda r: -r.per_param(metric))
        figures["efficiency_ranking"] = [MODULE_LEAF[r.module] for r in ranking]
        return figures


def module_sweep(lm: LoadedModel, train_examples: Sequence[Example], eval_examples: Sequence[Example], *,
                 config: TrainConfig, modules: Sequence[str] = ("o", "v", "q", "k", "gate", "up", "down"),
                 layers: Sequence[int] | None = None, r: int = 8, alpha: int = 16, cache: bool = True) -> ModuleSweep:
    """One adapter per module type (alone, on ``layers``, default every layer), same data and config."""
    layers = tuple(range(lm.n_layers)) if layers is None else tuple(sorted(layers))
    kwargs = dict(template=config.template, append_eos=config.append_eos, max_len=config.max_len)
    base_train = evaluate(lm, train_examples, **kwargs).loss()
    base_eval = evaluate(lm, eval_examples, **kwargs).loss()
    sweep = ModuleSweep(model=lm.key, layers=list(layers), config=config, base_train_loss=base_train,
                        base_eval_loss=base_eval, n_train=len(train_examples), n_eval=len(eval_examples))
    for module in modules:
        target = LoraTarget(layers, (module,), r, alpha, label=f"module-{module}")
        outcome = run_outcome(lm, target.label, target, train_examples, eval_examples, config, cache=cache)
        train_loss, eval_loss = outcome.train_eval.loss(), outcome.heldout.loss()
        sweep.rows[module] = SweepRow(module=module, params=outcome.run.params.trainable, train_loss=train_loss,
                                      eval_loss=eval_loss, train_reduction=base_train - train_loss,
                                      eval_reduction=base_eval - eval_loss, seconds=outcome.run.seconds)
    return sweep


# ------------------------------------------------------------------------------------------------ SKIP-RECOVER


@dataclass
class SkipStudy:
    """SKIP-RECOVER under both protocols.

    Seed: skip the k least important layers of the seed's atlas (``seed_importance``: residual zeroing, where a
    tie - every layer equal - leaves the choice to the tie-break) vs the seed's single random draw (seed 42);
    metric = recovered fraction of the *training* loss. Rigorous: the k least important layers of the model's own
    atlas (layer contribution removed) vs ``n_random`` random draws; held-out loss; the atlas skip's percentile
    among the random skips (recovered loss), and the recovery against the full model after the same finetune.
    """

    model: str
    k: int
    config: TrainConfig
    importance: list[float]
    seed_importance: list[float] | None
    atlas: Recovery
    randoms: list[Recovery]
    seed_atlas: Recovery | None
    seed_random: Recovery
    reference_loss: float
    n_train: int
    n_eval: int

    def _common(self) -> dict:
        cfg = self.config
        return {"k": self.k, "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "max_len": cfg.max_len,
                "n_train": self.n_train, "n_eval": self.n_eval, "recovery_trainable": self.atlas.trainable,
                "train_seconds": self.atlas.train_seconds + sum(r.train_seconds for r in self.randoms)}

    def figures(self, protocol: str) -> dict:
        if protocol == "seed":
            if self.seed_atlas is None:
                raise ValueError("the seed protocol needs the seed's atlas (seed_importance)")
            atlas, rand = self.seed_atlas, self.seed_random
            return {**self._common(), "metric": "recovered fraction of the final training loss",
                    "atlas": "seed atlas (residual zeroed), least important k",
                    "seed_atlas_is_tie": len(set(self.seed_importance or [])) == 1,
                    "atlas_skipped_layers": atlas.skipped_layers, "random_skipped_layers": rand.skipped_layers,
                    "full_loss": atlas.train_full_loss, "atlas_skipped_loss": atlas.train_skipped_loss,
                    "atlas_recovered_loss": atlas.train_recovered_loss,
                    "random_skipped_loss": rand.train_skipped_loss, "random_recovered_loss": rand.train_recovered_loss,
                    "atlas_recovered_fraction": atlas.train_recovered_fraction,
                    "random_recovered_fraction": rand.train_recovered_fraction}
        if protocol != "rigorous":
            raise ValueError(f"unknown protocol {protocol!r}")
        rand_frac = [r.recovered_fraction for r in self.randoms]
        valid = [f for f in rand_frac if f is not None]
        return {**self._common(), "metric": "held-out loss after recovery; fraction of the skip damage undone",
                "n_random_draws": len(self.randoms), "atlas_skipped_layers": self.atlas.skipped_layers,
                "random_skipped_layers": [r.skipped_layers for r in self.randoms],
                "full_loss": self.atlas.full_loss, "reference_loss": self.reference_loss,
                "atlas_skipped_loss": self.atlas.skipped_loss, "atlas_recovered_loss": self.atlas.recovered_loss,
                "random_skipped_losses": [r.skipped_loss for r in self.randoms],
                "random_recovered_losses": [r.recovered_loss for r in self.randoms],
                "atlas_recovered_fraction": self.atlas.recovered_fraction,
                "random_recovered_fractions": rand_frac,
                "random_recovered_fraction": float(np.mean(valid)) if valid else None,
                "atlas_recovered_fraction_ref": self.atlas.recovered_fraction_ref,
                "random_recovered_fractions_ref": [r.recovered_fraction_ref for r in self.randoms],
                "atlas_recovered_loss_percentile": _percentile(self.atlas.recovered_loss,
                                                               [r.recovered_loss for r in self.randoms]),
                "atlas_skipped_loss_percentile": _percentile(self.atlas.skipped_loss,
                                                             [r.skipped_loss for r in self.randoms]),
                "atlas_exact": self.atlas.recovered_exact, "random_exact": [r.recovered_exact for r in self.randoms]}


def skip_study(lm: LoadedModel, train_examples: Sequence[Example], eval_examples: Sequence[Example], *,
               importance: Sequence[float], config: TrainConfig, seed_importance: Sequence[float] | None = None,
               k: int | None = None, n_random: int = 3, modules: Sequence[str] = ALL_LINEAR, random_seed: int = 0,
               r: int = 8, alpha: int = 16, cache: bool = True) -> SkipStudy:
    """Skip the k least important layers (by ``importance``; and by ``seed_importance`` for the seed protocol)
    and k random layers (the first draw is the seed's, ``random.Random(42)``), recover each, compare.

    ``k`` defaults to 10% of the layers (at least 1). The reference is the full model with the same recovery
    finetune on every layer (so "recovery" is not confused with learning the task). Skip configurations that
    coincide are trained and evaluated once.
    """
    n = lm.n_layers
    k = k if k is not None else max(1, round(0.1 * n))
    kwargs = dict(template=config.template, append_eos=config.append_eos, max_len=config.max_len)
    full = evaluate(lm, eval_examples, **kwargs)
    full_train = evaluate(lm, train_examples, **kwargs)
    reference_target = LoraTarget(tuple(range(n)), tuple(modules), r, alpha,
                                  label="all-linear" if tuple(modules) == ALL_LINEAR else "recover-reference")
    reference = run_outcome(lm, reference_target.label, reference_target, train_examples, eval_examples, config,
                            cache=cache).heldout
    common = dict(modules=modules, config=config, r=r, alpha=alpha, full=full, full_train=full_train,
                  reference=reference, cache=cache)
    done: dict[tuple[int, ...], Recovery] = {}

    def recover(layers, label: str) -> Recovery:
        layers = tuple(sorted(layers))
        if layers not in done:
            done[layers] = skip_recover(lm, train_examples, eval_examples, layers, label=label, **common)
        return done[layers]

    least = least_important_layers(importance, k)
    atlas = recover(least, "atlas")
    seed_draw = random_layers(n, k, SEED_RANDOM_SEED)
    first = [seed_draw] if seed_draw != least else []
    randoms = [recover(layers, f"random-{i}") for i, layers in
               enumerate(random_draws(n, k, n_random, seed=random_seed, first=first, avoid=[least]))]
    seed_atlas = recover(least_important_layers(seed_importance, k), "seed-atlas") if seed_importance is not None else None
    return SkipStudy(model=lm.key, k=k, config=config, importance=[float(v) for v in importance],
                     seed_importance=None if seed_importance is None else [float(v) for v in seed_importance],
                     atlas=atlas, randoms=randoms, seed_atlas=seed_atlas, seed_random=recover(seed_draw, "seed-random"),
                     reference_loss=reference.loss(),
                     n_train=len(train_examples), n_eval=len(eval_examples))
