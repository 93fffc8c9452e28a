"""Where a LoRA adapter goes (layer choice per strategy, modules) and its life cycle on a loaded model.

Layer strategies (all return sorted layer indices):

* ``seed``: the seed's fixed layers [2, 7, 9], clipped to the model's depth (its atlas lookup never matched);
* ``atlas``: the top-k layers by a per-layer importance (any atlas: the engine only sees a list of floats);
* ``random``: k layers drawn uniformly with a seed (random-matched: same k, same modules, same parameters);
* ``all``: every layer.

Life cycle: :func:`attached` wraps the model in a PEFT ``PeftModel`` (``get_peft_model``) and *unloads* it on
exit, so the base model is the same pristine object afterwards (no stacked adapters between runs);
:func:`adapted` re-attaches a trained adapter's weights; :func:`from_saved` loads a ``save_pretrained``
directory with ``PeftModel.from_pretrained``. Each yields a :class:`~engine.models.LoadedModel` whose ``model``
is the PeftModel; ``ArchAdapter`` unwraps it (``get_base_model``), so nothing reaches base-model attributes
through the wrapper (block G3's bug class).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.models import LoadedModel

SEED_LAYERS: tuple[int, ...] = (2, 7, 9)
ALL_LINEAR: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "all-linear": ALL_LINEAR,
    "attn": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
    "seed": ("o", "up", "down"),  # the seed's atlas-guided / random-matched modules
}
STRATEGIES = ("seed", "atlas", "random", "all")
ADAPTER_NAME = "default"


class LoraError(RuntimeError):
    """A LoRA adapter cannot be built, trained or loaded; the message says which and why."""


# ------------------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class LoraTarget:
    """Which modules of which decoder layers get a LoRA adapter, and its rank/scale.

    ``modules`` are the ArchAdapter's short names (q, k, v, o, gate, up, down). ``label`` names the strategy
    (e.g. "atlas", "random-3", "all-linear") for reports.
    """

    layers: tuple[int, ...]
    modules: tuple[str, ...]
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    label: str = ""

    def __post_init__(self) -> None:
        layers = tuple(int(layer) for layer in self.layers)
        if not layers:
            raise LoraError(f"LoRA target {self.label or '?'}: no layers")
        if len(set(layers)) != len(layers) or list(layers) != sorted(layers) or layers[0] < 0:
            raise LoraError(f"LoRA target {self.label or '?'}: layers must be distinct, sorted, >= 0, got {layers}")
        modules = tuple(self.modules)
        if not modules or len(set(modules)) != len(modules):
            raise LoraError(f"LoRA target {self.label or '?'}: modules must be distinct and non-empty, got {modules}")
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise LoraError(f"LoRA target {self.label or '?'}: need r >= 1, alpha > 0, 0 <= dropout < 1")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "modules", modules)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "modules": list(self.modules), "r": self.r, "alpha": self.alpha,
                "dropout": self.dropout, "label": self.label}


def modules_for(name_or_modules: str | Sequence[str]) -> tuple[str, ...]:
    """A module group name ("all-linear", "attn", "mlp", "seed"), a short name ("o"), or a list of them."""
    if isinstance(name_or_modules, str):
        if name_or_modules in MODULE_GROUPS:
            return MODULE_GROUPS[name_or_modules]
        if name_or_modules in ALL_LINEAR:
            return (name_or_modules,)
        raise LoraError(f"unknown module group {name_or_modules!r}: choose from {sorted(MODULE_GROUPS)} "
                        f"or one of {', '.join(ALL_LINEAR)}")
    return tuple(name_or_modules)


def _check_importance(importance: Sequence[float], where: str) -> list[float]:
    values = [float(v) for v in importance]
    if not values:
        raise LoraError(f"{where}: the per-layer importance is empty")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise LoraError(f"{where}: the per-layer importance is not finite at layer(s) {bad}")
    return values


def _check_k(k: int, n_layers: int, where: str) -> None:
    if not 1 <= k <= n_layers:
        raise LoraError(f"{where}: k={k} must be between 1 and the number of layers ({n_layers})")


def seed_layers(n_layers: int) -> tuple[int, ...]:
    """The seed's fixed atlas-guided layers [2, 7, 9], clipped to ``n_layers`` (duplicates removed)."""
    if n_layers < 1:
        raise LoraError(f"seed_layers: n_layers must be >= 1, got {n_layers}")
    return tuple(sorted({min(layer, n_layers - 1) for layer in SEED_LAYERS}))


def atlas_layers(importance: Sequence[float], k: int) -> tuple[int, ...]:
    """The ``k`` most important layers (ties broken towards the lower index), sorted by index."""
    values = _check_importance(importance, "atlas_layers")
    _check_k(k, len(values), "atlas_layers")
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return tuple(sorted(order[:k]))


def least_important_layers(importance: Sequence[float], k: int, *, exclude: Sequence[int] = ()) -> tuple[int, ...]:
    """The ``k`` least important layers (ties towards the higher index), never one of ``exclude``; sorted."""
    values = _check_importance(importance, "least_important_layers")
    pool = [i for i in range(len(values)) if i not in set(exclude)]
    _check_k(k, len(pool), "least_important_layers")
    order = sorted(pool, key=lambda i: (values[i], -i))
    return tuple(sorted(order[:k]))


def random_layers(n_layers: int, k: int, seed: int, *, exclude: Sequence[int] = ()) -> tuple[int, ...]:
    """``k`` distinct layers drawn uniformly (``random.Random(seed).sample``) from those not in ``exclude``."""
    pool = [i for i in range(n_layers) if i not in set(exclude)]
    _check_k(k, len(pool), "random_layers")
    return tuple(sorted(random.Random(seed).sample(pool, k)))


def random_draws(n_layers: int, k: int, n_draws: int, *, seed: int = 0, exclude: Sequence[int] = (),
                 first: Sequence[Sequence[int]] = (), avoid: Sequence[Sequence[int]] = ()) -> list[tuple[int, ...]]:
    """``n_draws`` distinct random layer sets (as many as exist when fewer than ``n_draws`` do).

    ``first``: draws to start with (e.g. the seed protocol's single draw, so that both protocols share it);
    ``avoid``: layer sets never returned (e.g. the atlas-guided set a random-matched distribution is compared with).
    """
    avoided = {tuple(sorted(int(l) for l in draw)) for draw in avoid}
    pool = n_layers - len(set(exclude))
    possible = math.comb(pool, k) if 1 <= k <= pool else 0
    _check_k(k, pool, "random_draws")
    draws: list[tuple[int, ...]] = []
    for draw in first:
        draw = tuple(sorted(int(l) for l in draw))
        if len(draw) != k or len(set(draw)) != k or set(draw) & set(exclude) or not all(0 <= l < n_layers for l in draw):
            raise LoraError(f"random_draws: the given first draw {draw} is not {k} distinct allowed layers")
        if draw not in draws and draw not in avoided and len(draws) < n_draws:
            draws.append(draw)
    attempt = 0
    possible -= len({d for d in avoided if len(d) == k and not set(d) & set(exclude)})
    while len(draws) < min(n_draws, possible):
        draw = random_layers(n_layers, k, seed * 100_003 + attempt, exclude=exclude)
        if draw not in draws and draw not in avoided:
            draws.append(draw)
        attempt += 1
    return draws


def select_layers(strategy: str, n_layers: int, *, k: int = 3, importance: Sequence[float] | None = None,
                  seed: int = 42) -> tuple[int, ...]:
    """Layers for a strategy: ``seed`` ([2, 7, 9] clipped), ``atlas`` (top-k of ``importance``),
    ``random`` (k drawn with ``seed``) or ``all``."""
    if strategy == "seed":
        return seed_layers(n_layers)
    if strategy == "atlas":
        if importance is None:
            raise LoraError("strategy 'atlas' needs the per-layer importance (a list of floats from an atlas)")
        if len(importance) != n_layers:
            raise LoraError(f"strategy 'atlas': importance has {len(importance)} values, the model {n_layers} layers")
        return atlas_layers(importance, k)
    if strategy == "random":
        return random_layers(n_layers, k, seed)
    if strategy == "all":
        return tuple(range(n_layers))
    raise LoraError(f"unknown layer strategy {strategy!r}: choose from {', '.join(STRATEGIES)}")


# ------------------------------------------------------------------------------------------------ PEFT config


def _leaf_names(lm: LoadedModel, modules: Sequence[str]) -> list[str]:
    unknown = [m for m in modules if m not in lm.adapter.module_names]
    if unknown:
        raise LoraError(f"{lm.key}: unknown module(s) {unknown}; choose from {sorted(lm.adapter.module_names)}")
    return [lm.adapter.module_names[m].rsplit(".", 1)[-1] for m in modules]


def lora_config(lm: LoadedModel, target: LoraTarget):
    """The ``peft.LoraConfig`` for ``target`` on ``lm`` (``layers_to_transform`` + module leaf names)."""
    from peft import LoraConfig

    if target.layers[-1] >= lm.n_layers:
        raise LoraError(f"{lm.key}: LoRA target {target.label or '?'} names layer {target.layers[-1]}, "
                        f"the model has {lm.n_layers} layers")
    return LoraConfig(
        r=target.r, lora_alpha=target.alpha, lora_dropout=target.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=_leaf_names(lm, target.modules), layers_to_transform=list(target.layers),
        layers_pattern=lm.adapter.layers_path.rsplit(".", 1)[-1],
    )


# ------------------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class ParamCount:
    """Trainable LoRA parameters: PEFT's own count, the hand formula r*(in+out) per module, and the share.

    ``percent`` follows PEFT's ``print_trainable_parameters`` (trainable / all parameters of the adapted model,
    LoRA included), which is the convention of the seed's "0.065%" and "0.88%".
    """

    trainable: int  # PEFT: get_nb_trainable_parameters()[0] (LoRA parameters of an inference-mode adapter)
    total: int  # PEFT: get_nb_trainable_parameters()[1] (base + LoRA)
    formula: int  # sum over adapted modules of r * (in_features + out_features)
    n_modules: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    @property
    def base(self) -> int:
        return self.total - self.trainable

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "total": self.total, "formula": self.formula,
                "n_modules": self.n_modules, "percent": self.percent}


def _features(module: nn.Module, where: str) -> tuple[int, int]:
    base = getattr(module, "base_layer", module)  # an already wrapped LoRA layer keeps its base in base_layer
    try:
        return int(base.in_features), int(base.out_features)
    except AttributeError:
        raise LoraError(f"{where} is a {type(base).__name__} without in_features/out_features: "
                        "LoRA targets linear projections only") from None


def expected_parameters(lm: LoadedModel, target: LoraTarget) -> tuple[int, int]:
    """(parameters, modules) by the hand formula: r * (in_features + out_features) per adapted module."""
    layers = lm.adapter.layers(lm.model)
    total = count = 0
    for index in target.layers:
        for name in target.modules:
            fan_in, fan_out = _features(lm.adapter.module(layers[index], name), f"{lm.key} layer {index} {name}")
            total += target.r * (fan_in + fan_out)
            count += 1
    return total, count


def matched_ranks(lm: LoadedModel, modules: Sequence[str], layers: Sequence[int], *, reference: str = "o",
                  r: int = 8, tolerance: float = 0.05, max_r: int | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """Ranks per module so that the modules' adapters on ``layers`` (and ``reference``'s) have the same trainable
    parameter count within ``tolerance`` (the largest at most 1 + tolerance times the smallest): (ranks, counts by
    the hand formula r * (in + out)).

    The reference rank starts at ``r`` and rises (up to ``max_r``, default 4 r) until every module has an integer
    rank within the tolerance of the reference count (LORA-OPROJ's "matched trainable parameters"): e.g. on
    SmolLM2-135M o_proj at r=8 (9,216 per layer) has no MLP rank within 5% (r=4: 8,448; r=5: 10,560), at r=9 it has.
    """
    layers = tuple(layers)
    blocks = lm.adapter.layers(lm.model)

    def per_rank(name: str) -> int:
        return sum(sum(_features(lm.adapter.module(blocks[i], name), f"{lm.key} layer {i} {name}")) for i in layers)

    unit = {m: per_rank(m) for m in dict.fromkeys([reference, *modules])}
    for r0 in range(r, (max_r or 4 * r) + 1):
        budget = r0 * unit[reference]
        ranks = {m: max(1, round(budget / unit[m])) for m in unit}
        counts = {m: ranks[m] * unit[m] for m in unit}
        if max(counts.values()) <= (1 + tolerance) * min(counts.values()):  # every pair, o_proj included
            return {m: ranks[m] for m in modules}, {m: counts[m] for m in modules}
    raise LoraError(f"{lm.key}: no reference rank in {r}..{max_r or 4 * r} gives every module of {list(modules)} "
                    f"a parameter count within {tolerance:.0%} of {reference}'s")


def count_parameters(alm: LoadedModel, target: LoraTarget) -> ParamCount:
    """PEFT's count for an attached adapter, checked against the hand formula (a mismatch is an error).

    PEFT's ``get_nb_trainable_parameters`` counts parameters with ``requires_grad``; an adapter loaded for
    inference (``from_saved``) has none, so its LoRA parameters are counted by name and PEFT's count must be
    either that number or 0.
    """
    peft_trainable, total = alm.model.get_nb_trainable_parameters()
    adapter = sum(p.numel() for name, p in alm.model.named_parameters() if "lora_" in name)
    if peft_trainable not in (adapter, 0):
        raise LoraError(f"{alm.key}: PEFT counts {peft_trainable} trainable parameters but the adapter has {adapter}: "
                        "something besides the LoRA weights is trainable")
    formula, n_modules = expected_parameters(alm, target)
    if adapter != formula:
        raise LoraError(f"{alm.key}: PEFT counts {adapter} LoRA parameters for {target.label or target}, "
                        f"the formula r*(in+out) over {n_modules} modules gives {formula}: the adapter is not on "
                        "the intended modules")
    return ParamCount(trainable=int(adapter), total=int(total), formula=formula, n_modules=n_modules)


# ------------------------------------------------------------------------------------------------ life cycle


def is_adapted(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT wrapper or carries injected adapter layers."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(model, PeftModel) or hasattr(model, "peft_config"):
        return True
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _check_pristine(lm: LoadedModel) -> None:
    if is_adapted(lm.model):
        raise LoraError(f"{lm.key}: the model already carries a PEFT adapter; attach a new one only to a pristine "
                        "base model (leave the previous `attached`/`adapted`/`from_saved` block first)")


def adapter_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A short content hash of adapter weights (names, shapes and values)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def adapter_state(model: LoadedModel | nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of an attached adapter's weights (PEFT's ``get_peft_model_state_dict``)."""
    from peft import get_peft_model_state_dict

    peft_model = model.model if isinstance(model, LoadedModel) else model
    return {name: t.detach().to("cpu").clone() for name, t in get_peft_model_state_dict(peft_model).items()}


def _view(lm: LoadedModel, peft_model: nn.Module, tag: str) -> LoadedModel:
    # The adapted model is another model: caches keyed by fingerprint must not mix it up with its base.
    fingerprint = hashlib.sha256(f"{lm.fingerprint}|lora|{tag}".encode()).hexdigest()[:16]
    return dataclasses.replace(lm, model=peft_model, fingerprint=fingerprint)


def _restore(lm: LoadedModel, peft_model: nn.Module, was_training: bool) -> None:
    base = peft_model.unload()
    if base is not lm.model:
        raise LoraError(f"{lm.key}: PEFT unload returned another model object than the base")
    if is_adapted(base):
        raise LoraError(f"{lm.key}: adapter layers remain after unload")
    base.train(was_training)
    base.requires_grad_(False)


@contextmanager
def attached(lm: LoadedModel, target: LoraTarget, *, state: Mapping[str, torch.Tensor] | None = None,
             prepare_kbit: bool = True, gradient_checkpointing: bool = False) -> Iterator[LoadedModel]:
    """``get_peft_model`` on ``lm.model`` for the duration of the block; the adapter is removed on exit.

    With ``state`` the adapter's weights are loaded (``set_peft_model_state_dict``) and it is put in eval
    mode; without, it is freshly initialised (LoRA B = 0, so the model is unchanged until trained). A quantised
    base (``lm.quant``) goes through ``peft.prepare_model_for_kbit_training`` first (QLoRA).
    """
    from peft import get_peft_model, prepare_model_for_kbit_training, set_peft_model_state_dict

    _check_pristine(lm)
    config = lora_config(lm, target)
    was_training = lm.model.training
    if lm.quant and prepare_kbit:
        prepare_model_for_kbit_training(lm.model, use_gradient_checkpointing=gradient_checkpointing)
    peft_model = get_peft_model(lm.model, config)
    try:
        tag = f"fresh|{target.to_dict()}"
        if state is not None:
            result = set_peft_model_state_dict(peft_model, dict(state))
            missing = [k for k in result.missing_keys if "lora_" in k]
            if missing or result.unexpected_keys:
                raise LoraError(f"{lm.key}: adapter weights do not fit target {target.label or target}: "
                                f"missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}")
            peft_model.eval()
            tag = adapter_digest(state)
        yield _view(lm, peft_model, tag)
    finally:
        _restore(lm, peft_model, was_training)


@contextmanager
def adapted(lm: LoadedModel, run) -> Iterator[LoadedModel]:
    """``lm`` with a trained adapter (a :class:`~engine.lora.training.LoraRun`) attached, in eval mode."""
    with attached(lm, run.target, state=run.state, prepare_kbit=False) as alm:
        yield alm


@contextmanager
def from_saved(lm: LoadedModel, path: str | Path) -> Iterator[LoadedModel]:
    """Load a ``save_pretrained`` adapter directory with ``PeftModel.from_pretrained`` onto ``lm.model``.

    ``lm.model`` must be pristine (no adapter attached): each checkpoint is loaded on a clean base, never on
    top of another adapter. The adapter is removed on exit.
    """
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise LoraError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
    _check_pristine(lm)
    was_training = lm.model.training
    peft_model = PeftModel.from_pretrained(lm.model, str(path), is_trainable=False, trust_remote_code=False)
    try:
        peft_model.eval()
        yield _view(lm, peft_model, adapter_digest(adapter_state(peft_model)))
    finally:
        _restore(lm, peft_model, was_training)


def lora_layers_by_layer(alm: LoadedModel) -> dict[int, list[nn.Module]]:
    """Decoder layer index -> the LoRA-wrapped modules inside it (found through the ArchAdapter)."""
    from peft.tuners.lora import LoraLayer

    out: dict[int, list[nn.Module]] = {}
    for index, layer in enumerate(alm.adapter.layers(alm.model)):
        found = [m for m in layer.modules() if isinstance(m, LoraLayer)]
        if found:
            out[index] = found
    return out


@contextmanager
def adapter_disabled_at(alm: LoadedModel, layers: Sequence[int]) -> Iterator[None]:
    """Switch the adapter's delta off in the given decoder layers only (PEFT's per-module ``enable_adapters``)."""
    by_layer = lora_layers_by_layer(alm)
    missing = [layer for layer in layers if layer not in by_layer]
    if missing:
        raise LoraError(f"{alm.key}: no LoRA modules in layer(s) {missing} (adapted layers: {sorted(by_layer)})")
    modules = [m for layer in layers for m in by_layer[layer]]
    grads = [[p.requires_grad for p in m.parameters()] for m in modules]
    for module in modules:
        module.enable_adapters(False)
    try:
        yield
    finally:
        for module, flags in zip(modules, grads):
            module.enable_adapters(True)
            for param, flag in zip(module.parameters(), flags):
                param.requires_grad_(flag)
