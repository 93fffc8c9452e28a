"""Content-addressed on-disk cache for expensive results (atlases, sweeps).

``cached(key_parts, compute)`` returns the stored result for ``key_parts`` (plus the engine version and the
engine's code fingerprint, :mod:`engine.provenance`), or computes it once and stores it. Callers put the
model's identity (``LoadedModel.fingerprint``: a hash of every file that defines the model, re-verified when the
files change) into ``key_parts``, so an entry is never served for other model bytes or other engine code. Entries are JSON files named by the SHA-256 of the canonical JSON of the key;
each carries a checksum of its payload, so a truncated or edited entry is detected and recomputed. Writes
are atomic (temporary file + ``os.replace``) and made under a per-entry file lock (``filelock``), so
concurrent pytest-xdist workers asking for the same result compute it once: the others wait on the lock
and then read the entry.

Location: ``$MI_ATLAS_RESULTS_CACHE`` or ``engine.models.cache_root() / "results"``. A cache that cannot be
written (read-only, no space, not a directory) degrades with one warning: hits are still read where readable,
new results are computed and returned without being stored. A temp file left by a killed writer is removed by
the next writer of the same entry (it holds that entry's lock, so no live writer owns the file).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from filelock import FileLock, Timeout

from engine import progress, tasks
from engine.files import PRIVATE, temp_prefix, write_atomic
from engine.provenance import engine_identity, model_identity

FORMAT = 1


class CacheError(RuntimeError):
    """A cache key or value cannot be stored (not JSON-serialisable)."""


class CacheWarning(UserWarning):
    """A cache entry failed its integrity check (checksum, manifest) and is recomputed instead of served."""


def results_root() -> Path:
    env = os.environ.get("MI_ATLAS_RESULTS_CACHE")
    if env:
        return Path(env).expanduser()
    from engine import models

    return models.cache_root() / "results"


def _canonical(obj: Any) -> str:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except TypeError as exc:
        raise CacheError(f"cache: value is not JSON-serialisable: {exc}") from exc


def full_key(key_parts: dict) -> dict:
    """The key actually hashed: the caller's parts plus the engine version, code fingerprint and cache format."""
    if not isinstance(key_parts, dict):
        raise CacheError(f"cache: key_parts must be a dict, got {type(key_parts).__name__}")
    return {**engine_identity(), "cache_format": FORMAT, **key_parts}


def digest(key_parts: dict) -> str:
    return hashlib.sha256(_canonical(full_key(key_parts)).encode()).hexdigest()


def entry_path(key_parts: dict, root: Path | None = None) -> Path:
    name = digest(key_parts)
    return Path(root or results_root()) / name[:2] / f"{name}.json"


def _read(path: Path, key: dict, warn: bool = True) -> tuple[bool, Any]:
    """(ok, payload); ok is False when the entry is missing, unreadable, for another key, or corrupt."""
    if not path.is_file():
        return False, None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        payload_text = _canonical(entry["payload"])
        ok = (entry.get("key") == json.loads(_canonical(key))
              and entry.get("checksum") == hashlib.sha256(payload_text.encode()).hexdigest())
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, CacheError):
        ok = False  # RecursionError: a deeply nested entry is a corrupt entry, not a crash
    if not ok:
        if warn:
            print(f"mi-atlas cache: entry {path} is corrupt; recomputing", file=sys.stderr)
        return False, None
    return True, entry["payload"]


def _remove_orphans(path: Path) -> None:
    """Delete temp files of ``path`` left by a killed writer (call only while holding the entry's lock)."""
    for orphan in path.parent.glob(temp_prefix(path) + "*"):
        try:
            orphan.unlink()
        except OSError:
            pass


def _write(path: Path, key: dict, payload: Any) -> None:
    text = _canonical(payload)
    entry = {"key": key, "checksum": hashlib.sha256(text.encode()).hexdigest(), "payload": json.loads(text)}
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    write_atomic(path, json.dumps(entry, sort_keys=True, allow_nan=True), mode=PRIVATE)  # owner-only, fsynced


def lookup(key_parts: dict, root: Path | None = None) -> tuple[bool, Any]:
    """(hit, payload) without computing anything."""
    key = full_key(key_parts)
    return _read(entry_path(key_parts, root), key)


def cached(key_parts: dict, compute: Callable[[], Any], *, root: Path | None = None, timeout: float = -1,
           remote: Callable[[], Any] | None = None) -> Any:
    """The result for ``key_parts``: read from the cache, or computed once by ``compute()`` and stored.

    ``compute`` must return a JSON-serialisable value (e.g. ``Atlas.to_json()``). ``timeout`` is how long to
    wait for another process computing the same entry (-1: forever).

    Every call is a measurement of the session's ledger (:mod:`engine.progress`): a hit is noted as cached, a
    computation with its seconds (progress lines and the time table are drawn from it).

    ``remote``: the same computation as an ``engine.executors.Remote`` (None when the session computes here,
    see ``engine.executors.remote``): on a miss it runs on the session's measurement executor (a Ray worker)
    instead of ``compute``, and its payload is stored here under the same key.
    """
    if remote is not None:
        compute = remote
    key = full_key(key_parts)
    path = entry_path(key_parts, root)
    digest_ = path.stem
    ok, payload = _read(path, key, warn=False)
    if ok:
        progress.hit(key_parts, digest_)
        return payload
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=timeout)
        lock.acquire()
    except Timeout:
        raise  # another process holds the entry longer than ``timeout``: not an unwritable cache
    except OSError as exc:
        _warn_unwritable(Path(root or results_root()), path.parent, exc)
        with progress.computing(key_parts, digest_):
            return json.loads(_canonical(compute()))
    try:
        ok, payload = _read(path, key)  # another process may have written it while we waited
        if ok:
            progress.hit(key_parts, digest_)
            return payload
        with progress.computing(key_parts, digest_):
            payload = compute()
        try:
            _write(path, key, payload)
        except OSError as exc:  # the result is returned all the same: nothing computed is lost
            _warn_unwritable(Path(root or results_root()), path.parent, exc)
        return json.loads(_canonical(payload))
    finally:
        lock.release()


_WARNED: set[str] = set()


def _warn_unwritable(base: Path, where: Path, exc: OSError) -> None:
    """One line per cache root and process: the cache is used read-only from here on."""
    root = str(base)
    if root in _WARNED:
        return
    _WARNED.add(root)
    print(f"mi-atlas cache: cannot write {where} ({type(exc).__name__}: {exc.strerror or exc}); results are "
          f"computed but not stored. Set MI_ATLAS_RESULTS_CACHE to a writable directory, or pass --no-cache.",
          file=sys.stderr)


def measured(kind: str, lm, examples, compute: Callable[[], Any], *, remote: Callable[[], Any] | None = None,
             **params) -> Any:
    """:func:`cached` for one measurement of a loaded model on examples: keyed on the model's identity
    (``engine.provenance.model_identity``: key, weights fingerprint, dtype, quantisation, library versions and device;
    an adapted or skipped model carries its own fingerprint), the examples' content hash and ``params``
    (everything else the numbers depend on). ``compute()`` returns JSON-serialisable data; ``remote`` as in
    :func:`cached`."""
    return cached({"kind": kind, **model_identity(lm), "suite": suite_hash(examples), "n_examples": len(examples),
                   **params}, compute, remote=remote)


def suite_hash(examples: Sequence) -> str:
    """The content hash of a sample in every cache key: ``engine.tasks.suite_hash`` of task examples (order-
    dependent), or of a list of plain prompts."""
    if examples and not isinstance(examples[0], str):
        return tasks.suite_hash(examples)
    return hashlib.sha256(json.dumps(list(examples)).encode()).hexdigest()[:16]
