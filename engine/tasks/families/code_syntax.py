"""The ``code_syntax`` task family: the next token of Python code: a closing bracket, a conventional name, a keyword.

``gen_code_syntax(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_code_syntax(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import random

from engine.tasks import facts as F
from engine.tasks.families.base import Item, Pair, nl_question
from engine.tasks.registry import Family, register_family


def _preamble(rng: random.Random) -> str:
    """A random earlier line of Python, so the same completion point appears in many contexts."""
    v = rng.choice(F.IDENTIFIERS)
    choices = [
        f"import {rng.choice(F.OTHER_IMPORTS)}",
        f"{v} = {rng.randint(0, 99)}",
        f"{v} = \"{rng.choice(F.WORDS)}\"",
        f"# {rng.choice(F.FUNC_NAMES)} the {rng.choice(F.IDENTIFIERS)}",
        f"{v} = None",
    ]
    return rng.choice(choices)


def gen_code_syntax(rng: random.Random, split: str) -> Item:
    """Next token of code. Targets are tokens that cannot merge with the prompt's last token."""
    long = split == "long"
    kind = rng.randrange(8)
    v, w = rng.sample(F.IDENTIFIERS, 2)
    n1, n2, n3 = (rng.randint(1, 9) for _ in range(3))
    lines = [_preamble(rng) for _ in range(rng.randint(2, 4) if long else rng.randint(0, 1))]
    if long:
        f = rng.choice(F.FUNC_NAMES)
        lines.append(f"def {f}({v}, {w}):")
        indent = "    "
    else:
        indent = ""
    if kind == 0:
        mod, alias = rng.choice(F.IMPORT_ALIASES)
        body, target = f"import {mod} as", " " + alias
        lines = [ln for ln in lines if not ln.startswith("def ")]
        indent = ""
    elif kind in (1, 2):
        openers = {1: ("[", "]"), 2: ("(", ")")}
        head = "\n".join(lines) + ("\n" if lines else "")
        items = f"{n1}, {n2}, {n3}"

        def build(op):
            close = "]" if op == "[" else ")"
            return head + f"{indent}{w} = {op}{items}", close

        return Pair.make(build, openers[kind][0], ["[", "("], rng, "first_token")
    elif kind == 3:
        body, target = f"with open(\"{rng.choice(F.WORDS)}.txt\") as", " f"
    elif kind == 4:
        body, target = f"except {rng.choice(F.EXCEPTIONS)} as", " e"
    elif kind == 5:
        body, target = f"for {v}, {w} in {rng.choice(['data', 'items', 'cache', 'counts', 'config'])}.", "items"
    elif kind == 6:
        body, target = f"if {v} is not", " None"
    else:
        body, target = f"for {v} in range({n1}, {n1 + n2 + 1}", ")"
    head = "\n".join(lines) + ("\n" if lines else "")
    return Item(head + indent + body, target, "first_token")


def nl_code_syntax(rng: random.Random) -> Item:
    kind = rng.randrange(4)
    if kind == 0:
        mod, alias = rng.choice(F.IMPORT_ALIASES)
        q = rng.choice([f"In Python, people usually write `import {mod} as` followed by which short name?",
                        f"What is the usual short name when you import {mod} in Python?",
                        f"Finish this common Python line: `import {mod} as`"])
        prompt, target = nl_question(q, alias)
    elif kind == 1:
        err = rng.choice(F.EXCEPTIONS)
        q = rng.choice([f"In Python, `except {err} as` is usually followed by which one-letter name?",
                        f"Finish this Python line with the usual variable: `except {err} as`"])
        prompt, target = nl_question(q, "e")
    elif kind == 2:
        word = rng.choice(F.WORDS)
        q = rng.choice([f"In Python, `with open(\"{word}.txt\") as` is usually followed by which one-letter name?",
                        f"Finish this Python line with the usual variable: `with open(\"{word}.txt\") as`"])
        prompt, target = nl_question(q, "f")
    else:
        v = rng.choice(F.IDENTIFIERS)
        q = rng.choice([f"In Python, which keyword finishes `if {v} is not` when checking for a missing value?",
                        f"Finish this Python check for a missing value: `if {v} is not`"])
        prompt, target = nl_question(q, "None")
    return Item(prompt, target, "first_token")


@register_family("code_syntax", scorer="first_token")
class CodeSyntax(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_code_syntax(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_code_syntax(rng)
