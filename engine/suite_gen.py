"""Deterministic generators for the task suites in ``fixtures/``.

Two suites over the same 12 families:

* ``synthetic`` (4,300 examples): few-shot prompts in a terse raw style ("Q: ... / A:", "Input: ... /
  Output:"), two splits per family: ``short`` (2,500: small inputs, 1-2 worked examples) and ``long``
  (1,800: bigger inputs, more steps or more worked examples).
* ``nl`` (2,500 examples, >= 50 per family): the same questions in everyday phrasing, no worked examples,
  ending with an ``Answer:`` cue.

Every prompt is unique within its suite. Prompts end so that a small model's greedy next token can be the
answer's first token: a word answer follows ``"A:"``/``"Answer:"`` and its target carries the leading space
(``" Paris"``); a number follows ``"= "``/``"A: "`` (both tokenizers split digits after a separate space
token) and its target has none (``"37"``). Where it makes sense an example carries a clean/corrupt pair for
activation patching: ``corrupt`` swaps one digit or one single-token word (see ``engine.tasks.facts``) so
the two prompts have the same token length and a different answer (``corrupt_target``).

Everything is driven by ``random.Random`` seeded from strings (stable across runs and platforms), so
``write_fixtures`` reproduces the committed files byte for byte; the manifest records their sha256.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.tasks import facts as F
from engine.tasks.examples import FAMILIES, Example, sha256_file, write_jsonl
from engine.tasks.scorers import closers_for

GENERATOR_VERSION = "1"

# per-family counts: 2,500 short + 1,800 long = 4,300 synthetic; 2,500 natural-language
SHORT_COUNTS = {f: (209 if i < 4 else 208) for i, f in enumerate(FAMILIES)}
LONG_COUNTS = {f: 150 for f in FAMILIES}
NL_COUNTS = dict(SHORT_COUNTS)


@dataclass(frozen=True)
class Item:
    """A generated prompt before it gets an id."""

    prompt: str
    target: str
    scorer: str
    corrupt: str | None = None
    corrupt_target: str | None = None


class _Pair:
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
                    and _answer_kind(c_target) == _answer_kind(target)):
                return Item(prompt, target, scorer, c_prompt, c_target)
        return Item(prompt, target, scorer)


def _answer_kind(target: str) -> tuple[bool, bool]:
    """(starts with a space, is a number): the two things that decide how a prompt ends."""
    return target[:1] == " ", target.strip().lstrip("-")[:1].isdigit()


def _cue(answer: str, label: str = "A:") -> tuple[str, str]:
    """Prompt ending and target for an answer: numbers after ``"A: "``, words after ``"A:"`` + space."""
    if answer[:1].isdigit():
        return f"{label} ", answer
    return label, " " + answer


def _digit_variants(n: int) -> list[int]:
    """Numbers with the same digit count that differ from ``n`` in one digit (no leading zero)."""
    s = str(n)
    out = []
    for i, ch in enumerate(s):
        for d in "0123456789":
            if d != ch and not (i == 0 and d == "0" and len(s) > 1):
                out.append(int(s[:i] + d + s[i + 1:]))
    return out


# --------------------------------------------------------------------------------------------- arithmetic


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
    for v in _digit_variants(xs[slot]):
        cand = xs[:slot] + (v,) + xs[slot + 1:]
        if _arith_eval(op, cand)[1] is not None:
            alts.append(cand)
    return _Pair.make(build, xs, alts, rng, "numeric")


# --------------------------------------------------------------------------------------------- code semantics


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
        ending, target = _cue(out, "Output:")
        return head + f"Code:{sep}{code}\n{ending}", target

    scorer = "numeric" if build(vals)[1].isdigit() else "exact"
    if vals is None:
        prompt, target = full(vals)
        return Item(prompt, target, scorer)
    slot = rng.randrange(len(vals))
    alts = [vals[:slot] + (d,) + vals[slot + 1:] for d in _digit_variants(vals[slot])]
    return _Pair.make(full, vals, alts, rng, scorer)


# --------------------------------------------------------------------------------------------- code syntax


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

        return _Pair.make(build, openers[kind][0], ["[", "("], rng, "first_token")
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


# --------------------------------------------------------------------------------------------- copying


def gen_copying(rng: random.Random, split: str) -> Item:
    long = split == "long"
    if not long:
        shots = rng.sample(F.WORDS, 2)
        head = "Copy the word.\n" + "".join(f"Word: {s}\nCopy: {s}\n" for s in shots)
        word = rng.choice([w for w in F.WORDS if w not in shots])

        def build(x):
            return head + f"Word: {x}\nCopy:", " " + x

        return _Pair.make(build, word, F.WORDS, rng, "exact")
    shot = " ".join(rng.sample(F.WORDS, rng.randint(4, 6)))
    rest = rng.sample(F.WORDS, rng.randint(4, 7))
    head = f"Copy the text.\nText: {shot}\nCopy: {shot}\n"

    def build(first):
        text = " ".join([first] + rest)
        return head + f"Text: {text}\nCopy:", " " + text

    first = rng.choice([w for w in F.WORDS if w not in rest])
    return _Pair.make(build, first, [w for w in F.WORDS if w not in rest], rng, "exact")


# --------------------------------------------------------------------------------------------- delimiters


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

    return _Pair.make(build, opened[-1], list("([{"), rng, "brackets")


# --------------------------------------------------------------------------------------------- facts


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
# categories whose subjects are single-token (leading space) in both tokenizers: clean/corrupt swaps
SWAPPABLE = {"capital", "language", "currency", "element", "opposite", "weekday", "month"}


def fact_table() -> dict[str, list[tuple[str, str]]]:
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
    return [(cat, s, a) for cat, rows in fact_table().items() for s, a in rows]


class _Cycle:
    """Draw items without replacement from a shuffled list, reshuffling when exhausted (so every item is
    used before any repeats)."""

    def __init__(self, items: list, rng: random.Random):
        self.items, self.rng, self.queue = list(items), rng, []

    def next(self):
        if not self.queue:
            self.queue = list(self.items)
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def _fact_item(rng: random.Random, cat: str, subj: str, header: str, shots: list[tuple[str, str, str]],
               question: Callable[[str, str], str]) -> Item:
    table = fact_table()
    head = header + "".join(f"Q: {question(c, s)}\nA: {a}\n" for c, s, a in shots)

    def build(x):
        answer = dict(table[cat])[x]
        return head + f"Q: {question(cat, x)}\nA:", " " + answer

    if cat in SWAPPABLE:
        return _Pair.make(build, subj, [s for s, _ in table[cat]], rng, "exact")
    prompt, target = build(subj)
    return Item(prompt, target, "exact")


def gen_factual_recall(rng: random.Random, split: str, state: dict) -> Item:
    long = split == "long"
    cycle = state.setdefault("facts", _Cycle(all_facts(), rng))
    cat, subj, _ = cycle.next()
    table = fact_table()
    if long:
        shots = [(c, s, a) for c, s, a in rng.sample(all_facts(), 5) if (c, s) != (cat, subj)][:4]
        header = "Answer each question with a short fact.\n"
    else:
        pool = [(cat, s, a) for s, a in table[cat] if s != subj]
        shots = rng.sample(pool, 2)
        header = ""
    return _fact_item(rng, cat, subj, header, shots, lambda c, s: FACT_QUESTIONS[c].format(s=s))


# --------------------------------------------------------------------------------------------- instructions


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

        return _Pair.make(build, rest[0], [w for w in F.SHORT_WORDS if w not in rest], rng, "exact")
    instr, fn = _instr_short(rng)
    shots = rng.sample(F.SHORT_WORDS, 2)
    head = instr + "\n" + "".join(f"Input: {s}\nOutput: {fn(s)}\n" for s in shots)
    word = rng.choice([w for w in F.SHORT_WORDS if w not in shots])

    def build(x):
        return head + f"Input: {x}\nOutput:", " " + fn(x)

    return _Pair.make(build, word, F.SHORT_WORDS, rng, "exact")


# --------------------------------------------------------------------------------------------- json


def _json_fields(rng: random.Random) -> dict[str, Callable[[random.Random], object]]:
    return {
        "name": lambda r: r.choice(F.NAMES),
        "age": lambda r: r.randint(18, 80),
        "city": lambda r: r.choice(F.CITIES),
        "item": lambda r: r.choice(F.WORDS),
        "price": lambda r: r.randint(2, 99),
        "active": lambda r: r.choice([True, False]),
        "count": lambda r: r.randint(1, 9),
        "color": lambda r: r.choice(["red", "blue", "green", "black", "white", "yellow"]),
    }


SCHEMAS_SHORT = [("name", "age"), ("city", "count"), ("item", "price"), ("name", "city"), ("item", "color"),
                 ("name", "active")]
SCHEMAS_LONG = [("name", "age", "city"), ("item", "price", "count"), ("name", "age", "active"),
                ("name", "city", "color", "active"), ("item", "color", "price", "count"),
                ("name", "item", "count")]


def _kv(record: dict) -> str:
    parts = []
    for k, v in record.items():
        parts.append(f"{k}: {json.dumps(v) if isinstance(v, bool) else v}")
    return ", ".join(parts)


def gen_json_schema(rng: random.Random, split: str) -> Item:
    long = split == "long"
    schema = rng.choice(SCHEMAS_LONG if long else SCHEMAS_SHORT)
    gens = _json_fields(rng)
    keys = ", ".join(schema)
    shot = {k: gens[k](rng) for k in schema}
    head = f"Write the data as JSON with the keys {keys}.\n{_kv(shot)}\nJSON: {json.dumps(shot)}\n"
    record = {k: gens[k](rng) for k in schema}
    first = schema[0]
    pools = {"name": F.NAMES, "city": F.CITIES, "item": F.WORDS}

    def build(value):
        rec = dict(record)
        rec[first] = value
        return head + f"{_kv(rec)}\nJSON:", " " + json.dumps(rec)

    return _Pair.make(build, record[first], pools[first], rng, "json")


# --------------------------------------------------------------------------------------------- decoding


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
            alts = [c for c in _digit_variants(code) if chr(c) in _HEX_CHARS]
        elif f"{code:02x}"[1].isdigit():
            alts = [c for c in range(0x30, 0x7b) if chr(c) in _HEX_CHARS
                    and f"{c:02x}"[0] == f"{code:02x}"[0] and f"{c:02x}"[1].isdigit()]
        else:
            alts = []
        return _Pair.make(build, code, alts, rng, "exact")
    esc, ch = _decode_short(rng, kind)
    return Item(head + f"{esc} =", " " + ch, "exact")


# --------------------------------------------------------------------------------------------- uncertainty


def _unknowable(rng: random.Random) -> str:
    tpl = rng.choice(F.UNKNOWABLE_TEMPLATES)
    return tpl.format(rel=rng.choice(F.RELATIVES), pref=rng.choice(F.PREFERENCES), meal=rng.choice(F.MEALS),
                      when=rng.choice(F.WHENS), n=rng.choice([10, 20, 50, 100, 1000]),
                      thing=rng.choice(F.POSSESSIONS), future=rng.choice(F.FUTURES))


def _story(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[str]]:
    name = rng.choice(F.NAMES)
    place = rng.choice(["market", "library", "park", "station", "museum", "bakery", "beach"])
    day = rng.choice(F.WEEKDAYS)
    n = rng.randint(2, 9)
    thing = rng.choice(["apples", "books", "tickets", "flowers", "candles", "cookies", "pencils"])
    text = f"{name} went to the {place} on {day} and bought {n} {thing}."
    known = [(f"Where did {name} go?", f"the {place}"), (f"What did {name} buy?", thing),
             (f"On which day did {name} go out?", day), (f"How many {thing} did {name} buy?", str(n))]
    unknown = [f"What color was {name}'s coat?", f"How much money did {name} spend?",
               f"Who did {name} meet at the {place}?", f"What time did {name} leave the {place}?",
               f"Why did {name} buy {thing}?", f"How did {name} get to the {place}?"]
    return text, known, unknown


def gen_uncertainty_expression(rng: random.Random, split: str) -> Item:
    header = "Answer the question. If the answer cannot be known, answer Unknown.\n"
    if split == "long":
        blocks = []
        for answerable in rng.sample([True, False], 2):
            text, known, unknown = _story(rng)
            if answerable:
                q, a = rng.choice(known)
            else:
                q, a = rng.choice(unknown), "Unknown"
            blocks.append(f"Text: {text}\nQ: {q}\nA: {a}\n")
        text, _, unknown = _story(rng)
        prompt = header + "".join(blocks) + f"Text: {text}\nQ: {rng.choice(unknown)}\nA:"
        return Item(prompt, " Unknown", "exact")
    cat, subj, ans = rng.choice(all_facts())
    shots = [(FACT_QUESTIONS[cat].format(s=subj), ans), (_unknowable(rng), "Unknown")]
    rng.shuffle(shots)
    head = header + "".join(f"Q: {q}\nA: {a}\n" for q, a in shots)
    return Item(head + f"Q: {_unknowable(rng)}\nA:", " Unknown", "exact")


# --------------------------------------------------------------------------------------------- renaming


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

    return _Pair.make(build, new, [x for x in F.IDENTIFIERS if x != old], rng, "exact")


# --------------------------------------------------------------------------------------------- verbosity


def one_word_questions() -> list[tuple[str, str, str | None, list[str]]]:
    """(question template with {s} or none, answer, subject, swappable subjects) for one-word answers."""
    out: list[tuple[str, str, str | None, list[str]]] = [(q, a, None, []) for q, a in F.ONE_WORD_QA]
    table = fact_table()
    for cat in ("capital", "language", "opposite", "weekday", "month"):
        rows = [(s, a) for s, a in table[cat] if " " not in a]
        subjects = [s for s, _ in rows]
        for s, a in rows:
            out.append((FACT_QUESTIONS[cat], a[0].upper() + a[1:], s, subjects))
    return out


def gen_verbosity_control(rng: random.Random, split: str, state: dict) -> Item:
    long = split == "long"
    qs = one_word_questions()
    cycle = state.setdefault("qs", _Cycle(qs, rng))
    tpl, ans, subj, subjects = cycle.next()
    shots = [q for q in rng.sample(qs, 3) if q[:3] != (tpl, ans, subj)][:2]

    def text(t, s):
        return t.format(s=s) if s is not None else t

    if long:
        header = "Reply with exactly one word and nothing else, no explanation.\n"
        lead = rng.choice(["I have been wondering about this for a while. ", "My friend asked me this today. ",
                           "Quick question for a quiz. ", "I forgot this and need help. ",
                           "This came up at dinner. "])
    else:
        header, lead = "Answer in one word.\n", ""
    head = header + "".join(f"Q: {lead}{text(t, s)}\nA: {a}\n" for t, a, s, _ in shots)
    if subj is None:
        return Item(head + f"Q: {lead}{text(tpl, subj)}\nA:", " " + ans, "one_word")
    cat_rows = {s: a for t, a, s, _ in qs if t == tpl and s is not None}

    def build(s):
        return head + f"Q: {lead}{text(tpl, s)}\nA:", " " + cat_rows[s]

    return _Pair.make(build, subj, subjects, rng, "one_word")


# --------------------------------------------------------------------------------------------- natural language


def _nl(question: str, answer: str) -> tuple[str, str]:
    ending, target = _cue(answer, "Answer:")
    return f"{question}\n{ending}", target


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
        return _nl(q(*v), str(f(*v)))

    slot = rng.randrange(2)
    vals = (a, b)
    alts = []
    for d in _digit_variants(vals[slot]):
        cand = vals[:slot] + (d,) + vals[slot + 1:]
        if f(*cand) >= 0:
            alts.append(cand)
    return _Pair.make(build, vals, alts, rng, "numeric")


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
    prompt, target = _nl(phr.format(c=code), out)
    return Item(prompt, target, "numeric" if out.isdigit() else "exact")


def nl_code_syntax(rng: random.Random) -> Item:
    kind = rng.randrange(4)
    if kind == 0:
        mod, alias = rng.choice(F.IMPORT_ALIASES)
        q = rng.choice([f"In Python, people usually write `import {mod} as` followed by which short name?",
                        f"What is the usual short name when you import {mod} in Python?",
                        f"Finish this common Python line: `import {mod} as`"])
        prompt, target = _nl(q, alias)
    elif kind == 1:
        err = rng.choice(F.EXCEPTIONS)
        q = rng.choice([f"In Python, `except {err} as` is usually followed by which one-letter name?",
                        f"Finish this Python line with the usual variable: `except {err} as`"])
        prompt, target = _nl(q, "e")
    elif kind == 2:
        word = rng.choice(F.WORDS)
        q = rng.choice([f"In Python, `with open(\"{word}.txt\") as` is usually followed by which one-letter name?",
                        f"Finish this Python line with the usual variable: `with open(\"{word}.txt\") as`"])
        prompt, target = _nl(q, "f")
    else:
        v = rng.choice(F.IDENTIFIERS)
        q = rng.choice([f"In Python, which keyword finishes `if {v} is not` when checking for a missing value?",
                        f"Finish this Python check for a missing value: `if {v} is not`"])
        prompt, target = _nl(q, "None")
    return Item(prompt, target, "first_token")


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
        return _nl(phr.format(w=w), w)

    return _Pair.make(build, word, F.WORDS, rng, "exact")


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
        return _nl(phr.format(o=" ".join(seq)), " ".join(closers_for("".join(seq))))

    return _Pair.make(build, opened[-1], list("([{"), rng, "brackets")


NL_FACT_PHRASES: dict[str, list[str]] = {
    "capital": ["Do you know which city is the capital of {s}?", "What's the capital city of {s}?",
                "I'm flying to the capital of {s}. Which city is that?"],
    "language": ["What language do people speak in {s}?", "If I travel to {s}, which language will I hear?",
                 "Which language is mostly spoken in {s}?"],
    "currency": ["What money do they use in {s}?", "If I go shopping in {s}, which currency do I pay with?"],
    "element": ["What's the chemical symbol for {s}?", "On the periodic table, which symbol stands for {s}?"],
    "opposite": ["What's the opposite of {s}?", "Give me the opposite of the word {s}."],
    "weekday": ["Which day comes right after {s}?", "If today is {s}, what day is tomorrow?"],
    "month": ["Which month comes after {s}?", "If this month is {s}, what is next month?"],
    "plural": ["What's the plural of {s}?", "If there are two of them, what do you call more than one {s}?"],
    "past": ["What's the past tense of {s}?", "Yesterday I ... ({s}, past tense). Which word goes there?"],
    "young": ["What do you call a baby {s}?", "What's the name for a young {s}?"],
    "color": ["What color is {s}?", "If you picture {s}, what color is it?"],
}


def nl_factual_recall(rng: random.Random, state: dict) -> Item:
    cycle = state.setdefault("facts", _Cycle(all_facts(), rng))
    cat, subj, _ = cycle.next()
    phr = rng.choice(NL_FACT_PHRASES[cat])
    table = dict(fact_table()[cat])

    def build(s):
        return _nl(phr.format(s=s), table[s])

    if cat in SWAPPABLE:
        return _Pair.make(build, subj, list(table), rng, "exact")
    prompt, target = build(subj)
    return Item(prompt, target, "exact")


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
        return _nl(phr.format(w=w), fn(w))

    return _Pair.make(build, rng.choice(F.SHORT_WORDS), F.SHORT_WORDS, rng, "exact")


def nl_json_schema(rng: random.Random) -> Item:
    gens = _json_fields(rng)
    schema = rng.choice(SCHEMAS_SHORT + SCHEMAS_LONG[:3])
    rec = {k: gens[k](rng) for k in schema}
    desc = " and ".join(f"{k} {json.dumps(v) if isinstance(v, bool) else v}" for k, v in rec.items())
    phr = rng.choice(["Can you make a JSON object with {d}?", "Please turn this into JSON: {d}.",
                      "I need a JSON object that has {d}.", "Write JSON for a record with {d}."])
    prompt, target = _nl(phr.format(d=desc), json.dumps(rec))
    return Item(prompt, target, "json")


def nl_string_decoding(rng: random.Random) -> Item:
    kind = rng.randrange(4)
    if kind == 0:
        ent, ch = rng.choice(F.HTML_ENTITIES)
        q = rng.choice([f"On a web page, what character does {ent} stand for?",
                        f"I saw {ent} in some HTML. Which symbol is that?"])
        prompt, target = _nl(q, ch)
        return Item(prompt, target, "exact")
    if kind == 1:
        esc, ch = rng.choice(F.URL_ESCAPES)
        q = rng.choice([f"In a web address, what character does {esc} mean?",
                        f"A link contains {esc}. Which character is that once decoded?"])
        prompt, target = _nl(q, ch)
        return Item(prompt, target, "exact")
    if kind == 2:
        esc, name = rng.choice(F.TEXT_ESCAPES)
        q = rng.choice([f"In a string, what does {esc} stand for?", f"What does the escape {esc} mean in code?",
                        f"When programmers write {esc} inside quotes, what do they mean?"])
        prompt, target = _nl(q, name)
        return Item(prompt, target, "exact")
    ch = rng.choice(string.ascii_letters)
    phr = rng.choice(["What letter is \\x{h} in a Python string?", "Which character does the escape \\x{h} give?",
                      "What does chr({d}) return in Python?", "Which letter has the ASCII code {d}?"])
    prompt, target = _nl(phr.format(h=f"{ord(ch):02x}", d=ord(ch)), ch)
    return Item(prompt, target, "exact")


def nl_uncertainty_expression(rng: random.Random) -> Item:
    lead = rng.choice(["Hey, ", "Quick question: ", "Do you know this? ", "I'm curious. ", "Tell me, ", ""])
    q = _unknowable(rng)
    if lead and lead[-2] in ",:":
        q = q[0].lower() + q[1:]
    tail = rng.choice([" If there's no way to know, just say Unknown.", " If you can't know that, say Unknown.",
                       " (Say Unknown if it can't be known.)", " Answer Unknown if nobody could know."])
    prompt, target = _nl(lead + q + tail, "Unknown")
    return Item(prompt, target, "exact")


def nl_variable_renaming(rng: random.Random) -> Item:
    old, new = rng.sample(F.IDENTIFIERS, 2)
    tpl = rng.choice(_RENAME_LINES)
    n = rng.randint(2, 9)
    phr = rng.choice(["Can you rename the variable {o} to {nw} in `{c}`?",
                      "Please change {o} to {nw} everywhere in this line: {c}",
                      "Rewrite `{c}` so that it uses {nw} instead of {o}.",
                      "I want {nw} instead of {o} in `{c}`. What's the new line?"])

    def build(name):
        return _nl(phr.format(o=old, nw=name, c=tpl.format(v=old, n=n)), tpl.format(v=name, n=n))

    return _Pair.make(build, new, [x for x in F.IDENTIFIERS if x != old], rng, "exact")


def nl_verbosity_control(rng: random.Random, state: dict) -> Item:
    qs = one_word_questions()
    cycle = state.setdefault("qs", _Cycle(qs, rng))
    tpl, ans, subj, _ = cycle.next()
    q = tpl.format(s=subj) if subj is not None else tpl
    phr = rng.choice(["In just one word: {q}", "{q} Please answer with a single word.",
                      "One word only, please. {q}", "{q} Keep it to one word.", "Short answer, one word: {q}"])
    prompt, target = _nl(phr.format(q=q), ans)
    return Item(prompt, target, "one_word")


# --------------------------------------------------------------------------------------------- driver

_STATEFUL = {"factual_recall", "verbosity_control"}


def _synthetic_gen(family: str) -> Callable[[random.Random, str, dict], Item]:
    fn = globals()[f"gen_{family}"]
    if family in _STATEFUL:
        return fn
    return lambda rng, split, state: fn(rng, split)


def _nl_gen(family: str) -> Callable[[random.Random, str, dict], Item]:
    fn = globals()[f"nl_{family}"]
    if family in _STATEFUL:
        return lambda rng, split, state: fn(rng, state)
    return lambda rng, split, state: fn(rng)


def generate_examples(suite: str, family: str, split: str, count: int) -> list[Example]:
    """``count`` examples with unique prompts for one suite/family/split, deterministically."""
    rng = random.Random(f"mi-atlas-suite/{GENERATOR_VERSION}/{suite}/{family}/{split}")
    gen = _synthetic_gen(family) if suite == "synthetic" else _nl_gen(family)
    state: dict = {}
    seen: set[str] = set()
    out: list[Example] = []
    attempts = 0
    prefix = "syn" if suite == "synthetic" else "nl"
    while len(out) < count:
        attempts += 1
        if attempts > 200 * count:
            raise RuntimeError(f"{suite}/{family}/{split}: only {len(out)} unique prompts after {attempts} tries")
        item = gen(rng, split, state)
        if item.prompt in seen:
            continue
        seen.add(item.prompt)
        out.append(Example(
            id=f"{prefix}-{family}-{split}-{len(out):04d}", family=family, split=split, prompt=item.prompt,
            target=item.target, scorer=item.scorer, clean=item.prompt if item.corrupt else None,
            corrupt=item.corrupt, corrupt_target=item.corrupt_target))
    return out


def build_suites() -> dict[tuple[str, str, str], list[Example]]:
    """Every fixture file's examples keyed by (suite, family, split), in manifest order."""
    out: dict[tuple[str, str, str], list[Example]] = {}
    for family in FAMILIES:
        out[("synthetic", family, "short")] = generate_examples("synthetic", family, "short", SHORT_COUNTS[family])
        out[("synthetic", family, "long")] = generate_examples("synthetic", family, "long", LONG_COUNTS[family])
    for family in FAMILIES:
        out[("nl", family, "nl")] = generate_examples("nl", family, "nl", NL_COUNTS[family])
    return out


def fixture_path(suite: str, family: str, split: str) -> str:
    return f"{suite}/{family}.jsonl" if suite == "nl" else f"{suite}/{family}.{split}.jsonl"


def write_fixtures(directory: Path) -> dict:
    """Generate every suite into ``directory`` (JSONL files + ``manifest.json``); returns the manifest."""
    directory = Path(directory)
    suites = build_suites()
    wanted = {fixture_path(*key) for key in suites}
    for stale in sorted(directory.glob("*/*.jsonl")):  # files of an older layout would confuse a reader
        if stale.parent.name in ("synthetic", "nl") and stale.relative_to(directory).as_posix() not in wanted:
            stale.unlink()
    files = []
    for (suite, family, split), examples in suites.items():
        rel = fixture_path(suite, family, split)
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, examples)
        files.append({"path": rel, "suite": suite, "family": family, "split": split, "count": len(examples),
                      "generator_version": GENERATOR_VERSION,
                      "pairs": sum(ex.corrupt is not None for ex in examples), "sha256": sha256_file(path)})
    totals: dict[str, int] = {}
    for f in files:
        totals[f["suite"]] = totals.get(f["suite"], 0) + f["count"]
    manifest = {"generator": "engine.suite_gen", "generator_version": GENERATOR_VERSION, "totals": totals,
                "files": files}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8",
                                             newline="\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.suite_gen [--out DIR]``: write the suites and their manifest."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.suite_gen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: fixtures/)")
    args = parser.parse_args(argv)
    from engine.tasks.examples import fixtures_dir

    out = args.out if args.out is not None else fixtures_dir()
    manifest = write_fixtures(out)
    totals = ", ".join(f"{suite} {n}" for suite, n in manifest["totals"].items())
    print(f"wrote {len(manifest['files'])} files to {out} ({totals}; generator v{manifest['generator_version']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
