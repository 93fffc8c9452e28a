"""The ``string_decoding`` task family: decode an escape: ``\\x..``, ``chr(..)``, HTML entities, URL escapes.

``gen_string_decoding(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_string_decoding(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import random
import string

from engine.tasks import facts as F
from engine.tasks.families.base import Item, Pair, digit_variants, nl_question
from engine.tasks.registry import Family, register_family


_HEX_CHARS = string.ascii_letters + string.digits


def _decode_short(rng: random.Random, kind: int) -> tuple[str, str]:
    if kind == 0:
        ch = rng.choice(_HEX_CHARS)
        return f"\\x{ord(ch):02x}", ch
    if kind == 1:
        return rng.choice(F.HTML_ENTITIES)
    if kind == 2:
        return rng.choice(F.URL_ESCAPES)
    ch = rng.choice(_HEX_CHARS)
    return f"chr({ord(ch)})", ch


def gen_string_decoding(rng: random.Random, split: str) -> Item:
    if split == "long":
        kind = rng.randrange(3)
        if kind == 0:
            word = rng.choice(F.SHORT_WORDS + F.WORDS)
            enc = lambda w: "".join(f"\\x{ord(c):02x}" for c in w)  # noqa: E731
        elif kind == 1:
            word = " ".join(rng.sample(F.SHORT_WORDS, 2))
            enc = lambda w: w.replace(" ", "%20")  # noqa: E731
        else:
            a, b = rng.sample(F.NAMES, 2)
            word = f"{a} & {b}"
            enc = lambda w: w.replace("&", "&amp;")  # noqa: E731
        shot_words = {0: lambda: rng.choice(F.SHORT_WORDS + F.WORDS),
                      1: lambda: " ".join(rng.sample(F.SHORT_WORDS, 2)),
                      2: lambda: " & ".join(rng.sample(F.NAMES, 2))}[kind]
        shots = [shot_words() for _ in range(2)]
        head = "Decode the text.\n" + "".join(f"{enc(s)} = {s}\n" for s in shots)
        return Item(head + f"{enc(word)} =", " " + word, "exact")
    kind = rng.randrange(4)
    shots = [_decode_short(rng, kind) for _ in range(2)]
    head = "Decode the escape.\n" + "".join(f"{e} = {c}\n" for e, c in shots)
    if kind in (0, 3):
        ch = rng.choice(_HEX_CHARS)
        code = ord(ch)

        def build(c):
            esc = f"\\x{c:02x}" if kind == 0 else f"chr({c})"
            return head + f"{esc} =", " " + chr(c)

        # swap one decimal digit of the code (hex: only its second digit, and only when both are 0-9),
        # staying on letters and digits, so the prompts keep their token length
        if kind == 3:
            alts = [c for c in digit_variants(code) if chr(c) in _HEX_CHARS]
        elif f"{code:02x}"[1].isdigit():
            alts = [c for c in range(0x30, 0x7b) if chr(c) in _HEX_CHARS
                    and f"{c:02x}"[0] == f"{code:02x}"[0] and f"{c:02x}"[1].isdigit()]
        else:
            alts = []
        return Pair.make(build, code, alts, rng, "exact")
    esc, ch = _decode_short(rng, kind)
    return Item(head + f"{esc} =", " " + ch, "exact")


def nl_string_decoding(rng: random.Random) -> Item:
    kind = rng.randrange(4)
    if kind == 0:
        ent, ch = rng.choice(F.HTML_ENTITIES)
        q = rng.choice([f"On a web page, what character does {ent} stand for?",
                        f"I saw {ent} in some HTML. Which symbol is that?"])
        prompt, target = nl_question(q, ch)
        return Item(prompt, target, "exact")
    if kind == 1:
        esc, ch = rng.choice(F.URL_ESCAPES)
        q = rng.choice([f"In a web address, what character does {esc} mean?",
                        f"A link contains {esc}. Which character is that once decoded?"])
        prompt, target = nl_question(q, ch)
        return Item(prompt, target, "exact")
    if kind == 2:
        esc, name = rng.choice(F.TEXT_ESCAPES)
        q = rng.choice([f"In a string, what does {esc} stand for?", f"What does the escape {esc} mean in code?",
                        f"When programmers write {esc} inside quotes, what do they mean?"])
        prompt, target = nl_question(q, name)
        return Item(prompt, target, "exact")
    ch = rng.choice(string.ascii_letters)
    phr = rng.choice(["What letter is \\x{h} in a Python string?", "Which character does the escape \\x{h} give?",
                      "What does chr({d}) return in Python?", "Which letter has the ASCII code {d}?"])
    prompt, target = nl_question(phr.format(h=f"{ord(ch):02x}", d=ord(ch)), ch)
    return Item(prompt, target, "exact")


@register_family("string_decoding", scorer="exact")
class StringDecoding(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_string_decoding(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_string_decoding(rng)
