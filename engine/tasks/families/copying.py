"""The ``copying`` task family: repeat a word (short) or a text (long).

``gen_copying(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_copying(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import random

from engine.tasks import facts as F
from engine.tasks.families.base import Item, Pair, nl_question
from engine.tasks.registry import Family, register_family


def gen_copying(rng: random.Random, split: str) -> Item:
    long = split == "long"
    if not long:
        shots = rng.sample(F.WORDS, 2)
        head = "Copy the word.\n" + "".join(f"Word: {s}\nCopy: {s}\n" for s in shots)
        word = rng.choice([w for w in F.WORDS if w not in shots])

        def build(x):
            return head + f"Word: {x}\nCopy:", " " + x

        return Pair.make(build, word, F.WORDS, rng, "exact")
    shot = " ".join(rng.sample(F.WORDS, rng.randint(4, 6)))
    rest = rng.sample(F.WORDS, rng.randint(4, 7))
    head = f"Copy the text.\nText: {shot}\nCopy: {shot}\n"

    def build(first):
        text = " ".join([first] + rest)
        return head + f"Text: {text}\nCopy:", " " + text

    first = rng.choice([w for w in F.WORDS if w not in rest])
    return Pair.make(build, first, [w for w in F.WORDS if w not in rest], rng, "exact")


def nl_copying(rng: random.Random) -> Item:
    phr = rng.choice([
        "Please say the word {w} back to me.",
        "Can you repeat this word exactly: {w}",
        "Just echo the word {w}.",
        "Say {w} and nothing else.",
        "Type the word {w} for me, exactly as written.",
        "Repeat after me: {w}",
    ])
    word = rng.choice(F.WORDS)

    def build(w):
        return nl_question(phr.format(w=w), w)

    return Pair.make(build, word, F.WORDS, rng, "exact")


@register_family("copying", scorer="exact")
class Copying(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_copying(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_copying(rng)
