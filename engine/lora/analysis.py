"""What a trained adapter does where: per-layer effect (LORA-LATE), checkpoint lock-in (LOCKIN, block G3),
and layer skipping with a recovery finetune (SKIP-RECOVER, block G4).

* :func:`localise` switches the adapter's delta off in one decoder layer at a time and measures
  KL(fully adapted || adapted without layer l) at the answer position, then sums the effect per depth decile.
* :func:`lock_in` reloads each saved checkpoint with ``PeftModel.from_pretrained`` on the pristine base, asks an
  importance function (an atlas) for the per-layer importance of each adapted model and compares the top-k
  layers with the final checkpoint's (overlap@k, Jaccard, Spearman).
* :func:`skipped` removes decoder layers (each replaced by an identity: the layer's output is its input);
  :func:`skip_recover` measures the skipped model, finetunes a recovery adapter on the remaining layers and
  reports the recovered fraction of the full model's performance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine import stats
from engine.models import LoadedModel
from engine.tasks import Example

from .adapters import LoraError, LoraTarget, adapted, adapter_disabled_at, from_saved, lora_layers_by_layer
from .evaluation import EvalResult, answer_logits, evaluate, evaluate_cached, kl_divergence
from .training import LoraRun, TrainConfig, train, train_cached

ImportanceFn = Callable[[LoadedModel], "np.ndarray | Sequence[float]"]  # [n_layers] or per prompt [n, n_layers]


# ------------------------------------------------------------------------------------------------ deciles


def depth_deciles(n_layers: int) -> list[list[int]]:
    """Layers grouped by depth decile: layer l belongs to decile floor(10 * (l + 0.5) / n_layers).

    The last decile is "the final 10% of layers" (e.g. 3 of 30 layers, 2 of 18). Deciles may be empty
    when a model has fewer than 10 layers.
    """
    if n_layers < 1:
        raise LoraError(f"depth_deciles: n_layers must be >= 1, got {n_layers}")
    groups: list[list[int]] = [[] for _ in range(10)]
    for layer in range(n_layers):
        groups[min(9, math.floor(10 * (layer + 0.5) / n_layers))].append(layer)
    return groups


@dataclass(frozen=True)
class Localisation:
    """Per-layer effect of an adapter and its distribution over depth deciles."""

    effect: list[float]  # mean KL(adapted || adapter off at layer l) per layer (0 for layers without adapter)
    total: float  # mean KL(adapted || base): the whole adapter switched off
    deciles: list[list[int]]
    decile_share: list[float]  # share of the summed per-layer effect in each decile
    decile_mean: list[float]  # mean per-layer effect in each decile (deciles can differ by one layer)
    largest_decile: int  # argmax of decile_share
    share_last10: float  # decile_share[9]: the final 10% of layers
    n_examples: int
    per_example: list[list[float]] = dataclasses.field(default_factory=list)  # [n_examples][n_layers] KL
    families: list[str] = dataclasses.field(default_factory=list)  # family of each example

    @property
    def largest_mean_decile(self) -> int:
        """argmax of decile_mean: the decile whose layers have the largest mean effect (fair to unequal sizes)."""
        return int(np.argmax(self.decile_mean))

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def _layer_off_effects(alm: LoadedModel, examples: Sequence[Example], layers: Sequence[int], template: str,
                       batch_size: int) -> np.ndarray:
    """[n_examples, n_layers] KL(adapted || adapter off in one layer) at the answer position, each from the
    adapted run's residual entering that layer (the layers before it are unchanged by the edit, so only the
    suffix is re-run: the atlas's fast path, ``engine.interventions.run_from``)."""
    from engine.interventions import clean_run, encode, run_from

    batch = encode(alm, list(examples), template=template)
    out = np.zeros((len(examples), alm.n_layers))
    for lo in range(0, len(examples), max(1, batch_size)):
        rows = list(range(lo, min(lo + batch_size, len(examples))))
        run = clean_run(alm, batch.select(rows))
        for layer in layers:
            with adapter_disabled_at(alm, [layer]):
                edited = run_from(alm, run, layer, run.resid[layer])
            out[rows, layer] = kl_divergence(run.logits, edited).double().cpu().numpy()
    return out


def localise(alm: LoadedModel, examples: Sequence[Example], *, template: str = "auto",
             batch_size: int = 8, fast: bool = True) -> Localisation:
    """Per-layer effect of the adapter attached to ``alm`` (an ``attached``/``adapted`` model). ``fast`` re-runs
    only the layers from the switched-off one onwards; ``fast=False`` is one full forward per layer (what the
    fast path is tested against)."""
    by_layer = lora_layers_by_layer(alm)
    if not by_layer:
        raise LoraError(f"{alm.key}: localise needs a model with a LoRA adapter attached")
    was_training = alm.model.training
    alm.model.eval()
    try:
        full = answer_logits(alm, examples, template=template, batch_size=batch_size)
        if fast:
            per_example = _layer_off_effects(alm, examples, sorted(by_layer), template, batch_size)
        else:
            per_example = np.zeros((len(examples), alm.n_layers))
            for layer in sorted(by_layer):
                with adapter_disabled_at(alm, [layer]):
                    edited = answer_logits(alm, examples, template=template, batch_size=batch_size)
                per_example[:, layer] = kl_divergence(full, edited).double().cpu().numpy()
    finally:
        alm.model.train(was_training)
    effect = [float(per_example[:, layer].mean()) if layer in by_layer else 0.0 for layer in range(alm.n_layers)]
    with alm.model.disable_adapter():
        base = answer_logits(alm, examples, template=template, batch_size=batch_size)
    total = float(kl_divergence(full, base).mean())
    deciles = depth_deciles(alm.n_layers)
    summed = sum(effect)
    if not summed > 0:
        raise LoraError(f"{alm.key}: switching the adapter off layer by layer changes nothing (total per-layer "
                        "effect 0): the adapter is untrained or did not fire")
    share = [sum(effect[l] for l in group) / summed for group in deciles]
    mean = [float(np.mean([effect[l] for l in group])) if group else 0.0 for group in deciles]
    return Localisation(effect=effect, total=total, deciles=deciles, decile_share=share, decile_mean=mean,
                        largest_decile=int(np.argmax(share)), share_last10=share[9], n_examples=len(examples),
                        per_example=per_example.tolist(), families=[ex.family for ex in examples])


# ------------------------------------------------------------------------------------------------ lock-in


def top_k(importance: Sequence[float], k: int) -> list[int]:
    values = [float(v) for v in importance]
    return sorted(sorted(range(len(values)), key=lambda i: (-values[i], i))[:k])


def overlap_at_k(a: Sequence[float], b: Sequence[float], k: int) -> tuple[float, float]:
    """(overlap@k, Jaccard) of the top-k layers of two importance vectors."""
    ta, tb = set(top_k(a, k)), set(top_k(b, k))
    return len(ta & tb) / k, len(ta & tb) / len(ta | tb)


@dataclass(frozen=True)
class LockIn:
    """Agreement of each checkpoint's atlas with the final checkpoint's."""

    fractions: list[float]  # checkpoint fractions of training, ascending; the last is the final one
    steps: list[int]
    importance: list[list[float]]  # per checkpoint
    base_importance: list[float]  # the base model (no adapter): the reference "before training"
    k: int
    top: list[list[int]]
    overlap: list[float]  # overlap@k with the final checkpoint
    jaccard: list[float]
    spearman: list[float]
    base_overlap: float  # the base model's agreement with the final checkpoint
    base_jaccard: float
    base_spearman: float
    threshold: float
    lock_in_fraction: float | None  # earliest fraction from which every later checkpoint agrees (>= threshold)
    # per prompt (the importance function's rows): top-k overlap of each checkpoint's / the base model's
    # per-prompt atlas with the final checkpoint's on the same prompt ([n_checkpoints][n_prompts], [n_prompts])
    prompt_overlap: list[list[float]] = dataclasses.field(default_factory=list)
    base_prompt_overlap: list[float] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def lock_in(lm: LoadedModel, run: LoraRun, importance_fn: ImportanceFn, *, k: int = 5,
            threshold: float = 0.8) -> LockIn:
    """Reload every checkpoint of ``run`` on the pristine base and compare its atlas with the final one's.

    ``importance_fn(adapted_lm)`` returns the per-layer importance (e.g. ``atlas(...).mean_effect``); it is also
    called on the base model. ``lock_in_fraction`` is the earliest checkpoint fraction from which every later
    checkpoint's overlap@k with the final one is >= ``threshold`` (the final one trivially agrees).
    """
    if not run.checkpoints:
        raise LoraError("lock_in needs a run trained with checkpoints (TrainConfig(checkpoints=(0.1, 0.25, 0.5, 1.0)))")
    fractions = sorted(run.checkpoints)
    if fractions[-1] != 1.0:
        raise LoraError(f"lock_in: the last checkpoint must be the final one (fraction 1.0), got {fractions}")
    def rows(alm) -> np.ndarray:
        values = np.atleast_2d(np.asarray(importance_fn(alm), dtype=np.float64))
        if values.shape[1] != lm.n_layers:
            raise LoraError(f"importance_fn returned {values.shape[1]} values per prompt for {lm.n_layers} layers")
        return values

    per_prompt = []
    for fraction in fractions:
        with from_saved(lm, run.checkpoints[fraction]) as alm:
            per_prompt.append(rows(alm))
    base_rows = rows(lm)
    importance = [[float(v) for v in m.mean(0)] for m in per_prompt]
    base = [float(v) for v in base_rows.mean(0)]
    final = importance[-1]
    pairs = [overlap_at_k(values, final, k) for values in importance]
    overlap = [p[0] for p in pairs]
    base_pair = overlap_at_k(base, final, k)

    def prompt_overlaps(m: np.ndarray) -> list[float]:
        return [overlap_at_k(a, b, k)[0] for a, b in zip(m, per_prompt[-1])]
    lock = None
    for index in range(len(fractions)):
        if all(o >= threshold for o in overlap[index:]):
            lock = fractions[index]
            break
    steps = [run.config.checkpoint_steps()[f] for f in fractions]

    def rho(values: list[float]) -> float:
        return stats.rank_rho(values, final, undefined=0.0)  # constant importance (the seed protocol): 0.0

    return LockIn(fractions=fractions, steps=steps, importance=importance, base_importance=base, k=k,
                  top=[top_k(v, k) for v in importance], overlap=overlap, jaccard=[p[1] for p in pairs],
                  spearman=[rho(v) for v in importance], base_overlap=base_pair[0],
                  base_jaccard=base_pair[1], base_spearman=rho(base), threshold=threshold,
                  lock_in_fraction=lock, prompt_overlap=[prompt_overlaps(m) for m in per_prompt],
                  base_prompt_overlap=prompt_overlaps(base_rows))


# ------------------------------------------------------------------------------------------------ skipping


class SkippedLayer(nn.Module):
    """Stands in for a removed decoder layer: returns its input hidden states unchanged."""

    def __init__(self, index: int, original: nn.Module):
        super().__init__()
        self.index = index
        # Some models read per-layer attributes (e.g. attention_type) while iterating the layers.
        for name in ("attention_type", "layer_idx", "is_sliding"):
            if hasattr(original, name):
                setattr(self, name, getattr(original, name))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def _layer_list(lm: LoadedModel) -> nn.ModuleList:
    base = lm.adapter.base(lm.model)
    container = lm.adapter.get(base, lm.adapter.layers_path)
    if not isinstance(container, nn.ModuleList):
        raise LoraError(f"{lm.key}: {lm.adapter.layers_path} is not a ModuleList; cannot skip layers")
    return container


@contextmanager
def skipped(lm: LoadedModel, layers: Sequence[int]) -> Iterator[LoadedModel]:
    """``lm`` with the given decoder layers removed (replaced by :class:`SkippedLayer`), restored on exit."""
    layers = sorted(set(int(l) for l in layers))
    if not layers or layers[0] < 0 or layers[-1] >= lm.n_layers:
        raise LoraError(f"{lm.key}: layers to skip must be within 0..{lm.n_layers - 1}, got {layers}")
    container = _layer_list(lm)
    originals = {l: container[l] for l in layers}
    if any(isinstance(m, SkippedLayer) for m in originals.values()):
        raise LoraError(f"{lm.key}: layer(s) {layers} are already skipped")
    try:
        for l, module in originals.items():
            container[l] = SkippedLayer(l, module)
        yield lm
    finally:
        for l, module in originals.items():
            container[l] = module


@dataclass(frozen=True)
class Recovery:
    """One skip configuration: loss of the full, skipped and skipped+recovered model, on the held-out examples
    and on the training examples (the seed protocol's metric is the final training loss)."""

    label: str
    skipped_layers: list[int]
    full_loss: float  # held-out
    skipped_loss: float
    recovered_loss: float
    full_exact: float
    skipped_exact: float
    recovered_exact: float
    reference_loss: float | None  # the full model after the same finetune (what the finetune alone gives)
    recovered_fraction: float | None  # (skipped - recovered) / (skipped - full) on held-out loss; None: no damage
    recovered_fraction_ref: float | None  # the same against the finetuned full model
    damage: float  # skipped_loss - full_loss
    train_seconds: float
    trainable: int
    train_full_loss: float | None = None  # the same three losses on the training examples
    train_skipped_loss: float | None = None
    train_recovered_loss: float | None = None
    train_recovered_fraction: float | None = None
    # per held-out example (the order of the eval examples): what SKIP-RECOVER's decision resamples
    full_losses: list[float] = dataclasses.field(default_factory=list)
    skipped_losses: list[float] = dataclasses.field(default_factory=list)
    recovered_losses: list[float] = dataclasses.field(default_factory=list)
    families: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def recovered_fraction(full: float, skipped_value: float, recovered: float, *, min_damage: float = 1e-6) -> float | None:
    """(skipped - recovered) / (skipped - full) for losses (lower is better), i.e. the share of the damage undone.

    None when skipping did not raise the loss (by more than ``min_damage``): there is nothing to recover, and
    the ratio would be meaningless.
    """
    damage = skipped_value - full
    if damage <= min_damage:
        return None
    return (skipped_value - recovered) / damage


def skip_recover(lm: LoadedModel, train_examples: Sequence[Example], eval_examples: Sequence[Example],
                 skip: Sequence[int], *, modules: Sequence[str], config: TrainConfig, label: str = "",
                 r: int = 8, alpha: int = 16, full: EvalResult | None = None, full_train: EvalResult | None = None,
                 reference: EvalResult | None = None, cache: bool = True) -> Recovery:
    """Skip ``skip``, finetune a recovery LoRA (``modules`` on every remaining layer), report the recovery.

    ``full``/``full_train`` (the unskipped model on the held-out / training examples) and ``reference`` (the
    unskipped model after the same finetune, held-out) may be passed in to share them between skip configurations.
    """
    kwargs = dict(template=config.template, append_eos=config.append_eos, max_len=config.max_len)
    score = evaluate_cached if cache else evaluate  # the cached one keys on the (skipped / adapted) model's identity
    if full is None:
        full = score(lm, eval_examples, **kwargs)
    if full_train is None:
        full_train = score(lm, train_examples, **kwargs)
    skip = sorted(set(int(l) for l in skip))
    remaining = tuple(l for l in range(lm.n_layers) if l not in set(skip))
    target = LoraTarget(layers=remaining, modules=tuple(modules), r=r, alpha=alpha, label=f"recover-{label}")
    with skipped(lm, skip) as slm:
        # The skipped model is another model for the cache: its fingerprint names the skipped layers.
        slm_cached = _with_fingerprint(slm, f"skip{skip}")
        before = score(slm_cached, eval_examples, **kwargs)
        before_train = score(slm_cached, train_examples, **kwargs)
        run = (train_cached if cache else train)(slm_cached, train_examples, target, config)
        if cache:
            after = evaluate_cached(slm_cached, eval_examples, run=run, **kwargs)
            after_train = evaluate_cached(slm_cached, train_examples, run=run, **kwargs)
        else:
            with adapted(slm_cached, run) as alm:
                after = evaluate(alm, eval_examples, **kwargs)
                after_train = evaluate(alm, train_examples, **kwargs)
    fraction = recovered_fraction(full.loss(), before.loss(), after.loss())
    fraction_ref = recovered_fraction(reference.loss(), before.loss(), after.loss()) if reference is not None else None
    return Recovery(label=label, skipped_layers=skip, full_loss=full.loss(), skipped_loss=before.loss(),
                    recovered_loss=after.loss(), full_exact=full.tf_exact(), skipped_exact=before.tf_exact(),
                    recovered_exact=after.tf_exact(), reference_loss=reference.loss() if reference else None,
                    recovered_fraction=fraction, recovered_fraction_ref=fraction_ref,
                    damage=before.loss() - full.loss(), train_seconds=run.seconds, trainable=run.params.trainable,
                    train_full_loss=full_train.loss(), train_skipped_loss=before_train.loss(),
                    train_recovered_loss=after_train.loss(),
                    train_recovered_fraction=recovered_fraction(full_train.loss(), before_train.loss(),
                                                                after_train.loss()),
                    full_losses=full.losses(), skipped_losses=before.losses(), recovered_losses=after.losses(),
                    families=[s.family for s in after.scores])


def _with_fingerprint(lm: LoadedModel, tag: str) -> LoadedModel:
    import dataclasses
    import hashlib

    return dataclasses.replace(lm, fingerprint=hashlib.sha256(f"{lm.fingerprint}|{tag}".encode()).hexdigest()[:16])
