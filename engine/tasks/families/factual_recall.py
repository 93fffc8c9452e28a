"""The ``factual_recall`` task family: short facts (capitals, languages, currencies, ...) from
``engine.tasks.facts``.

``gen_factual_recall(rng, split, state)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_factual_recall(rng, state)`` writes the natural-language suite's question.
Stateful: both draw their questions from a ``Cycle`` kept in the per-file ``state`` dict (every
question is used before any repeats).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from engine.tasks.families.base import FACT_QUESTIONS, Cycle, Item, Pair, all_facts, fact_table, nl_question
from engine.tasks.registry import Family, register_family


# categories whose subjects are single-token (leading space) in both tokenizers: clean/corrupt swaps
SWAPPABLE = {"capital", "language", "currency", "element", "opposite", "weekday", "month"}


def _fact_item(rng: random.Random, cat: str, subj: str, header: str, shots: list[tuple[str, str, str]],
               question: Callable[[str, str], str]) -> Item:
    table = fact_table()
    head = header + "".join(f"Q: {question(c, s)}\nA: {a}\n" for c, s, a in shots)

    def build(x):
        answer = dict(table[cat])[x]
        return head + f"Q: {question(cat, x)}\nA:", " " + answer

    if cat in SWAPPABLE:
        return Pair.make(build, subj, [s for s, _ in table[cat]], rng, "exact")
    prompt, target = build(subj)
    return Item(prompt, target, "exact")


def gen_factual_recall(rng: random.Random, split: str, state: dict) -> Item:
    long = split == "long"
    cycle = state.setdefault("facts", Cycle(all_facts(), rng))
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
    cycle = state.setdefault("facts", Cycle(all_facts(), rng))
    cat, subj, _ = cycle.next()
    phr = rng.choice(NL_FACT_PHRASES[cat])
    table = dict(fact_table()[cat])

    def build(s):
        return nl_question(phr.format(s=s), table[s])

    if cat in SWAPPABLE:
        return Pair.make(build, subj, list(table), rng, "exact")
    prompt, target = build(subj)
    return Item(prompt, target, "exact")


@register_family("factual_recall", scorer="exact", stateful=True)
class FactualRecall(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_factual_recall(rng, split, state)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_factual_recall(rng, state)
