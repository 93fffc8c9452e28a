"""The ``arithmetic`` task family: addition, subtraction and multiplication with a number answer.

``gen_arithmetic(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_arithmetic(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import random

from engine.tasks.families.base import Item, Pair, digit_variants, nl_question
from engine.tasks.registry import Family, register_family


def _arith_expr(rng: random.Random, long: bool) -> tuple[str, tuple[int, ...]]:
    if not long:
        op = rng.choice("+-")
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if op == "-" and a < b:
            a, b = b, a
        return op, (a, b)
    op = rng.choice(["+", "-", "+3", "*"])
    if op == "+3":
        return op, (rng.randint(10, 99), rng.randint(10, 99), rng.randint(10, 99))
    if op == "*":
        return op, (rng.randint(2, 9), rng.randint(11, 49))
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    if op == "-" and a < b:
        a, b = b, a
    return op, (a, b)


def _arith_eval(op: str, xs: tuple[int, ...]) -> tuple[str, int | None]:
    if op == "+3":
        return f"{xs[0]} + {xs[1]} + {xs[2]}", sum(xs)
    if op == "*":
        return f"{xs[0]} * {xs[1]}", xs[0] * xs[1]
    value = xs[0] + xs[1] if op == "+" else xs[0] - xs[1]
    return f"{xs[0]} {op} {xs[1]}", value if value >= 0 else None


def gen_arithmetic(rng: random.Random, split: str) -> Item:
    long = split == "long"
    shots = []
    for _ in range(3 if long else 2):
        text, value = _arith_eval(*_arith_expr(rng, long))
        shots.append(f"{text} = {value}")
    op, xs = _arith_expr(rng, long)
    head = "Calculate.\n" + "\n".join(shots) + "\n"

    def build(operands):
        text, value = _arith_eval(op, operands)
        return head + f"{text} = ", str(value)

    slot = rng.randrange(len(xs))
    alts = []
    for v in digit_variants(xs[slot]):
        cand = xs[:slot] + (v,) + xs[slot + 1:]
        if _arith_eval(op, cand)[1] is not None:
            alts.append(cand)
    return Pair.make(build, xs, alts, rng, "numeric")


def nl_arithmetic(rng: random.Random) -> Item:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    kind = rng.randrange(8)
    if kind in (2, 3, 6):
        a, b = max(a, b), min(a, b)
    texts = [
        (lambda x, y: f"What is {x} plus {y}?", lambda x, y: x + y),
        (lambda x, y: f"If I have {x} apples and buy {y} more, how many apples do I have?", lambda x, y: x + y),
        (lambda x, y: f"How much is {x} minus {y}?", lambda x, y: x - y),
        (lambda x, y: f"I had {x} dollars and spent {y}. How many dollars do I have left?", lambda x, y: x - y),
        (lambda x, y: f"Can you add {x} and {y} for me?", lambda x, y: x + y),
        (lambda x, y: f"There are {x} kids in one class and {y} in another. How many kids is that in total?",
         lambda x, y: x + y),
        (lambda x, y: f"A bus had {x} people and {y} got off. How many are still on the bus?", lambda x, y: x - y),
        (lambda x, y: f"What do you get if you put {x} and {y} together?", lambda x, y: x + y),
    ]
    q, f = texts[kind]

    def build(v):
        return nl_question(q(*v), str(f(*v)))

    slot = rng.randrange(2)
    vals = (a, b)
    alts = []
    for d in digit_variants(vals[slot]):
        cand = vals[:slot] + (d,) + vals[slot + 1:]
        if f(*cand) >= 0:
            alts.append(cand)
    return Pair.make(build, vals, alts, rng, "numeric")


@register_family("arithmetic", scorer="numeric")
class Arithmetic(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_arithmetic(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_arithmetic(rng)
