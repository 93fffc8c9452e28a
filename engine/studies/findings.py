"""The one shape of a claim procedure's result: a :class:`Finding` per protocol, recorded by ``claims.plugin.record_both``.

Every claim procedure of every block (``engine.studies.atlas``, ``.steer``, ``.quant``, ``.lora``) returns
``(seed, rigorous)``, two findings, with the rule already decided (``holds``) from the thresholds of the claim's
``[claim.params]``; a claim test only records them::

    seed, rigorous = A.hub_seeds(load_model(model), A.sizes_for(claim.tier, claim.params))
    record_both(claim, seed, rigorous)

A finding carries exactly the arguments of ``claim.record``: figures, holds, ci, seeds, notes, suite hash, a
documented revision (``revised`` + ``reason``) and, where the procedure states it, the ``expectation``; or, for a
protocol that cannot run here, ``untested`` (the reason).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.decisions import Evidence, Outcome

Holds = bool | Evidence | Mapping[str, Evidence] | None  # None: an untested finding (nothing decided)
"""What decided a rule: a bare bool (legacy v1), one :class:`~engine.decisions.Evidence`, or named parts."""


class StudyError(AssertionError):
    """A precondition of a claim procedure does not hold (the claim test fails with this message, as an assert
    in the test did)."""


def require(condition: Any, message: str) -> None:
    """Fail the claim procedure (``StudyError``) unless ``condition`` holds."""
    if not condition:
        raise StudyError(message)


def r4(x):
    """4 significant digits; a ratio that could not be formed (a precision that failed here) is None."""
    return None if x is None or not np.isfinite(x) else float(f"{x:.4g}")


@dataclass
class Finding:
    """What one protocol measured for one claim: the arguments of ``claim.record`` (or why it is untested)."""

    protocol: str
    figures: dict[str, Any]
    holds: Holds
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    suite_hash: str | None = None
    revised: bool = False
    reason: str = ""
    expectation: str | None = None
    untested: str = ""  # non-empty: this protocol cannot run here, for this reason (an UNTESTED record)
    undecided: str = ""  # non-empty: the data cannot decide the rule, and why (an INCONCLUSIVE record)
    skip_test: bool = False  # untested, and the whole claim cannot run here: the test is skipped once recorded

    @classmethod
    def not_run(cls, protocol: str, reason: str, *, skip_test: bool = False) -> Finding:
        """A protocol that cannot run here: recorded as UNTESTED with ``reason``. ``skip_test=True``: the claim as
        a whole cannot run here, so after both findings are recorded the test is skipped with this reason."""
        if not reason:
            raise ValueError(f"an untested {protocol} finding needs a reason")
        return cls(protocol, {}, holds=None, untested=reason, skip_test=skip_test)

    def record(self) -> dict[str, Any]:
        """Keyword arguments for ``claim.record`` (unbounded intervals are left out)."""
        if self.untested:
            raise ValueError(f"the {self.protocol} finding is untested ({self.untested}): nothing to record")
        holds = self.holds if isinstance(self.holds, (Evidence, Mapping)) else bool(self.holds)
        out: dict[str, Any] = {"protocol": self.protocol, "figures": self.figures, "holds": holds,
                               "ci": {k: v for k, v in self.ci.items() if np.isfinite(v).all()},
                               "seeds": self.seeds, "notes": " ".join(self.notes), "suite_hash": self.suite_hash}
        if self.revised:
            out.update(revised=True, reason=self.reason)
        if self.undecided:
            out["undecided"] = self.undecided
        if self.expectation is not None:
            out["expectation"] = self.expectation
        return out


def outcome(f: Finding) -> Outcome | None:
    """The finding's decision: for / against / undecided; None for parts that are decided both ways (REVISED). An
    untested finding decides nothing: undecided (a sequential look does not stop on it)."""
    if f.undecided or f.untested or f.holds is None:
        return Outcome.UNDECIDED
    if isinstance(f.holds, Evidence):
        return f.holds.outcome
    if isinstance(f.holds, Mapping):
        outcomes = {e.outcome for e in f.holds.values()}
        if Outcome.UNDECIDED in outcomes:
            return Outcome.UNDECIDED
        return outcomes.pop() if len(outcomes) == 1 else None
    return Outcome.FOR if f.holds else Outcome.AGAINST


def contrast(seed: Finding, rigorous: Finding, why: str) -> None:
    """When the two protocols disagree, say in both findings which step makes the difference."""
    def state(f: Finding) -> str:
        return {Outcome.FOR: "holds", Outcome.AGAINST: "falsified", Outcome.UNDECIDED: "not decided",
                None: "partly holds"}[outcome(f)]

    if state(seed) == state(rigorous) and seed.revised == rigorous.revised:
        return
    text = f"Protocols disagree (seed: {state(seed)}, rigorous: {state(rigorous)}): {why}"
    seed.notes.append(text)
    rigorous.notes.append(text)
