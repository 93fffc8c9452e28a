"""The ``variable_renaming`` task family: rename a variable in a line of code.

``gen_variable_renaming(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_variable_renaming(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import random

from engine.tasks import facts as F
from engine.tasks.families.base import Item, Pair, nl_question
from engine.tasks.registry import Family, register_family


_RENAME_LINES = [
    "{v} = {v} + {n}",
    "{v} = {v} * {n}",
    "{v} += {n}",
    "{v} = {v} - {n}",
    "{v} = max({v}, {n})",
    "{v} = {v} // {n}",
    "{v} = {v} ** {n}",
    "{v} = min({v}, {n})",
]


_RENAME_LONG = [
    "{v} = {v} * {n}; {v} = {v} + {m}",
    "{v} = [{v}] * {n}; print({v})",
    "{v} = abs({v} - {n}); return {v}",
    "{v} += {n}; {v} -= {m}; print({v})",
    "{v} = {v} % {n} + {v} // {m}",
    "{v} = str({v} + {n}); print({v})",
]


def gen_variable_renaming(rng: random.Random, split: str) -> Item:
    long = split == "long"
    lines = _RENAME_LONG if long else _RENAME_LINES
    tpl = rng.choice(lines)
    blocks = []
    for _ in range(2 if long else 1):
        a, b = rng.sample(F.IDENTIFIERS, 2)
        n, m = rng.randint(2, 9), rng.randint(2, 9)
        blocks.append(f"Rename {a} to {b}.\nCode: {tpl.format(v=a, n=n, m=m)}\n"
                      f"Result: {tpl.format(v=b, n=n, m=m)}\n")
    old, new = rng.sample(F.IDENTIFIERS, 2)
    n, m = rng.randint(2, 9), rng.randint(2, 9)
    head = "".join(blocks)

    def build(name):
        return (head + f"Rename {old} to {name}.\nCode: {tpl.format(v=old, n=n, m=m)}\nResult:",
                " " + tpl.format(v=name, n=n, m=m))

    return Pair.make(build, new, [x for x in F.IDENTIFIERS if x != old], rng, "exact")


def nl_variable_renaming(rng: random.Random) -> Item:
    old, new = rng.sample(F.IDENTIFIERS, 2)
    tpl = rng.choice(_RENAME_LINES)
    n = rng.randint(2, 9)
    phr = rng.choice(["Can you rename the variable {o} to {nw} in `{c}`?",
                      "Please change {o} to {nw} everywhere in this line: {c}",
                      "Rewrite `{c}` so that it uses {nw} instead of {o}.",
                      "I want {nw} instead of {o} in `{c}`. What's the new line?"])

    def build(name):
        return nl_question(phr.format(o=old, nw=name, c=tpl.format(v=old, n=n)), tpl.format(v=name, n=n))

    return Pair.make(build, new, [x for x in F.IDENTIFIERS if x != old], rng, "exact")


@register_family("variable_renaming", scorer="exact")
class VariableRenaming(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_variable_renaming(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_variable_renaming(rng)
