"""Baseline accuracy: greedy-generate a few tokens per example and score them, per family.

This is what a model can do on the suite before any intervention; the atlas metrics measure the target's
log-prob at the answer position, which is only meaningful on families the model can at least partly solve.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from engine.tasks.examples import Example
from engine.tasks.render import render
from engine.tasks.scorers import score

MAX_NEW_TOKENS_CAP = 48


@dataclass(frozen=True)
class Completion:
    """One greedy completion and its score."""

    example: Example
    text: str
    correct: bool


def auto_max_new_tokens(tokenizer, example: Example, slack: int = 6) -> int:
    """Enough tokens for the target plus ``slack`` (a chat model may open with "The answer is"), doubled for
    JSON (a model may pretty-print it), capped at ``MAX_NEW_TOKENS_CAP``."""
    n = len(tokenizer(example.target, add_special_tokens=False)["input_ids"])
    if example.scorer == "json":
        n = 2 * n
    return min(MAX_NEW_TOKENS_CAP, n + slack)


class _FirstLineDone(StoppingCriteria):
    """Stop once the completion has a non-blank line followed by a newline: every scorer except JSON reads the
    first non-blank line only (and no target spans lines), so generating past it only costs time."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        done = ["\n" in self.tokenizer.decode(row[self.prompt_len:], skip_special_tokens=True).lstrip()
                for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def greedy_completions(loaded, examples: Sequence[Example], max_new_tokens: int | None = None,
                       template: str = "auto", progress: Callable[[int, int], None] | None = None
                       ) -> list[Completion]:
    """Greedy completions (one example per forward pass: no padding effects), decoded without special
    tokens, scored with each example's scorer (scorers ignore leading whitespace, so chat and raw
    completions are scored alike). ``max_new_tokens=None`` sizes it per example from the
    target (see :func:`auto_max_new_tokens`). ``progress(done, total)`` is called after each example."""
    model, tokenizer = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for ex in examples:
        rendered = render(tokenizer, ex, template)
        ids = torch.tensor([rendered.input_ids], device=device)
        n_new = max_new_tokens or auto_max_new_tokens(tokenizer, ex)
        stop = None if ex.scorer == "json" else StoppingCriteriaList([_FirstLineDone(tokenizer, ids.shape[1])])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                             do_sample=False, pad_token_id=pad, top_p=None, top_k=None, temperature=None,
                             stopping_criteria=stop)
        text = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
        out.append(Completion(ex, text, score(ex, text)))
        if progress is not None:
            progress(len(out), len(examples))
    return out


def accuracy_by_family(completions: Sequence[Completion]) -> dict[str, float]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c in completions:
        totals[c.example.family][0] += int(c.correct)
        totals[c.example.family][1] += 1
    return {family: hit / n for family, (hit, n) in totals.items()}


def baseline_accuracy(loaded, examples: Sequence[Example], max_new_tokens: int | None = None,
                      template: str = "auto") -> dict[str, float]:
    """Fraction of examples per family whose greedy completion scores as correct.

    ``loaded`` is an ``engine.models.LoadedModel`` (anything with ``.model`` and ``.tokenizer``).
    """
    return accuracy_by_family(greedy_completions(loaded, examples, max_new_tokens, template))


@dataclass(frozen=True)
class BaselineRow:
    """Greedy accuracy of one model/rendering on one family: ``correct`` of ``n`` sampled examples."""

    model: str
    template: str
    family: str
    correct: int
    n: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


def baseline_rows(loaded, examples: Sequence[Example], max_new_tokens: int | None = None,
                  template: str = "auto", progress: Callable[[int, int], None] | None = None) -> list[BaselineRow]:
    """Per-family counts of correct greedy completions (families in the order they appear in ``examples``)."""
    from engine.tasks.render import resolve_template

    used = resolve_template(loaded.tokenizer, template)
    totals: dict[str, list[int]] = {}
    for c in greedy_completions(loaded, examples, max_new_tokens, template, progress):
        hit_n = totals.setdefault(c.example.family, [0, 0])
        hit_n[0] += int(c.correct)
        hit_n[1] += 1
    return [BaselineRow(loaded.key, used, family, hit, n) for family, (hit, n) in totals.items()]


def markdown_table(rows: Sequence[BaselineRow]) -> str:
    """Families down, one column per (model, rendering): ``accuracy (correct/n)``, plus a mean row."""
    columns = list(dict.fromkeys((r.model, r.template) for r in rows))
    families = list(dict.fromkeys(r.family for r in rows))
    cell = {(r.model, r.template, r.family): r for r in rows}
    head = "| family | " + " | ".join(f"{m} ({'chat' if t == 'chat' else 'raw'})" for m, t in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for family in families:
        cells = []
        for m, t in columns:
            r = cell.get((m, t, family))
            cells.append("" if r is None else f"{r.accuracy:.2f} ({r.correct}/{r.n})")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    means = []
    for m, t in columns:
        own = [r for r in rows if (r.model, r.template) == (m, t)]
        hit, n = sum(r.correct for r in own), sum(r.n for r in own)
        means.append(f"**{hit / n:.2f}** ({hit}/{n})" if n else "")
    lines.append("| **all** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"
