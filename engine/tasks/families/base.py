"""Helpers shared by the task-family modules: :class:`Item`, clean/corrupt pairs, answer cues, draw cycles
and the fact questions several families ask.

Prompts end so that a small model's greedy next token can be the answer's first token: a word answer
follows ``"A:"``/``"Answer:"`` and its target carries the leading space (``" Paris"``); a number follows
``"= "``/``"A: "`` (both tokenizers split digits after a separate space token) and its target has none
(``"37"``). Where it makes sense an item carries a clean/corrupt pair for activation patching: ``corrupt``
swaps one digit or one single-token word (see ``engine.tasks.facts``) so the two prompts have the same
token length and a different answer (``corrupt_target``); :meth:`Pair.make` builds both.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from engine.tasks import facts as F


@dataclass(frozen=True)
class Item:
    """A generated prompt before it gets an id. ``scorer`` None: the family's default scorer
    (:attr:`engine.tasks.registry.Family.scorer`); every built-in generator names its scorer."""

    prompt: str
    target: str
    scorer: str | None = None
    corrupt: str | None = None
    corrupt_target: str | None = None


class Pair:
    """Build a clean item from a value and, when a different value gives a different answer, its corrupt
    twin: ``build(value) -> (prompt, target)``."""

    @staticmethod
    def make(build: Callable[[object], tuple[str, str]], value, alternatives, rng: random.Random,
             scorer: str, swappable: Callable[[object], bool] | None = None) -> Item:
        """``swappable(v)`` says whether ``v`` may take part in a swap (e.g. it is one token in both default
        tokenizers); a clean value that is not swappable gets no corrupt twin. A corrupt twin must also keep
        the prompt's ending: a number answer stays a number answer (same ``"= "`` cue), a word a word."""
        prompt, target = build(value)
        if swappable is not None and not swappable(value):
            return Item(prompt, target, scorer)
        alts = [a for a in alternatives if a != value and (swappable is None or swappable(a))]
        rng.shuffle(alts)
        for alt in alts:
            c_prompt, c_target = build(alt)
            if (c_target.strip() != target.strip() and c_prompt != prompt
                    and answer_kind(c_target) == answer_kind(target)):
                return Item(prompt, target, scorer, c_prompt, c_target)
        return Item(prompt, target, scorer)


def answer_kind(target: str) -> tuple[bool, bool]:
    """(starts with a space, is a number): the two things that decide how a prompt ends."""
    return target[:1] == " ", target.strip().lstrip("-")[:1].isdigit()


def cue(answer: str, label: str = "A:") -> tuple[str, str]:
    """Prompt ending and target for an answer: numbers after ``"A: "``, words after ``"A:"`` + space."""
    if answer[:1].isdigit():
        return f"{label} ", answer
    return label, " " + answer


def digit_variants(n: int) -> list[int]:
    """Numbers with the same digit count that differ from ``n`` in one digit (no leading zero)."""
    s = str(n)
    out = []
    for i, ch in enumerate(s):
        for d in "0123456789":
            if d != ch and not (i == 0 and d == "0" and len(s) > 1):
                out.append(int(s[:i] + d + s[i + 1:]))
    return out


def nl_question(question: str, answer: str) -> tuple[str, str]:
    """A natural-language prompt and target: the question, a newline and an ``"Answer:"`` cue."""
    ending, target = cue(answer, "Answer:")
    return f"{question}\n{ending}", target


class Cycle:
    """Draw items without replacement from a shuffled list, reshuffling when exhausted (so every item is
    used before any repeats)."""

    def __init__(self, items: list, rng: random.Random):
        self.items, self.rng, self.queue = list(items), rng, []

    def next(self):
        if not self.queue:
            self.queue = list(self.items)
            self.rng.shuffle(self.queue)
        return self.queue.pop()


# --------------------------------------------------------------------------------------------- fact questions
# shared by factual_recall, uncertainty_expression (a known fact among the shots) and verbosity_control


FACT_QUESTIONS: dict[str, str] = {
    "capital": "What is the capital of {s}?",
    "language": "What language is spoken in {s}?",
    "currency": "What is the currency of {s}?",
    "element": "What is the chemical symbol for {s}?",
    "opposite": "What is the opposite of {s}?",
    "weekday": "What day comes after {s}?",
    "month": "What month comes after {s}?",
    "plural": "What is the plural of {s}?",
    "past": "What is the past tense of {s}?",
    "young": "What is a baby {s} called?",
    "color": "What color is {s}?",
}


def fact_table() -> dict[str, list[tuple[str, str]]]:
    """Fact category -> (subject, answer) rows, from ``engine.tasks.facts``."""
    return {
        "capital": F.CAPITALS,
        "language": F.LANGUAGES,
        "currency": F.CURRENCIES,
        "element": F.ELEMENTS,
        "opposite": F.OPPOSITES,
        "weekday": [(d, F.WEEKDAYS[(i + 1) % 7]) for i, d in enumerate(F.WEEKDAYS)],
        "month": [(m, F.MONTHS[(i + 1) % 12]) for i, m in enumerate(F.MONTHS)],
        "plural": F.PLURALS,
        "past": F.PAST_TENSES,
        "young": F.YOUNG_ANIMALS,
        "color": F.COLORS,
    }


def all_facts() -> list[tuple[str, str, str]]:
    """Every (category, subject, answer) of :func:`fact_table`, in table order."""
    return [(cat, s, a) for cat, rows in fact_table().items() for s, a in rows]
