"""Turning an example into model input, and knowing which positions matter.

Rendering: ``template="chat"`` wraps the prompt as one user message with the tokenizer's chat template and
``add_generation_prompt=True`` (the text is then tokenized without adding special tokens again, since the
template writes them); ``"none"`` feeds the raw prompt (the tokenizer adds its BOS if it has one);
``"auto"`` is chat when the tokenizer has a chat template, raw otherwise.

The answer position is the last prompt token: its logits predict the first answer token.

How the target's first token is defined: the target is the text that continues the *rendered* prompt. With
raw rendering that is ``example.target`` as stored (with its leading space when the prompt ends with a cue
such as ``"A:"``); with chat rendering the answer opens the assistant turn, so leading whitespace is dropped.
We tokenize ``rendered.text + continuation`` and take the first token after the prompt's tokens. If the
prompt's tokens are not a prefix of that tokenization (the target would merge with the prompt's last
token, which the suite's fixtures never do: a test checks it), we fall back to the first token of the
continuation tokenized on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.tasks.examples import Example
from engine.tasks.vocabulary import SuiteError

TEMPLATES = ("auto", "chat", "none")


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt: the text fed to the model and its token ids.

    ``answer_pos`` is the index of the last prompt token (logits there predict the answer's first token);
    ``bos_pos`` is 0 when the sequence starts with the tokenizer's BOS token (added by the tokenizer, or
    written by the chat template, e.g. SmolLM2's ``<|im_start|>``), else None. ``template`` is the
    rendering actually used (``"chat"`` or ``"none"``).
    """

    text: str
    input_ids: list[int]
    answer_pos: int
    bos_pos: int | None
    template: str = "none"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_template(tokenizer, template: str = "auto") -> str:
    if template not in TEMPLATES:
        raise SuiteError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")
    if template == "auto":
        return "chat" if has_chat_template(tokenizer) else "none"
    if template == "chat" and not has_chat_template(tokenizer):
        raise SuiteError("template='chat' but the tokenizer has no chat template; use 'none' or 'auto'")
    return template


def render(tokenizer, example: Example | str, template: str = "auto") -> Rendered:
    """Render an example (or a bare prompt string, e.g. ``example.corrupt``) for ``tokenizer``."""
    prompt = example.prompt if isinstance(example, Example) else example
    if not isinstance(prompt, str) or not prompt:
        raise SuiteError("render: empty prompt")
    mode = resolve_template(tokenizer, template)
    if mode == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        text = prompt
        ids = list(tokenizer(text)["input_ids"])
    if not ids:
        raise SuiteError(f"render: prompt {prompt[:40]!r} tokenized to nothing")
    bos = getattr(tokenizer, "bos_token_id", None)
    bos_pos = 0 if bos is not None and ids[0] == bos else None
    return Rendered(text=text, input_ids=ids, answer_pos=len(ids) - 1, bos_pos=bos_pos, template=mode)


def positions(rendered: Rendered) -> dict[str, list[int]]:
    """Position classes of a rendered prompt.

    ``bos``: [0] when the sequence starts with BOS, else []; ``answer``: the last prompt position only (its
    logits are measured); ``last3``: the last three prompt positions (the seed's "answer" class, which
    includes the measured position); ``body``: every other position (neither BOS nor in ``last3``).
    """
    n = len(rendered.input_ids)
    bos = [0] if rendered.bos_pos == 0 else []
    last3 = list(range(max(0, n - 3), n))
    body = [i for i in range(n) if i not in bos and i not in last3]
    return {"bos": bos, "body": body, "answer": [rendered.answer_pos], "last3": last3}


def continuation(target: str, rendered: Rendered) -> str:
    """The text that follows the rendered prompt: the target as stored (raw) or without leading
    whitespace (chat: the answer opens the assistant turn)."""
    return target.lstrip() if rendered.template == "chat" else target


def target_first_token_id(tokenizer, example: Example, rendered: Rendered | None = None,
                          target: str | None = None) -> int:
    """Token id of the target's first token as it continues the rendered prompt (see module docstring).

    ``target`` overrides ``example.target`` (e.g. ``example.corrupt_target`` with a rendered corrupt prompt).
    """
    rendered = rendered if rendered is not None else render(tokenizer, example)
    text = continuation(example.target if target is None else target, rendered)
    if not text.strip():
        raise SuiteError(f"example {example.id!r} has no target: no first token to measure")
    add_special = rendered.template == "none"
    full = list(tokenizer(rendered.text + text, add_special_tokens=add_special)["input_ids"])
    n = len(rendered.input_ids)
    if full[:n] == rendered.input_ids and len(full) > n:
        return full[n]
    alone = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return alone[0]


def target_is_token_aligned(tokenizer, example: Example, rendered: Rendered | None = None,
                            target: str | None = None) -> bool:
    """True when the prompt's tokens are a prefix of the tokens of prompt + target (no merge at the seam)."""
    rendered = rendered if rendered is not None else render(tokenizer, example)
    text = continuation(example.target if target is None else target, rendered)
    full = list(tokenizer(rendered.text + text, add_special_tokens=rendered.template == "none")["input_ids"])
    n = len(rendered.input_ids)
    return full[:n] == rendered.input_ids and len(full) > n


def target_first_token_logprob(logits_at_answer_pos, tokenizer, example: Example,
                               rendered: Rendered | None = None, target: str | None = None) -> float:
    """Log-probability (natural log, computed in float32) of the target's first token under the next-token
    logits at the answer position (a 1-D vector over the vocabulary)."""
    logits = torch.as_tensor(logits_at_answer_pos).float()
    if logits.dim() == 2 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.dim() != 1:
        raise SuiteError(f"expected 1-D logits over the vocabulary, got shape {tuple(logits.shape)}")
    token = target_first_token_id(tokenizer, example, rendered, target=target)
    if token >= logits.shape[0]:
        raise SuiteError(f"target token id {token} outside the logits' vocabulary ({logits.shape[0]})")
    return float(torch.log_softmax(logits, dim=-1)[token])
