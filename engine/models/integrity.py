"""A model directory's identity: one sha256 over every file that defines the model, re-verified cheaply but safely.

``identity(directory)`` is the only model identity in the engine: ``LoadedModel.fingerprint`` is it, the
converted cache's manifest records it, and every results cache keyed on the fingerprint is therefore keyed on
the exact bytes of the weights, the config and the tokenizer.

What is hashed (:func:`defining_files`): every ``*.safetensors`` (and a sharded model's ``*.safetensors.index.json``),
``config.json``, ``generation_config.json`` and the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``, ``tokenizer.model``, ``vocab.json``, ``merges.txt``, ``added_tokens.json``,
``chat_template.jinja`` / ``.json``), whichever exist. Each file is sha256-hashed; the identity is the sha256 of
the sorted ``<len(name)>:<name>:<bytes>:<sha256>`` records, so names and file boundaries count.

When it is computed: a full re-hash on first use, whenever any defining file's (size, mtime_ns, inode, device,
ctime_ns) differs from the stamp of the last hash, or the set of files differs, and always with ``full=True``
(``mi-atlas models verify``). Restoring an mtime with ``os.utime`` still changes the ctime, so bytes corrupted in
place are re-hashed. A file whose timestamps are within :data:`RACY_SECONDS` of its hash ("racily clean", as git
calls it: a later same-size write in the same timestamp tick would not show) is re-hashed next time too.

Stamps live under ``cache_root() / "identity" / <sha256 of the resolved directory path>.json``, so read-only model
directories work; writing one is best-effort (an unwritable cache prints one warning on stderr per process and
the model is simply re-hashed next time).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.files import PRIVATE, write_atomic

from .errors import ModelError
from .registry import cache_root

IDENTITY_VERSION = 1
#: Exact file names that define a model besides its weights (those present are hashed).
DEFINING_NAMES = (
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
DEFINING_SUFFIXES = (".safetensors", ".safetensors.index.json")
#: Files modified this close (seconds) to their hash are not trusted from the stamp on the next check.
RACY_SECONDS = 2.0

_STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino", "dev")
_warned: set[str] = set()


@dataclass(frozen=True)
class FileDigest:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class IdentityRecord:
    """The result of checking a directory: its identity, each defining file's digest, whether it was re-hashed."""

    directory: Path
    identity: str
    files: dict[str, FileDigest]
    rehashed: bool
    previous: str | None = None  # the stamp's identity before this check (None: no stamp)


def sha256_file(path: Path, progress=None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def defining_files(directory: Path) -> list[str]:
    """The names of the files in ``directory`` that define the model (sorted; symlinks are followed)."""
    directory = Path(directory)
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise ModelError(f"model directory {directory} cannot be read ({exc.strerror or exc})") from exc
    names = []
    for entry in entries:
        defines = entry.name in DEFINING_NAMES or entry.name.endswith(DEFINING_SUFFIXES)
        if defines and (directory / entry.name).is_file():
            names.append(entry.name)
    return sorted(names)


def combine(files: dict[str, FileDigest]) -> str:
    """The identity of a set of file digests: sha256 of the sorted, length-prefixed (name, bytes, sha256) records."""
    digest = hashlib.sha256(f"mi-atlas-model-identity-v{IDENTITY_VERSION}\n".encode())
    for name in sorted(files):
        encoded = name.encode("utf-8", "surrogateescape")
        digest.update(b"%d:%s:%d:%s\n" % (len(encoded), encoded, files[name].bytes, files[name].sha256.encode()))
    return digest.hexdigest()


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
            "dev": st.st_dev}


def hash_files(directory: Path, names: list[str] | None = None) -> tuple[dict[str, FileDigest], dict[str, dict]]:
    """Full sha256 of each defining file (no stamp read or written): ``(digests, stats taken before hashing)``.

    A file that changes while it is hashed is hashed again once; if it changes again it is an error.
    """
    directory = Path(directory)
    digests: dict[str, FileDigest] = {}
    stats: dict[str, dict] = {}
    for name in defining_files(directory) if names is None else names:
        path = directory / name
        for _attempt in range(2):
            try:
                before = _stat(path)
                sha = sha256_file(path)
                after = _stat(path)
            except OSError as exc:
                raise ModelError(f"model file {path} cannot be read ({exc.strerror or exc})") from exc
            if before == after:
                break
        else:
            raise ModelError(f"model file {path} changed while it was being hashed; try again when nothing writes it")
        digests[name] = FileDigest(before["size"], sha)
        stats[name] = before
    return digests, stats


def stamp_path(directory: Path) -> Path:
    """Where the stamp of ``directory``'s last full hash lives (under the mi-atlas cache root)."""
    resolved = str(Path(directory).resolve())
    return cache_root() / "identity" / f"{hashlib.sha256(resolved.encode('utf-8', 'surrogateescape')).hexdigest()}.json"


def _read_stamp(directory: Path) -> dict | None:
    try:
        stamp = json.loads(stamp_path(directory).read_text())
    except (OSError, ValueError, RecursionError):  # a deeply nested stamp is a corrupt stamp: re-hash
        return None
    if not isinstance(stamp, dict) or stamp.get("version") != IDENTITY_VERSION:
        return None
    if stamp.get("directory") != str(Path(directory).resolve()) or not isinstance(stamp.get("files"), dict):
        return None
    return stamp


def _stamp_matches(stamp: dict, directory: Path, names: list[str]) -> dict[str, FileDigest] | None:
    """The stamped digests if every defining file is exactly as stamped (and none is racy), else None."""
    try:
        return _stamp_digests(stamp, directory, names)
    except (KeyError, TypeError, ValueError, AttributeError):  # a malformed stamp is no stamp
        return None


def _stamp_digests(stamp: dict, directory: Path, names: list[str]) -> dict[str, FileDigest] | None:
    if stamp.get("racy") or sorted(stamp["files"]) != names:
        return None
    digests = {}
    for name in names:
        entry = stamp["files"][name]
        try:
            now = _stat(directory / name)
        except OSError:
            return None
        if not isinstance(entry, dict) or any(entry.get(field) != now[field] for field in _STAT_FIELDS):
            return None
        digests[name] = FileDigest(int(entry["size"]), str(entry["sha256"]))
    if combine(digests) != stamp.get("identity"):
        return None
    return digests


def _write_stamp(directory: Path, digests: dict[str, FileDigest], stats: dict[str, dict], started_ns: int) -> None:
    racy_ns = int(RACY_SECONDS * 1e9)
    racy = any(max(stats[name]["mtime_ns"], stats[name]["ctime_ns"]) >= started_ns - racy_ns for name in stats)
    stamp = {
        "version": IDENTITY_VERSION, "directory": str(Path(directory).resolve()), "identity": combine(digests),
        "racy": racy, "hashed_at_ns": started_ns,
        "files": {name: {**stats[name], "sha256": digests[name].sha256} for name in sorted(digests)},
    }
    path = stamp_path(directory)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(stamp, indent=1))
    except OSError as exc:
        warn_once("stamp", f"cannot write the model identity stamp {path} ({exc.strerror or exc}); "
                  "models will be fully re-hashed on every use")


def forget(directory: Path) -> None:
    """Remove ``directory``'s stamp (best-effort), so its next use re-hashes every file."""
    try:
        stamp_path(directory).unlink(missing_ok=True)
    except OSError:
        pass


def check_identity(directory: Path, *, full: bool = False) -> IdentityRecord:
    """Identity and per-file digests of ``directory``: from its stamp when every file is unchanged, else hashed."""
    directory = Path(directory)
    names = defining_files(directory)
    if not names:
        raise ModelError(f"model directory {directory} holds no model files (config.json, *.safetensors, tokenizer)")
    stamp = _read_stamp(directory)
    previous = stamp.get("identity") if stamp else None
    if stamp is not None and not full:
        digests = _stamp_matches(stamp, directory, names)
        if digests is not None:
            return IdentityRecord(directory, combine(digests), digests, rehashed=False, previous=previous)
    started_ns = time.time_ns()
    digests, stats = hash_files(directory, names)
    _write_stamp(directory, digests, stats, started_ns)
    return IdentityRecord(directory, combine(digests), digests, rehashed=True, previous=previous)


def identity(directory: Path, *, full: bool = False) -> str:
    """The model identity of ``directory`` (64 hex digits): see the module docstring for what and when."""
    return check_identity(directory, full=full).identity


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (:func:`engine.files.write_atomic`): owner-only and not fsynced,
    as stamps and manifests always were (one lost to a crash only means a re-hash)."""
    write_atomic(path, text, mode=PRIVATE, fsync=False)


def warn_once(kind: str, message: str) -> None:
    """One warning line on stderr, at most once per ``kind`` per process (an unwritable cache is not worth more)."""
    if kind not in _warned:
        _warned.add(kind)
        print(f"mi-atlas: warning: {message}", file=sys.stderr, flush=True)
