"""Batches: rendering and left-padding prompts (``encode``), position classes and aligned donor gathers."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Iterator, Sequence, Union

import torch
from torch import Tensor

from engine import settings

from .errors import InterventionError

POSITION_CLASSES = ("bos", "first", "body", "answer", "last3", "prompt", "last", "all")
# Aliases accepted by ``Batch.position_mask``: the names for the seed's classes.
POSITION_ALIASES = {"prompt": "body", "last": "answer", "all": None}
# Position classes used by mean / resample: the first token (BOS or attention sink), the body, the answer.
CLASS_FIRST, CLASS_BODY, CLASS_ANSWER = 0, 1, 2
N_CLASSES = 3

Positions = Union[None, str, Sequence[int], Sequence[Sequence[int]]]


@dataclass
class Batch:
    """A left-padded batch of rendered prompts.

    ``answer_pos``, ``start`` and ``bos_pos`` are in padded coordinates (``bos_pos`` is -1 where the tokenizer
    adds no BOS). ``index`` is each example's index in the list given to ``encode`` (kept by ``select``) and
    seeds per-example randomness, so noise and resample donors do not depend on batch composition.
    ``target_ids`` is the first token of each example's target (-1 for plain strings).
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    answer_pos: Tensor
    start: Tensor
    bos_pos: Tensor
    index: Tensor
    target_ids: Tensor
    families: list[str]
    ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def has_bos(self) -> bool:
        return bool((self.bos_pos >= 0).all())

    def model_inputs(self) -> dict[str, Tensor]:
        """Keyword arguments for the HF model forward (no KV cache: every forward is a fresh prompt)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids, "use_cache": False}

    def select(self, rows: Sequence[int] | Tensor, trim: bool = True) -> "Batch":
        """A sub-batch (same example indices); ``trim`` drops columns that are padding in every kept row."""
        rows_t = torch.as_tensor(list(rows) if not isinstance(rows, Tensor) else rows, dtype=torch.long)
        cut = int(self.start[rows_t].min()) if trim and len(rows_t) else 0
        pick = rows_t.tolist()
        return Batch(
            input_ids=self.input_ids[rows_t, cut:], attention_mask=self.attention_mask[rows_t, cut:],
            position_ids=self.position_ids[rows_t, cut:], answer_pos=self.answer_pos[rows_t] - cut,
            start=self.start[rows_t] - cut, bos_pos=torch.where(self.bos_pos[rows_t] >= 0, self.bos_pos[rows_t] - cut, -1),
            index=self.index[rows_t], target_ids=self.target_ids[rows_t],
            families=[self.families[i] for i in pick], ids=[self.ids[i] for i in pick],
            texts=[self.texts[i] for i in pick],
        )

    def chunks(self, size: int) -> Iterator["Batch"]:
        """Consecutive sub-batches of at most ``size`` examples, each trimmed of all-padding columns."""
        for lo in range(0, len(self), size):
            yield self.select(range(lo, min(lo + size, len(self))))

    def to(self, device: torch.device | str) -> "Batch":
        return replace(self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                       position_ids=self.position_ids.to(device))

    # ----- position classes (all [n, T] on the batch's CPU tensors, moved to the activation's device later)

    def real_mask(self) -> Tensor:
        return self.attention_mask.bool().cpu()

    def class_ids(self) -> Tensor:
        """[n, T] long: CLASS_FIRST / CLASS_BODY / CLASS_ANSWER for real tokens, -1 for padding."""
        n, T = self.input_ids.shape
        cols = torch.arange(T).expand(n, T)
        ids = torch.full((n, T), CLASS_BODY, dtype=torch.long)
        ids[cols == self.start[:, None]] = CLASS_FIRST
        ids[cols == self.answer_pos[:, None]] = CLASS_ANSWER
        ids[~self.real_mask()] = -1
        return ids

    def position_mask(self, positions: Positions) -> Tensor:
        """[n, T] bool mask of the token positions an edit applies to (never padding)."""
        n, T = self.input_ids.shape
        cols = torch.arange(T).expand(n, T)
        real = self.real_mask()
        if isinstance(positions, str) and positions in POSITION_ALIASES:
            positions = POSITION_ALIASES[positions]
        if positions is None:
            return real
        if isinstance(positions, str):
            if positions == "bos":
                if not self.has_bos:
                    raise InterventionError(
                        "positions='bos': this tokenizer adds no BOS token to (some of) these prompts; use "
                        "positions='first' for the first prompt token (what the seed called 'bos')")
                return cols == self.bos_pos[:, None]
            if positions == "first":
                return cols == self.start[:, None]
            if positions == "answer":
                return cols == self.answer_pos[:, None]
            if positions == "last3":
                lo = torch.maximum(self.answer_pos - 2, self.start)
                return (cols >= lo[:, None]) & (cols <= self.answer_pos[:, None])
            if positions == "body":
                return (cols > self.start[:, None]) & (cols < self.answer_pos[:, None])
            raise InterventionError(f"unknown position class {positions!r}; choose from {POSITION_CLASSES}, "
                                    "None (all) or a list of token indices")
        per_example = list(positions)
        if per_example and all(isinstance(p, int) for p in per_example):
            per_example = [per_example] * n
        if len(per_example) != n:
            raise InterventionError(f"positions: got {len(per_example)} position lists for a batch of {n} examples")
        mask = torch.zeros(n, T, dtype=torch.bool)
        for i, plist in enumerate(per_example):
            length = T - int(self.start[i])
            for p in plist:
                q = int(p) + length if int(p) < 0 else int(p)
                if not 0 <= q < length:
                    raise InterventionError(f"positions: index {p} is outside example {self.ids[i]!r} "
                                            f"({length} tokens)")
                mask[i, int(self.start[i]) + q] = True
        return mask & real


def _target_first_id(tokenizer, example, rendered) -> int:
    """First token id of the example's target as it continues the rendered prompt (engine.tasks' rule)."""
    from engine import tasks

    rule = getattr(tasks, "target_first_token_id", None)
    if rule is None:  # older tasks module: tokenise prompt + target together and take the first new token
        from engine.tasks.render import target_first_token_id as rule
    return int(rule(tokenizer, example, rendered))


# ------------------------------------------------------------------------------------------- input bounds

MAX_PROMPT_TOKENS_ENV = "MI_ATLAS_MAX_PROMPT_TOKENS"
# tokens per rendered prompt, on top of the model's context: the longest fixture prompt renders to 157 tokens
# (SmolLM2's chat template; 126 on Gemma3), so 4096 is a 26x margin, and it keeps a CPU forward bounded where
# the context alone would not (Gemma3-270m's context is 32,768 tokens; eager attention is quadratic in it)
DEFAULT_MAX_PROMPT_TOKENS = 4096


def context_length(lm) -> int | None:
    """The model's context length (``config.max_position_embeddings``, or its text config's), None if unknown."""
    config = getattr(lm, "config", None) or getattr(getattr(lm, "model", None), "config", None)
    candidates = [config]
    if config is not None and hasattr(config, "get_text_config"):
        candidates.append(config.get_text_config())
    for cfg in candidates:
        n = getattr(cfg, "max_position_embeddings", None)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def prompt_token_limit(lm) -> tuple[int, str]:
    """The most tokens a rendered prompt may have for ``lm``, and where that limit comes from: the smaller of
    the model's context and ``$MI_ATLAS_MAX_PROMPT_TOKENS`` (default :data:`DEFAULT_MAX_PROMPT_TOKENS`)."""
    try:
        cap, from_env = settings.positive_int(MAX_PROMPT_TOKENS_ENV, DEFAULT_MAX_PROMPT_TOKENS, "tokens")
    except ValueError as exc:
        raise InterventionError(str(exc)) from None
    context = context_length(lm)
    name = getattr(lm, "key", None) or "the model"
    if context is not None and context <= cap:
        return context, (f"{name}'s context (config.max_position_embeddings={context}); shorten the prompt, "
                         "no setting lifts a model's context")
    how = f"${MAX_PROMPT_TOKENS_ENV}={cap}" if from_env else f"the default cap (${MAX_PROMPT_TOKENS_ENV} unset)"
    beyond = f" up to {name}'s context of {context}" if context is not None else ""
    return cap, f"{how}; shorten the prompt, or raise ${MAX_PROMPT_TOKENS_ENV}{beyond}"


def _label(ex, i: int) -> str:
    """How an error names an input: the example's id and, when it was read from a file, ``file:line``."""
    if isinstance(ex, str):
        return f"prompt {i} (a plain string)"
    from engine.tasks.examples import example_source

    where = example_source(ex)
    return f"example {ex.id!r}" + (f" ({where})" if where else "")


def _check_length(ex, i: int, n_tokens: int, limit: tuple[int, str]) -> None:
    if n_tokens > limit[0]:
        raise InterventionError(f"encode: {_label(ex, i)} renders to {n_tokens} tokens, over the limit of "
                                f"{limit[0]} tokens: {limit[1]}")


_SPECIAL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _special_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokenizer's special (control) tokens: the named ones and every added token marked special.
    The unknown token is left out: ordinary text maps to it without any special-token string in it.

    Cached per tokenizer (``added_tokens_decoder`` is rebuilt on every access: ~20 ms for Gemma3's 6,384 added
    tokens) and recomputed when the vocabulary size changes (tokens added since)."""
    size, cached = None, None
    try:
        size = len(tokenizer)
        cached = _SPECIAL_CACHE.get(tokenizer)
    except TypeError:  # no length, or an object that cannot be weakly referenced: no cache
        pass
    if cached is not None and cached[0] == size:
        return cached[1]
    ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, tok in decoder.items() if getattr(tok, "special", False))
    ids.discard(getattr(tokenizer, "unk_token_id", None))
    result = frozenset(ids)
    if size is not None:
        try:
            _SPECIAL_CACHE[tokenizer] = (size, result)
        except TypeError:
            pass
    return result


def _specials_in(tokenizer, text: str | None, special: frozenset[int], *, split: bool = False) -> list[str]:
    """The special-token strings the tokenizer would parse in ``text`` as control tokens (none: [])."""
    if not text or not special:
        return []
    kwargs = {"split_special_tokens": True} if split else {}
    found = [i for i in tokenizer(text, add_special_tokens=False, **kwargs)["input_ids"] if i in special]
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens(found)))


_SENTINEL = "\ue000mi-atlas-user-prompt\ue000"


def _render_as_text(tokenizer, ex, template: str, special: frozenset[int], label: str,
                    found: list[str]) -> tuple[str, list[int], int]:
    """Render an example (or a plain string) whose prompt or target holds special-token strings, keeping that
    user text as text: it is tokenised with ``split_special_tokens=True`` while the tokens the rendering adds
    on purpose (the tokenizer's BOS, the chat template's turn markers) stay special. Returns (text, ids,
    target's first token id or -1). Refuses (InterventionError) where that cannot be guaranteed."""
    from engine.tasks.render import resolve_template

    prompt = ex if isinstance(ex, str) else ex.prompt
    target = "" if isinstance(ex, str) else (getattr(ex, "target", None) or "")
    mode = "none" if isinstance(ex, str) else resolve_template(tokenizer, template)
    way_out = (f"remove {found[0]!r} from it or write it differently (e.g. with a space after the first "
               "character)")

    def user_ids(text: str, add_special_tokens: bool = False) -> list[int]:
        return list(tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"])

    if _specials_in(tokenizer, prompt, special, split=True) or _specials_in(tokenizer, target, special, split=True):
        raise InterventionError(f"encode: {label} holds the special-token string {found[0]!r}, which this "
                                f"tokenizer cannot read as plain text (split_special_tokens has no effect); {way_out}")
    if mode == "chat":
        def chat(content: str) -> str:
            return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                 add_generation_prompt=True)

        text = chat(prompt)
        parts = chat(_SENTINEL).split(_SENTINEL)
        if len(parts) != 2 or parts[0] + prompt + parts[1] != text:
            raise InterventionError(f"encode: {label} holds the special-token string {found[0]!r} and the chat "
                                    "template rewrites the prompt, so it cannot be kept as plain text; "
                                    f"{way_out}, or use template 'none'")
        prefix, suffix = parts
        suffix_ids = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
        ids = list(tokenizer(prefix, add_special_tokens=False)["input_ids"]) + user_ids(prompt) + suffix_ids
        lead, tail_ids = suffix, suffix_ids
    else:
        text = prompt
        ids = user_ids(prompt, add_special_tokens=True)  # the tokenizer's own BOS is still added as BOS
        lead, tail_ids = prompt, ids
    first = -1
    if target.strip():
        cont = target.lstrip() if mode == "chat" else target  # engine.tasks.render.continuation's rule
        n = len(tail_ids)
        if mode == "chat":  # the suffix's turn markers are special; the target (user text) is not
            full = list(tokenizer(lead + cont, add_special_tokens=False)["input_ids"]) \
                if not _specials_in(tokenizer, cont, special) else tail_ids + user_ids(cont)
        else:
            full = user_ids(lead + cont, add_special_tokens=True)
        first = full[n] if full[:n] == tail_ids and len(full) > n else user_ids(cont)[0]
    return text, ids, first


def _rows(lm, examples: Sequence, template: str) -> list[tuple[list[int], int, int, int, str, str, str]]:
    """Each input's token ids, answer index, BOS index, target's first token, family, id and text (unpadded).

    Every row is checked against :func:`prompt_token_limit` (a prompt longer than the model's context or the
    cap never reaches a forward pass), and user text that holds a special-token string (``<|im_end|>``,
    ``<bos>``, ...) is tokenised as text, never as the control token (see :func:`_render_as_text`). Inputs
    without such strings are tokenised exactly as before.
    """
    if len(examples) == 0:
        raise InterventionError("encode: no examples")
    tokenizer = lm.tokenizer
    limit = prompt_token_limit(lm)
    special = _special_ids(tokenizer)
    rows: list[tuple[list[int], int, int, int, str, str, str]] = []  # ids, answer, bos, target, family, id, text
    bos_id = getattr(tokenizer, "bos_token_id", None)
    for i, ex in enumerate(examples):
        label = _label(ex, i)
        if isinstance(ex, str):
            ids = list(tokenizer(ex)["input_ids"])
            _check_length(ex, i, len(ids), limit)
            found = _specials_in(tokenizer, ex, special)
            if found:
                text, ids, _ = _render_as_text(tokenizer, ex, template, special, label, found)
                _check_length(ex, i, len(ids), limit)
            bos = 0 if (bos_id is not None and ids and ids[0] == bos_id) else -1
            rows.append((ids, len(ids) - 1, bos, -1, "", f"prompt{i}", ex))
        else:
            from engine import tasks

            rendered = tasks.render(tokenizer, ex, template)
            ids = list(rendered.input_ids)
            _check_length(ex, i, len(ids), limit)
            has_target = bool((getattr(ex, "target", None) or "").strip())
            found = _specials_in(tokenizer, ex.prompt, special) + (
                _specials_in(tokenizer, ex.target, special) if has_target else [])
            if found:
                text, ids, target = _render_as_text(tokenizer, ex, template, special, label, found)
                _check_length(ex, i, len(ids), limit)
                bos = 0 if (bos_id is not None and ids and ids[0] == bos_id) else -1
                rows.append((ids, len(ids) - 1, bos, target, ex.family, ex.id, text))
            else:
                target = _target_first_id(tokenizer, ex, rendered) if has_target else -1
                bos = -1 if rendered.bos_pos is None else int(rendered.bos_pos)
                rows.append((ids, int(rendered.answer_pos), bos, target, ex.family, ex.id, rendered.text))
        if not rows[-1][0]:
            raise InterventionError(f"encode: example {i} renders to no tokens")
    return rows


def check_prompts(lm, examples: Sequence, template: str = "auto") -> list[int]:
    """What ``encode`` checks, without building a batch: each input's token count (raises InterventionError
    for a prompt over the limit, naming the example, its file and line, the count and the limit)."""
    return [len(r[0]) for r in _rows(lm, examples, template)]


def encode(lm, examples: Sequence, template: str = "auto") -> Batch:
    """Render and left-pad prompts into a ``Batch``.

    ``examples`` are ``engine.tasks.Example`` objects (rendered with ``engine.tasks.render``, which gives the
    answer position and BOS position; the target's first token becomes ``target_ids``) or plain strings
    (tokenised with the tokenizer's special tokens; answer position = last token).

    Bounded: a prompt that renders to more tokens than :func:`prompt_token_limit` (the model's
    ``max_position_embeddings``, and ``$MI_ATLAS_MAX_PROMPT_TOKENS``) raises InterventionError naming the
    example (id, file:line), its token count and the limit, before any forward pass. Special-token strings
    in user text are tokenised as plain text (the BOS and chat-template tokens the rendering adds stay special).
    """
    rows = _rows(lm, examples, template)
    tokenizer = lm.tokenizer
    T = max(len(r[0]) for r in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    n = len(rows)
    input_ids = torch.full((n, T), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((n, T), dtype=torch.long)
    start = torch.empty(n, dtype=torch.long)
    for i, (ids, *_rest) in enumerate(rows):
        off = T - len(ids)
        input_ids[i, off:] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, off:] = 1
        start[i] = off
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    answer = torch.tensor([r[1] for r in rows], dtype=torch.long) + start
    bos = torch.tensor([r[2] for r in rows], dtype=torch.long)
    bos = torch.where(bos >= 0, bos + start, -1)
    batch = Batch(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, answer_pos=answer,
        start=start, bos_pos=bos, index=torch.arange(n), target_ids=torch.tensor([r[3] for r in rows]),
        families=[r[4] for r in rows], ids=[r[5] for r in rows], texts=[r[6] for r in rows],
    )
    return batch.to(lm.device)


def aligned_gather(receiver: Batch, donor: Batch, donor_values: Tensor, donor_rows: Tensor) -> Tensor:
    """Donor activations laid out on the receiver's positions: [n, T_recv, d].

    Receiver row i takes donor row ``donor_rows[i]``; the first token maps to the donor's first token, the
    answer to the donor's answer, and a body token at distance k before the answer to the donor's body token
    at the same distance (clamped to the donor's body).
    """
    n, T = receiver.input_ids.shape
    cols = torch.arange(T).expand(n, T)
    cls = receiver.class_ids()
    d_start = donor.start[donor_rows]
    d_answer = donor.answer_pos[donor_rows]
    dist = receiver.answer_pos[:, None] - cols
    body_lo = torch.minimum(d_start + 1, d_answer)
    body = (d_answer[:, None] - dist).clamp(min=0)
    body = torch.maximum(torch.minimum(body, (d_answer - 1).clamp(min=0)[:, None]), body_lo[:, None])
    src = torch.where(cls == CLASS_FIRST, d_start[:, None], body)
    src = torch.where(cls == CLASS_ANSWER, d_answer[:, None], src)
    src = torch.where(cls < 0, d_answer[:, None], src)  # padding: any valid index (never written)
    vals = donor_values.to("cpu") if donor_values.device.type != "cpu" else donor_values
    return vals[donor_rows[:, None], src]
