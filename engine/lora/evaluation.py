"""Loss and accuracy of a (possibly adapted) model on target tokens, per example and per family.

* loss: mean negative log-likelihood of the target tokens given the prompt (teacher forcing), per example,
  then averaged over the examples of a family;
* ``tf_exact``: every target *text* token is the argmax under teacher forcing - equivalent to "greedy decoding
  starts with the target" (the seed's exact-prefix match), at the cost of one forward pass;
* ``accuracy``: the suite's scorer (:func:`engine.tasks.score`) on a greedy generation (``generate=True``).

Only the logits at target positions are computed (``logits_to_keep`` with a boolean mask), which matters for
vocabularies of 49K-262K tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.models import LoadedModel
from engine.tasks import Example, render, score

from .data import TokenBatch, batches, pad_id, prompt_batches


_MASK_LOGITS: dict[type, bool] = {}  # model class -> whether it accepts a boolean logits_to_keep mask


def logits_at(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              keep: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, vocab]`` at the positions where ``keep`` ([B, T] bool) is True, row-major.

    transformers >= 5.2x accepts the boolean mask as ``logits_to_keep`` (the LM head then runs only there, which
    matters for 49K-262K vocabularies); older versions index with it and fail, so the full logits are computed
    and masked instead (remembered per model class).
    """
    kind = type(model)
    if _MASK_LOGITS.get(kind, True):
        try:
            logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep,
                           use_cache=False).logits
        except (IndexError, TypeError, RuntimeError):
            logits = None
        if logits is not None and logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
            _MASK_LOGITS[kind] = True
            return logits
        _MASK_LOGITS[kind] = False
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logits[keep]


def target_logits(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Float32 logits ``[N, vocab]`` at the batch's predict positions, row-major (matches ``batch.targets``)."""
    return logits_at(model, batch.input_ids, batch.attention_mask, batch.predict_mask).float()


def batch_loss(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Mean cross-entropy over the batch's target tokens (the training objective)."""
    return F.cross_entropy(target_logits(model, batch), batch.targets)


@dataclass(frozen=True)
class ExampleScore:
    example_id: str
    family: str
    loss: float  # mean NLL per target token (EOS included when appended)
    n_tokens: int
    tf_exact: bool  # greedy decoding would start with the target text
    completion: str | None = None
    correct: bool | None = None  # the suite's scorer on the greedy completion


@torch.no_grad()
def score_batch(model: torch.nn.Module, batch: TokenBatch) -> list[tuple[float, int, bool]]:
    """Per row: (mean target NLL, number of target tokens, teacher-forced exact match of the text tokens)."""
    logits = target_logits(model, batch)
    targets = batch.targets
    nll = F.cross_entropy(logits, targets, reduction="none")
    rows = batch.predict_mask.nonzero()[:, 0]
    is_text = batch.text_mask[batch.predict_mask]
    wrong = ((logits.argmax(-1) != targets) & is_text).float()
    n = len(batch)
    sums = torch.zeros(n, device=nll.device).index_add_(0, rows, nll)
    counts = torch.bincount(rows, minlength=n)
    misses = torch.zeros(n, device=nll.device).index_add_(0, rows, wrong)
    return [(float(sums[i] / counts[i]), int(counts[i]), bool(misses[i] == 0)) for i in range(n)]


@dataclass(frozen=True)
class EvalResult:
    """Per-example scores plus per-family summaries (families in first-appearance order)."""

    scores: tuple[ExampleScore, ...]
    generated: bool

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(s.family for s in self.scores))

    def _select(self, family: str | None) -> list[ExampleScore]:
        chosen = [s for s in self.scores if family is None or s.family == family]
        if not chosen:
            raise KeyError(f"no evaluated examples of family {family!r} (families: {self.families})")
        return chosen

    def loss(self, family: str | None = None) -> float:
        return float(np.mean([s.loss for s in self._select(family)]))

    def tf_exact(self, family: str | None = None) -> float:
        return float(np.mean([s.tf_exact for s in self._select(family)]))

    def accuracy(self, family: str | None = None) -> float | None:
        if not self.generated:
            return None
        return float(np.mean([bool(s.correct) for s in self._select(family)]))

    def losses(self, family: str | None = None) -> list[float]:
        return [s.loss for s in self._select(family)]

    def by_family(self) -> dict[str, dict]:
        return {f: {"loss": self.loss(f), "tf_exact": self.tf_exact(f), "accuracy": self.accuracy(f),
                    "n": len(self._select(f))} for f in self.families}

    def to_dict(self) -> dict:
        return {"generated": self.generated, "by_family": self.by_family(),
                "examples": [asdict(s) for s in self.scores]}

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        """The result :meth:`to_dict` wrote (the per-family summaries are recomputed from the examples)."""
        return cls(scores=tuple(ExampleScore(**s) for s in data["examples"]), generated=bool(data["generated"]))


@torch.no_grad()
def greedy_completions(lm: LoadedModel, examples: Sequence[Example], *, template: str = "auto",
                       max_new_tokens: int | None = None, batch_size: int = 8) -> list[str]:
    """Greedy continuations of the rendered prompts (left-padded batches, ``generate``), special tokens removed.

    ``max_new_tokens`` defaults to the longest target (in tokens) of each batch plus 2.
    """
    tokenizer, model = lm.tokenizer, lm.model
    pad = pad_id(tokenizer)
    out: list[str] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [render(tokenizer, ex, template=template).input_ids for ex in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        budget = max_new_tokens or max(len(tokenizer(ex.target, add_special_tokens=False)["input_ids"])
                                       for ex in chunk) + 2
        generated = model.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                                   max_new_tokens=budget, do_sample=False, pad_token_id=pad,
                                   top_p=None, top_k=None, temperature=None)
        for row in range(len(chunk)):
            out.append(tokenizer.decode(generated[row, width:], skip_special_tokens=True))
    return out


@torch.no_grad()
def evaluate(lm: LoadedModel, examples: Sequence[Example], *, batch_size: int = 8, template: str = "auto",
             append_eos: bool = False, max_len: int | None = None, generate: bool = False,
             max_new_tokens: int | None = None) -> EvalResult:
    """Loss and teacher-forced exact match of each example (and the scorer on greedy output if ``generate``)."""
    model = lm.model
    was_training = model.training
    model.eval()
    try:
        rows: list[tuple[float, int, bool]] = []
        for batch in batches(lm.tokenizer, examples, batch_size=batch_size, template=template,
                             append_eos=append_eos, max_len=max_len):
            rows.extend(score_batch(model, batch.to(lm.device)))
        completions: list[str | None] = [None] * len(examples)
        correct: list[bool | None] = [None] * len(examples)
        if generate:
            completions = greedy_completions(lm, examples, template=template, max_new_tokens=max_new_tokens,
                                             batch_size=batch_size)
            correct = [bool(score(ex, text)) for ex, text in zip(examples, completions)]
    finally:
        model.train(was_training)
    scores = tuple(ExampleScore(example_id=ex.id, family=ex.family, loss=loss, n_tokens=n, tf_exact=exact,
                                completion=text, correct=ok)
                   for ex, (loss, n, exact), text, ok in zip(examples, rows, completions, correct))
    return EvalResult(scores=scores, generated=generate)


@torch.no_grad()
def answer_logits(lm: LoadedModel, examples: Sequence[Example], *, template: str = "auto",
                  batch_size: int = 8) -> torch.Tensor:
    """Float32 next-token logits ``[n, vocab]`` at each prompt's answer position (its last prompt token)."""
    model = lm.model
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for batch in prompt_batches(lm.tokenizer, examples, batch_size=batch_size, template=template):
            batch = batch.to(lm.device)
            keep = torch.zeros_like(batch.predict_mask)
            keep[torch.arange(len(batch)), batch.answer_pos] = True
            chunks.append(logits_at(model, batch.input_ids, batch.attention_mask, keep).float())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) in nats per row, from logits (float32 log-softmax)."""
    ref = F.log_softmax(reference.float(), dim=-1)
    oth = F.log_softmax(other.float(), dim=-1)
    return (ref.exp() * (ref - oth)).sum(-1)


def evaluate_cached(lm: LoadedModel, examples: Sequence[Example], *, run=None, **kwargs) -> EvalResult:
    """:func:`evaluate` through the results cache (``engine.cache.measured``): keyed on ``lm``'s identity (a skipped
    model carries its own fingerprint) and, with ``run`` (a trained :class:`~engine.lora.training.LoraRun`), on
    that adapter's weights, which are attached only when the result is computed."""
    from engine.cache import measured

    from .adapters import adapted, adapter_digest

    def compute() -> dict:
        if run is None:
            return evaluate(lm, examples, **kwargs).to_dict()
        with adapted(lm, run) as alm:
            return evaluate(alm, examples, **kwargs).to_dict()

    from engine import executors

    params = dict(kwargs, adapter=None if run is None else adapter_digest(run.state))
    remote = executors.remote(eval_json, lm, list(examples), run, kwargs, label=f"lora-eval {lm.key}")
    return EvalResult.from_dict(measured("lora-eval", lm, examples, compute, remote=remote, **params))


def eval_json(lm: LoadedModel, examples: Sequence[Example], run, kwargs: dict) -> dict:
    """The cached payload of :func:`evaluate_cached`, computed in this process (a measurement executor's worker)."""
    from .adapters import adapted

    if run is None:
        return evaluate(lm, examples, **kwargs).to_dict()
    with adapted(lm, run) as alm:
        return evaluate(alm, examples, **kwargs).to_dict()
