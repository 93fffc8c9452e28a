"""The ``json_schema`` task family: write a record as a JSON object with the given keys.

``gen_json_schema(rng, split)`` writes the synthetic suite's few-shot prompts (``short`` and
``long`` splits); ``nl_json_schema(rng)`` writes the natural-language suite's question.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from engine.tasks import facts as F
from engine.tasks.families.base import Item, Pair, nl_question
from engine.tasks.registry import Family, register_family


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

    return Pair.make(build, record[first], pools[first], rng, "json")


def nl_json_schema(rng: random.Random) -> Item:
    gens = _json_fields(rng)
    schema = rng.choice(SCHEMAS_SHORT + SCHEMAS_LONG[:3])
    rec = {k: gens[k](rng) for k in schema}
    desc = " and ".join(f"{k} {json.dumps(v) if isinstance(v, bool) else v}" for k, v in rec.items())
    phr = rng.choice(["Can you make a JSON object with {d}?", "Please turn this into JSON: {d}.",
                      "I need a JSON object that has {d}.", "Write JSON for a record with {d}."])
    prompt, target = nl_question(phr.format(d=desc), json.dumps(rec))
    return Item(prompt, target, "json")


@register_family("json_schema", scorer="json")
class JsonSchema(Family):
    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        return gen_json_schema(rng, split)

    def natural(self, rng: random.Random, state: dict) -> Item:
        return nl_json_schema(rng)
