"""The ``instruction_following`` task family: apply a simple instruction to words (capitals, first
letter, reverse, ...).

``gen_instruction_following(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_instruction_following(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import random

from engine.tasks import facts as F
from engine.tasks.families.base import Item, Pair, nl_question
from engine.tasks.registry import Family, register_family


def _instr_short(rng: random.Random):
    """(instruction, function word -> output, input pool)."""
    kinds = [
        ("Write the word in capital letters.", str.upper),
        ("Write the first letter of the word.", lambda w: w[0]),
        ("Write the last letter of the word.", lambda w: w[-1]),
        ("Write the word twice.", lambda w: f"{w} {w}"),
        ("Put the word in quotes.", lambda w: f'"{w}"'),
        ("Write the word with a capital first letter.", str.capitalize),
        ("Add the letter s to the end of the word.", lambda w: w + "s"),
    ]
    return rng.choice(kinds)


def _instr_long(rng: random.Random):
    kinds = [
        ("Write the two words in reverse order.", 2, lambda ws: f"{ws[1]} {ws[0]}"),
        ("Write the first letter of each word.", 3, lambda ws: " ".join(w[0] for w in ws)),
        ("Write the word in capital letters and add an exclamation mark.", 1, lambda ws: ws[0].upper() + "!"),
        ("Join the words with a dash.", 2, lambda ws: "-".join(ws)),
        ("Write the words in capital letters.", 2, lambda ws: " ".join(w.upper() for w in ws)),
        ("Write only the last word.", 3, lambda ws: ws[-1]),
        ("Write the words in the order they appear, separated by commas.", 3, lambda ws: ", ".join(ws)),
    ]
    return rng.choice(kinds)


def gen_instruction_following(rng: random.Random, split: str) -> Item:
    if split == "long":
        instr, k, fn = _instr_long(rng)
        shots = [rng.sample(F.SHORT_WORDS, k) for _ in range(2)]
        head = instr + "\n" + "".join(f"Input: {' '.join(s)}\nOutput: {fn(s)}\n" for s in shots)
        rest = rng.sample(F.SHORT_WORDS, k)

        def build(first):
            ws = [first] + rest[1:]
            return head + f"Input: {' '.join(ws)}\nOutput:", " " + fn(ws)

        return Pair.make(build, rest[0], [w for w in F.SHORT_WORDS if w not in rest], rng, "exact")
    instr, fn = _instr_short(rng)
    shots = rng.sample(F.SHORT_WORDS, 2)
    head = instr + "\n" + "".join(f"Input: {s}\nOutput: {fn(s)}\n" for s in shots)
    word = rng.choice([w for w in F.SHORT_WORDS if w not in shots])

    def build(x):
        return head + f"Input: {x}\nOutput:", " " + fn(x)

    return Pair.make(build, word, F.SHORT_WORDS, rng, "exact")


def nl_instruction_following(rng: random.Random) -> Item:
    kinds = [
        ("Could you write the word {w} in all capital letters?", str.upper),
        ("What's the first letter of the word {w}?", lambda w: w[0]),
        ("Please write the word {w} two times with a space between.", lambda w: f"{w} {w}"),
        ("What's the last letter of the word {w}?", lambda w: w[-1]),
        ("Write the word {w} starting with a capital letter, please.", str.capitalize),
        ("Add an s to the end of the word {w} and write it.", lambda w: w + "s"),
    ]
    phr, fn = rng.choice(kinds)

    def build(w):
        return nl_question(phr.format(w=w), fn(w))

    return Pair.make(build, rng.choice(F.SHORT_WORDS), F.SHORT_WORDS, rng, "exact")


@register_family("instruction_following", scorer="exact")
class InstructionFollowing(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_instruction_following(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_instruction_following(rng)
