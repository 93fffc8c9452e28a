"""The ``verbosity_control`` task family: answer with exactly one word.

``gen_verbosity_control(rng, split, state)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_verbosity_control(rng, state)`` writes the natural-language suite's question.
Stateful: both draw their questions from a ``Cycle`` kept in the per-file ``state`` dict (every
question is used before any repeats).
"""

from __future__ import annotations

import random

from engine.tasks import facts as F
from engine.tasks.families.base import FACT_QUESTIONS, Cycle, Item, Pair, fact_table, nl_question
from engine.tasks.registry import Family, register_family


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
    cycle = state.setdefault("qs", Cycle(qs, rng))
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

    return Pair.make(build, subj, subjects, rng, "one_word")


def nl_verbosity_control(rng: random.Random, state: dict) -> Item:
    qs = one_word_questions()
    cycle = state.setdefault("qs", Cycle(qs, rng))
    tpl, ans, subj, _ = cycle.next()
    q = tpl.format(s=subj) if subj is not None else tpl
    phr = rng.choice(["In just one word: {q}", "{q} Please answer with a single word.",
                      "One word only, please. {q}", "{q} Keep it to one word.", "Short answer, one word: {q}"])
    prompt, target = nl_question(phr.format(q=q), ans)
    return Item(prompt, target, "one_word")


@register_family("verbosity_control", scorer="one_word", stateful=True)
class VerbosityControl(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_verbosity_control(rng, split, state)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_verbosity_control(rng, state)
