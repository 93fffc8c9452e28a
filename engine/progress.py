"""The measurement ledger: every expensive result a session asks for, as a person can follow it.

A *measurement* is one entry of the content-addressed cache (:func:`engine.cache.cached`): an atlas sweep, a
steering or quantisation study, a LoRA training run. Each time one is asked for, the ledger notes what it is
(kind, model, number of examples), which claim asked (the *context*, set by the claims plugin around each
test), whether it was computed here or read from the cache, and how long it took; listeners (the claims
plugin's progress lines) hear a ``start`` event before a computation and an ``end`` event after it (a cache hit
gives ``end`` only)::

    with progress.context("HUB-SMOL[smollm2-135m]"):
        a = atlas(lm, examples, cache=True)     # -> start/end events, one ledger entry

    progress.ledger()                           # every entry of this process, in order
    progress.table()                            # per measurement and per claim: computed vs cached seconds

Nothing here knows pytest; :mod:`claims.progress` turns the events into terminal lines and a time table, and
``tests/test_planner.py`` uses :func:`current` to count the model's forward passes per measurement.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

# key_parts fields that say what a measurement is (the first present wins)
_KIND_FIELDS = ("kind",)
_MODEL_FIELDS = ("model", "label", "key", "name")
_N_FIELDS = ("n_examples", "n", "n_eval", "n_train")
_DETAIL_FIELDS = ("method", "component", "suite_kind")  # e.g. atlas(zero/resid) vs atlas(zero/layer)


@dataclass
class Entry:
    """One request for a measurement."""

    kind: str
    model: str
    n: int | None
    digest: str  # the cache entry's key digest: the same digest is the same measurement
    context: str  # the claim (or other caller) that asked, "" outside any context
    source: str = "computing"  # "computed" | "cached" | "failed" (while running: "computing")
    seconds: float = 0.0
    started: float = field(default_factory=time.time)
    depth: int = 0  # nesting: a measurement computed inside another one's computation
    stage: str = ""  # the sequential look it belongs to ("stage 2/3"), "" outside staged claims

    @property
    def what(self) -> str:
        return f"{self.kind} {self.model}" + (f" n={self.n}" if self.n is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Listener = Callable[[str, Entry], None]  # (event "start" | "end", entry)

_stage: list[str] = []  # the sequential looks being measured (engine.templates), innermost last
_lock = threading.RLock()
_entries: list[Entry] = []
_listeners: list[Listener] = []
_context: list[str] = []
_active: list[Entry] = []


def describe(key_parts: Mapping[str, Any]) -> tuple[str, str, int | None]:
    """(kind, model, n) of a cache key, read from its usual fields (``kind``, ``model`` / ``label``,
    ``n_examples`` / ``n``; an ``options`` or ``sizes`` sub-table is looked into for n)."""
    kind = next((str(key_parts[f]) for f in _KIND_FIELDS if f in key_parts), "measurement")
    detail = [str(key_parts[f]) for f in _DETAIL_FIELDS if isinstance(key_parts.get(f), str)]
    if detail:
        kind = f"{kind}({'/'.join(detail)})"
    model = next((str(key_parts[f]) for f in _MODEL_FIELDS if isinstance(key_parts.get(f), str)), "")
    if not model and isinstance(key_parts.get("fingerprint"), str):
        model = key_parts["fingerprint"][:12]
    n = None
    for where in (key_parts, key_parts.get("options") or {}, key_parts.get("sizes") or {}):
        if isinstance(where, Mapping):
            n = next((int(where[f]) for f in _N_FIELDS if isinstance(where.get(f), int)), None)
            if n is not None:
                break
    if n is None and isinstance(key_parts.get("examples"), (list, tuple)):
        n = len(key_parts["examples"])
    return kind, model, n


def subscribe(listener: Listener) -> None:
    with _lock:
        if listener not in _listeners:
            _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _emit(event: str, entry: Entry) -> None:
    for listener in list(_listeners):  # noqa: PERF101 (a listener may unsubscribe while we iterate)
        listener(event, entry)


@contextmanager
def context(name: str) -> Iterator[None]:
    """Attribute the measurements asked for inside to ``name`` (a claim test)."""
    with _lock:
        _context.append(name)
    try:
        yield
    finally:
        with _lock:
            _context.pop()


@contextmanager
def stage(index: int, total: int) -> Iterator[None]:
    """The measurements asked for inside belong to look ``index`` of ``total`` (shown on the [measure] lines)."""
    with _lock:
        _stage.append(f"stage {index}/{total}")
    try:
        yield
    finally:
        with _lock:
            _stage.pop()


def current() -> Entry | None:
    """The innermost measurement being computed in this process (None outside any computation)."""
    with _lock:
        return _active[-1] if _active else None


def _new(key_parts: Mapping[str, Any], digest: str) -> Entry:
    kind, model, n = describe(key_parts)
    with _lock:
        return Entry(kind, model, n, digest, _context[-1] if _context else "", depth=len(_active),
                     stage=_stage[-1] if _stage else "")


def hit(key_parts: Mapping[str, Any], digest: str) -> Entry:
    """Record a measurement served from the cache."""
    entry = _new(key_parts, digest)
    entry.source = "cached"
    with _lock:
        _entries.append(entry)
    _emit("end", entry)
    return entry


@contextmanager
def computing(key_parts: Mapping[str, Any], digest: str) -> Iterator[Entry]:
    """Record a measurement computed inside the block (start event, then end with its seconds)."""
    entry = _new(key_parts, digest)
    with _lock:
        _entries.append(entry)
        _active.append(entry)
    _emit("start", entry)
    start = time.perf_counter()
    try:
        yield entry
        entry.source = "computed"
    except BaseException:
        entry.source = "failed"
        raise
    finally:
        entry.seconds = time.perf_counter() - start
        with _lock:
            _active.remove(entry)
        _emit("end", entry)


def ledger() -> list[Entry]:
    with _lock:
        return list(_entries)


def reset() -> None:
    """Forget this process's entries (listeners and contexts stay)."""
    with _lock:
        _entries.clear()


def table(entries: list[Entry] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The time table: per measurement (digest) and per claim (context), computed vs cached.

    ``measurements``: what, computed seconds, how often served from the cache, and by which claims.
    ``claims``: number of measurements, computed seconds, cache hits.
    """
    entries = ledger() if entries is None else entries
    per_key: dict[str, dict[str, Any]] = {}
    per_claim: dict[str, dict[str, Any]] = {}
    for e in entries:
        m = per_key.setdefault(e.digest, {"what": e.what, "digest": e.digest[:12], "computed": 0, "cached": 0,
                                          "seconds": 0.0, "claims": []})
        c = per_claim.setdefault(e.context or "(no claim)", {"claim": e.context or "(no claim)", "measurements": 0,
                                                             "computed": 0, "cached": 0, "seconds": 0.0})
        c["measurements"] += 1
        if e.source == "cached":
            m["cached"] += 1
            c["cached"] += 1
        elif e.source == "computed":
            m["computed"] += 1
            m["seconds"] += e.seconds
            c["computed"] += 1
            if e.depth == 0:  # a nested computation's time is inside its parent's
                c["seconds"] += e.seconds
        if e.context and e.context not in m["claims"]:
            m["claims"].append(e.context)
    return {"measurements": list(per_key.values()), "claims": list(per_claim.values())}
