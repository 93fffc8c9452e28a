"""The measurement planner: what each claim will measure, collected before any test runs.

Each block declares, per claim, the measurements its procedure asks for (:func:`declares`, one function per
claim or group of claims, next to the block's procedures: ``engine/studies/atlas/needs.py`` ...). A declaration
is a list of :class:`Need` (kind, method / component, sample, positions, number of examples) for one model and
the plan's sizes. :func:`plan` takes the collected claim tests and returns a :class:`Plan`: every distinct
measurement once, with the claims that read it, ordered model by model (the xdist groups keep a model on one
worker, so it is loaded once per process), and what is left to the run itself (``dynamic``: measurements whose
identity depends on earlier results, e.g. the LoRA block's atlas-guided layers).

Sharing is by identity: two claims that declare the same need on the same model read one measurement (the
content-addressed cache computes it once; ``tests/test_planner.py`` counts forward passes per measurement key).
Different samples are not merged into a union: the rigorous seeds' stratified samples do not overlap
(Jaccard 0.00 at 2 per family over the 208-209 short prompts per family), so a union would save nothing and would
change the seeds' batches.

The declarations are checked against what the procedures really measured: ``tests/test_planner.py`` compares
each claim's declared measurements with the ledger of the last smoke run (``results/bench/plan-smoke-timings.json``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Need:
    """One measurement a claim asks for on ``model``.

    ``kind`` is the ledger's kind (``atlas``, ``skip-overlaps``, ``steer-study-v2`` ...); ``detail`` what the
    ledger shows in brackets (``zero/layer``); ``sample`` names the examples (``rigorous seed 42``, ``seed
    first-k``, ``nl seed 42``); ``variant`` anything else that makes it another measurement (positions, a
    method's reference); ``n`` the number of examples (None where the ledger shows none).
    """

    model: str
    kind: str
    sample: str
    n: int | None = None
    detail: str = ""
    variant: str = ""

    @property
    def what(self) -> str:
        """The ledger's description of this measurement (``engine.progress``): "atlas(zero/layer) m n=24"."""
        kind = f"{self.kind}({self.detail})" if self.detail else self.kind
        return f"{kind} {self.model}" + (f" n={self.n}" if self.n is not None else "")


Declaration = Callable[[str, str, Mapping[str, Any]], "list[Need] | Dynamic"]


@dataclass(frozen=True)
class Dynamic:
    """A claim whose measurements depend on results measured first: the declared part, and why the rest is not."""

    needs: tuple[Need, ...]
    why: str


_REGISTRY: dict[str, tuple[Declaration, bool]] = {}  # claim id -> (declaration, called once per target member)


def declares(*claim_ids: str, per_member: bool = True):
    """Register ``fn(model, tier, params) -> list[Need] | Dynamic`` as the declaration of ``claim_ids``: called
    for each member of a multi-model target; ``per_member=False``: called once with the target's model list
    (a claim whose members play different parts, e.g. a transfer's source and target)."""
    def register(fn: Declaration) -> Declaration:
        for claim_id in claim_ids:
            if claim_id in _REGISTRY:
                raise ValueError(f"planner: {claim_id} is declared twice ({_REGISTRY[claim_id][0].__module__} and "
                                 f"{fn.__module__})")
            _REGISTRY[claim_id] = (fn, per_member)
        return fn
    return register


def _load_declarations() -> None:
    """Import every block's declarations (registration happens at import)."""
    import engine.studies.needs  # noqa: F401


def needs_of(claim_id: str, models: Sequence[str], tier: str, params: Mapping[str, Any]) -> Dynamic:
    """What ``claim_id`` measures on each of ``models`` (a multi-model claim: every member)."""
    _load_declarations()
    entry = _REGISTRY.get(claim_id)
    if entry is None:
        return Dynamic((), "no declaration")
    fn, per_member = entry
    out, why = [], ""
    for got in ([fn(model, tier, params) for model in models] if per_member else [fn(list(models), tier, params)]):
        if isinstance(got, Dynamic):
            out.extend(got.needs)
            why = got.why
        else:
            out.extend(got)
    return Dynamic(tuple(out), why)


@dataclass
class Plan:
    """Every distinct declared measurement once (model by model), the claims that read each, what is dynamic."""

    name: str
    users: dict[Need, list[str]] = field(default_factory=dict)  # need -> the claim tests reading it, in order
    dynamic: dict[str, str] = field(default_factory=dict)  # claim test -> why part of it is decided at run time
    claims: list[str] = field(default_factory=list)

    @property
    def measurements(self) -> list[Need]:
        order = list(dict.fromkeys(n.model for n in self.users))
        return sorted(self.users, key=lambda n: order.index(n.model))

    @property
    def shared(self) -> int:
        """Measurements read by two claim tests or more."""
        return sum(1 for users in self.users.values() if len(set(users)) > 1)

    @property
    def requests(self) -> int:
        """Declared requests before sharing (one per claim test and need)."""
        return sum(len(users) for users in self.users.values())

    def per_model(self) -> Counter:
        return Counter(n.model for n in self.users)

    def summary(self) -> str:
        models = ", ".join(f"{m or 'cross-model'} {k}" for m, k in self.per_model().items())
        text = (f"[plan] {self.name}: {len(self.claims)} claim test(s) declare {self.requests} measurement request(s) "
                f"= {len(self.users)} distinct measurement(s) ({self.shared} read by 2+ claims; {models})")
        if self.dynamic:
            claims = sorted({label.split("[")[0] for label in self.dynamic})
            whys = sorted(set(self.dynamic.values()))
            text += (f"; decided at run time in {len(self.dynamic)} test(s) ({', '.join(claims)}): "
                     f"{'; '.join(whys)}")
        return text


def plan(name: str, tests: Iterable[tuple[str, Sequence[str], str, Mapping[str, Any]]]) -> Plan:
    """The plan of the collected claim tests ``(claim_id, models, tier, params)``: shared needs merged."""
    out = Plan(name)
    for claim_id, models, tier, params in tests:
        label = f"{claim_id}[{'+'.join(models)}]"
        out.claims.append(label)
        got = needs_of(claim_id, models, tier, params)
        for need in got.needs:
            out.users.setdefault(need, []).append(label)
        if got.why:
            out.dynamic[label] = got.why
    return out
