"""The ``uncertainty_expression`` task family: answer ``Unknown`` to a question that cannot be known.

``gen_uncertainty_expression(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_uncertainty_expression(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import random

from engine.tasks import facts as F
from engine.tasks.families.base import FACT_QUESTIONS, Item, all_facts, nl_question
from engine.tasks.registry import Family, register_family


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


def nl_uncertainty_expression(rng: random.Random) -> Item:
    lead = rng.choice(["Hey, ", "Quick question: ", "Do you know this? ", "I'm curious. ", "Tell me, ", ""])
    q = _unknowable(rng)
    if lead and lead[-2] in ",:":
        q = q[0].lower() + q[1:]
    tail = rng.choice([" If there's no way to know, just say Unknown.", " If you can't know that, say Unknown.",
                       " (Say Unknown if it can't be known.)", " Answer Unknown if nobody could know."])
    prompt, target = nl_question(lead + q + tail, "Unknown")
    return Item(prompt, target, "exact")


@register_family("uncertainty_expression", scorer="exact")
class UncertaintyExpression(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_uncertainty_expression(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_uncertainty_expression(rng)
