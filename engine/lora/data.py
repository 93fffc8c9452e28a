"""Token data for LoRA training and evaluation: prompt + target sequences, prompt-masked labels, padded batches.

Each example becomes ``rendered prompt ids + target ids (+ EOS)``; the loss is taken on the target tokens only
(never on the prompt, never on padding). Batches are right-padded: every real token keeps its natural position
(0, 1, 2, ...), so no position ids have to be derived from the mask, and the positions whose logits are needed
are selected with a boolean mask (``predict_mask``) that the model's ``logits_to_keep`` accepts directly.

:func:`make_loader` is the one DataLoader used for training (block G4's "recovery finetune DataLoader" bug
class): it keeps the last partial batch, refuses an empty example list or an empty family with a message that
names it, and pads each batch to its own longest sequence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader

from engine.tasks import Example, render

IGNORE = -100  # label of a position that carries no loss (prompt or padding)


class LoraDataError(ValueError):
    """Examples cannot be turned into LoRA training data; the message names the example, family or field."""


@dataclass(frozen=True)
class Encoded:
    """One tokenised example: ``input_ids[:n_prompt]`` is the rendered prompt, the rest is the target.

    ``n_eos`` is 1 when an EOS token was appended to the target (it is trained on, but it is not part of the
    target text, so teacher-forced exact match ignores it).
    """

    example_id: str
    family: str
    input_ids: tuple[int, ...]
    n_prompt: int
    n_eos: int = 0
    truncated: int = 0  # prompt tokens dropped from the left to fit max_len

    @property
    def n_target(self) -> int:
        return len(self.input_ids) - self.n_prompt


def pad_id(tokenizer) -> int:
    """The id used for padding (the tokenizer's pad token, else EOS); padding never reaches the loss."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise LoraDataError("the tokenizer has neither a pad nor an EOS token: cannot pad batches")


def encode(tokenizer, example: Example, *, template: str = "auto", append_eos: bool = False,
           max_len: int | None = None) -> Encoded:
    """Tokenise ``example``: the suite's rendering of the prompt, then the target's tokens (+ EOS).

    The target is tokenised on its own (no special tokens) and appended, so the prompt tokens are exactly
    those of :func:`engine.tasks.render` (the ones evaluated and generated from). With ``max_len``, a too-long
    prompt loses tokens from the left (the BOS token, if any, is kept); a target that cannot fit is an error.
    """
    if not example.target:
        raise LoraDataError(f"example {example.id!r} (family {example.family!r}) has no target: "
                            "LoRA trains on the target text")
    rendered = render(tokenizer, example, template=template)
    prompt = list(rendered.input_ids)
    target = list(tokenizer(example.target, add_special_tokens=False)["input_ids"])
    if not target:
        raise LoraDataError(f"example {example.id!r}: target {example.target!r} tokenises to nothing")
    n_eos = 0
    if append_eos:
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise LoraDataError("append_eos=True but the tokenizer has no EOS token")
        target.append(int(eos))
        n_eos = 1
    truncated = 0
    if max_len is not None:
        keep_bos = 1 if rendered.bos_pos == 0 else 0
        room = max_len - len(target) - keep_bos
        if room < 1:
            raise LoraDataError(f"example {example.id!r}: its target has {len(target)} tokens, which leaves no room "
                                f"for the prompt within max_len={max_len}")
        if len(prompt) > room + keep_bos:
            truncated = len(prompt) - room - keep_bos
            prompt = prompt[:keep_bos] + prompt[keep_bos + truncated:]
    return Encoded(example_id=example.id, family=example.family, input_ids=tuple(prompt + target),
                   n_prompt=len(prompt), n_eos=n_eos, truncated=truncated)


def encode_all(tokenizer, examples: Sequence[Example], **kwargs) -> list[Encoded]:
    """:func:`encode` for each example (refuses an empty list)."""
    if not examples:
        raise LoraDataError("no examples given: nothing to encode")
    return [encode(tokenizer, ex, **kwargs) for ex in examples]


@dataclass
class TokenBatch:
    """A right-padded batch. ``predict_mask[b, t]`` is True where the logits at t predict a target token
    (``input_ids[b, t + 1]``); ``text_mask`` is the same without the appended EOS; ``answer_pos[b]`` is the
    last prompt position of row b."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    labels: torch.Tensor  # [B, T] long: the token itself on target positions, IGNORE on prompt and padding
    predict_mask: torch.Tensor  # [B, T] bool
    text_mask: torch.Tensor  # [B, T] bool
    answer_pos: torch.Tensor  # [B] long
    example_ids: tuple[str, ...]
    families: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> "TokenBatch":
        move = {name: getattr(self, name).to(device) for name in
                ("input_ids", "attention_mask", "labels", "predict_mask", "text_mask", "answer_pos")}
        return TokenBatch(**move, example_ids=self.example_ids, families=self.families)

    @property
    def targets(self) -> torch.Tensor:
        """The target tokens in the order of ``logits[predict_mask]`` (row-major)."""
        return self.input_ids[:, 1:][self.predict_mask[:, :-1]]

    @property
    def n_target_tokens(self) -> int:
        return int(self.predict_mask.sum())


def collate(items: Sequence[Encoded], pad: int) -> TokenBatch:
    """Right-pad ``items`` to the longest one; labels are IGNORE on the prompt and on padding."""
    if not items:
        raise LoraDataError("collate: empty batch")
    width = max(len(item.input_ids) for item in items)
    n = len(items)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    predict = torch.zeros((n, width), dtype=torch.bool)
    text = torch.zeros((n, width), dtype=torch.bool)
    answer = torch.zeros(n, dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item.input_ids)
        input_ids[row, :length] = torch.tensor(item.input_ids, dtype=torch.long)
        attention[row, :length] = 1
        labels[row, item.n_prompt:length] = input_ids[row, item.n_prompt:length]
        # logits at t predict token t+1: target tokens n_prompt .. length-1 are predicted at n_prompt-1 .. length-2
        predict[row, item.n_prompt - 1:length - 1] = True
        text[row, item.n_prompt - 1:length - 1 - item.n_eos] = True
        answer[row] = item.n_prompt - 1
    return TokenBatch(input_ids=input_ids, attention_mask=attention, labels=labels, predict_mask=predict,
                      text_mask=text, answer_pos=answer, example_ids=tuple(i.example_id for i in items),
                      families=tuple(i.family for i in items))


def with_padding_labels(batch: TokenBatch, pad: int, width: int | None = None) -> TokenBatch:
    """The seed protocol's labels: ``batch`` right-padded to ``width`` (default: its own width) with the padding
    positions carrying a loss (predicting the pad token), as the seed's unmasked ``labels = input_ids`` did; the
    prompt stays masked, the attention mask still excludes the padding."""
    n, current = batch.input_ids.shape
    width = max(int(width or current), current)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    input_ids[:, :current] = batch.input_ids
    attention[:, :current] = batch.attention_mask
    lengths = batch.attention_mask.sum(1)
    predict = torch.zeros((n, width), dtype=torch.bool)
    text = torch.zeros((n, width), dtype=torch.bool)
    predict[:, :current] = batch.predict_mask
    text[:, :current] = batch.text_mask
    for row in range(n):
        predict[row, int(lengths[row]) - 1:width - 1] = True  # the last real token predicts the first pad, ...
    labels = torch.where(predict.roll(1, dims=1), input_ids, torch.full_like(input_ids, IGNORE))
    return TokenBatch(input_ids=input_ids, attention_mask=attention, labels=labels, predict_mask=predict,
                      text_mask=text, answer_pos=batch.answer_pos, example_ids=batch.example_ids,
                      families=batch.families)


def check_families(examples: Sequence[Example], families: Sequence[str] | None) -> list[Example]:
    """The examples of ``families`` (all when None); an empty list or a family without examples is an error."""
    if not examples:
        raise LoraDataError("no examples given: the training set is empty")
    if families is None:
        return list(examples)
    if isinstance(families, str):
        raise LoraDataError("families must be a list of family names, not a string")
    present = Counter(ex.family for ex in examples)
    empty = [family for family in families if present[family] == 0]
    if empty:
        have = ", ".join(f"{name} ({count})" for name, count in sorted(present.items()))
        raise LoraDataError(f"family {empty[0]!r} has no examples in the training set"
                            + (f" (also empty: {', '.join(empty[1:])})" if len(empty) > 1 else "")
                            + f"; families present: {have}")
    wanted = set(families)
    return [ex for ex in examples if ex.family in wanted]


def make_loader(tokenizer, examples: Sequence[Example], *, batch_size: int, families: Sequence[str] | None = None,
                shuffle: bool = True, seed: int = 0, template: str = "auto", append_eos: bool = False,
                max_len: int | None = None) -> DataLoader:
    """The training DataLoader: shuffled with its own seeded generator, last partial batch kept.

    ``len(loader)`` is ``ceil(n / batch_size)``; every example appears exactly once per epoch. Each batch is a
    :class:`TokenBatch` padded to its own longest sequence.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise LoraDataError(f"batch_size must be a positive integer, got {batch_size!r}")
    chosen = check_families(examples, families)
    encoded = encode_all(tokenizer, chosen, template=template, append_eos=append_eos, max_len=max_len)
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(encoded, batch_size=batch_size, shuffle=shuffle, drop_last=False, generator=generator,
                      collate_fn=partial(collate, pad=pad_id(tokenizer)), num_workers=0)


def batches(tokenizer, examples: Sequence[Example], *, batch_size: int = 8, template: str = "auto",
            append_eos: bool = False, max_len: int | None = None) -> list[TokenBatch]:
    """Evaluation batches in the examples' order (no shuffling)."""
    loader = make_loader(tokenizer, examples, batch_size=batch_size, shuffle=False, template=template,
                         append_eos=append_eos, max_len=max_len)
    return list(loader)


def prompt_batches(tokenizer, examples: Sequence[Example], *, batch_size: int = 8,
                   template: str = "auto") -> list[TokenBatch]:
    """Right-padded batches of the rendered prompts alone (no target), for answer-position logits."""
    if not examples:
        raise LoraDataError("no examples given: nothing to encode")
    items = []
    for ex in examples:
        ids = tuple(render(tokenizer, ex, template=template).input_ids)
        items.append(Encoded(example_id=ex.id, family=ex.family, input_ids=ids, n_prompt=len(ids)))
    pad = pad_id(tokenizer)
    return [collate(items[i:i + batch_size], pad) for i in range(0, len(items), batch_size)]
