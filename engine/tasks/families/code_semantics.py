"""The ``code_semantics`` task family: what a short Python snippet prints (a number or a word).

``gen_code_semantics(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_code_semantics(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import random

from engine.tasks import facts as F
from engine.tasks.families.base import Item, Pair, cue, digit_variants, nl_question
from engine.tasks.registry import Family, register_family


def _code_sem_short(rng: random.Random, kind: int):
    """(code builder from numbers, numbers, corruptible) for the short split; output via print."""
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    if kind == 0:
        return (lambda v: (f"x = {v[0]}; print(x + {v[1]})", str(v[0] + v[1]))), (a, b)
    if kind == 1:
        return (lambda v: (f"x = {v[0]}; print(x * {v[1]})", str(v[0] * v[1]))), (a, b)
    if kind == 2:
        a, b = max(a, b) + 3, min(a, b)
        return (lambda v: (f"a = {v[0]}; b = {v[1]}; print(a - b)", str(v[0] - v[1]))), (a, b)
    if kind == 3:
        return (lambda v: (f"print(max({v[0]}, {v[1]}))", str(max(v)))), (a, b + 10 if a == b else b)
    if kind == 4:
        return (lambda v: (f"print(min({v[0]}, {v[1]}))", str(min(v)))), (a, b + 10 if a == b else b)
    if kind == 5:
        c = rng.randint(2, 9)
        i = rng.randrange(3)
        return (lambda v: (f"xs = [{v[0]}, {v[1]}, {v[2]}]; print(xs[{i}])", str(v[i]))), (a, b, c)
    word = rng.choice(F.WORDS)
    return (lambda v: (f's = "{word}"; print(len(s))', str(len(word)))), None


def _code_sem_long(rng: random.Random, kind: int):
    a, b, k = rng.randint(2, 19), rng.randint(2, 19), rng.randint(2, 5)
    if kind == 0:
        return (lambda v: (f"a = {v[0]}\nb = {v[1]}\nc = a + b\nprint(c * {v[2]})", str((v[0] + v[1]) * v[2]))), (a, b, k)
    if kind == 1:
        n = rng.randint(3, 9)
        return (lambda v: (f"t = 0\nfor i in range({v[0]}):\n    t += i\nprint(t)", str(sum(range(v[0]))))), (n,)
    if kind == 2:
        c = rng.randint(2, 19)
        return (lambda v: (f"xs = [{v[0]}, {v[1]}, {v[2]}]\nprint(sum(xs))", str(sum(v)))), (a, b, c)
    if kind == 3:
        return (lambda v: (f"def f(x):\n    return x * {v[0]}\nprint(f({v[1]}))", str(v[0] * v[1]))), (k, a)
    if kind == 4:
        return (lambda v: (f"x = {v[0]}\nif x > {v[1]}:\n    print(\"big\")\nelse:\n    print(\"small\")",
                           "big" if v[0] > v[1] else "small")), (a, b if b != a else b + 1)
    if kind == 5:
        word = rng.choice(F.WORDS)
        return (lambda v: (f's = "{word}"\nprint(s.upper())', word.upper())), None
    n = rng.randint(2, 6)
    xs = [rng.randint(1, 9) for _ in range(n)]
    extra = rng.randint(1, 9)
    return (lambda v: (f"xs = {xs}\nxs.append({extra})\nprint(len(xs))", str(len(xs) + 1))), None


def gen_code_semantics(rng: random.Random, split: str) -> Item:
    long = split == "long"
    maker = _code_sem_long if long else _code_sem_short
    kind = rng.randrange(7)
    sep = "\n" if long else " "
    blocks = []
    for _ in range(2):
        build, vals = maker(rng, kind)
        code, out = build(vals)
        blocks.append(f"Code:{sep}{code}\nOutput: {out}")
    build, vals = maker(rng, kind)
    head = "What does the code print?\n" + ("\n\n" if long else "\n").join(blocks) + ("\n\n" if long else "\n")

    def full(v):
        code, out = build(v)
        ending, target = cue(out, "Output:")
        return head + f"Code:{sep}{code}\n{ending}", target

    scorer = "numeric" if build(vals)[1].isdigit() else "exact"
    if vals is None:
        prompt, target = full(vals)
        return Item(prompt, target, scorer)
    slot = rng.randrange(len(vals))
    alts = [vals[:slot] + (d,) + vals[slot + 1:] for d in digit_variants(vals[slot])]
    return Pair.make(full, vals, alts, rng, scorer)


def nl_code_semantics(rng: random.Random) -> Item:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    word = rng.choice(F.WORDS)
    kind = rng.randrange(6)
    codes = [
        (f"print({a} + {b})", str(a + b)),
        (f"print({a} * {b})", str(a * b)),
        (f"print(len(\"{word}\"))", str(len(word))),
        (f"print(max({a}, {b + 10}))", str(max(a, b + 10))),
        (f"print(\"{word}\".upper())", word.upper()),
        (f"x = {a}; x += {b}; print(x)", str(a + b)),
    ]
    code, out = codes[kind]
    phr = rng.choice([
        "If I run `{c}` in Python, what shows up on the screen?",
        "What does the Python line `{c}` print?",
        "My friend typed `{c}` into Python. What did it print?",
        "Quick one: what's the output of `{c}` in Python?",
        "When Python runs `{c}`, what do you see?",
    ])
    prompt, target = nl_question(phr.format(c=code), out)
    return Item(prompt, target, "numeric" if out.isdigit() else "exact")


@register_family("code_semantics")
class CodeSemantics(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_code_semantics(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_code_semantics(rng)
