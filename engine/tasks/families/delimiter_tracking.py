"""The ``delimiter_tracking`` task family: close a sequence of open brackets, in order.

``gen_delimiter_tracking(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_delimiter_tracking(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import random

from engine.tasks.families.base import Item, Pair, nl_question
from engine.tasks.registry import Family, register_family
from engine.tasks.scorers import closers_for


def _brackets(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice("([{") for _ in range(rng.randint(lo, hi))]


def gen_delimiter_tracking(rng: random.Random, split: str) -> Item:
    long = split == "long"
    lo, hi = (4, 7) if long else (1, 3)
    shots = []
    for _ in range(3 if long else 2):
        opened = _brackets(rng, lo, hi)
        shots.append(" ".join(opened) + " -> " + " ".join(closers_for("".join(opened))))
    head = "Close the brackets.\n" + "\n".join(shots) + "\n"
    opened = _brackets(rng, lo, hi)

    def build(last):
        seq = opened[:-1] + [last]
        return head + " ".join(seq) + " ->", " " + " ".join(closers_for("".join(seq)))

    return Pair.make(build, opened[-1], list("([{"), rng, "brackets")


def nl_delimiter_tracking(rng: random.Random) -> Item:
    opened = _brackets(rng, 1, 4)
    phr = rng.choice([
        "I typed {o} in my code. What should I type to close them all?",
        "These brackets are still open: {o}\nWhich closing brackets finish them, in order?",
        "My editor shows {o} still open. What closes it?",
        "How do I close the brackets {o} in my code?",
        "What do I need to add to balance {o} here?",
    ])

    def build(last):
        seq = opened[:-1] + [last]
        return nl_question(phr.format(o=" ".join(seq)), " ".join(closers_for("".join(seq))))

    return Pair.make(build, opened[-1], list("([{"), rng, "brackets")


@register_family("delimiter_tracking", scorer="brackets")
class DelimiterTracking(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_delimiter_tracking(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_delimiter_tracking(rng)
