"""Examples, the suites on disk, strict JSONL loading, stratified sampling and the suite hash.

An :class:`Example` is one prompt with the text that should follow it. Suites live in ``fixtures/`` as
JSONL files (one per suite, family and split) listed in ``fixtures/manifest.json`` with their sha256;
:func:`load_suite` refuses a file whose hash does not match. User prompt files go through the same strict
parser (:func:`load_prompts`): every problem is a :class:`SuiteError` naming the file, the line and the
field, never a silent skip. Input is bounded: a line over ``$MI_ATLAS_MAX_LINE_BYTES`` (default 64 KiB) is refused
before it is parsed, as are a directory or FIFO given as the file, CR-only line endings and JSON nested too deep;
every example read from a file remembers its ``file:line`` (:func:`example_source`) for later errors (the
token-length check in ``engine.interventions.encode``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from engine import settings
from engine.tasks.registry import is_registered
from engine.tasks.vocabulary import FAMILIES, SCORER_NAMES, SPLITS, SUITES, SuiteError


@dataclass(frozen=True)
class Example:
    """One prompt and its expected continuation.

    ``target`` is the exact text that continues the raw ``prompt`` (it carries its leading space when the
    prompt ends with a cue like ``"A:"``; a prompt that ends with a space, e.g. ``"= "`` before a number,
    has a target without one). ``clean``/``corrupt`` are a prompt pair of equal token length for activation
    patching (``clean`` is the prompt itself); ``corrupt_target`` is what should follow ``corrupt``.
    """

    id: str
    family: str
    split: str
    prompt: str
    target: str
    scorer: str
    clean: str | None = None
    corrupt: str | None = None
    corrupt_target: str | None = None

    def to_dict(self) -> dict:
        """The fields that are set, in declaration order (the hash form)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_record(self) -> dict:
        """The JSONL form: like :meth:`to_dict` but without ``clean`` when it equals the prompt (the loader
        restores it), which keeps fixture files a third smaller."""
        record = self.to_dict()
        if record.get("clean") == self.prompt:
            del record["clean"]
        return record


_FIELDS = {f.name: f for f in fields(Example)}
_REQUIRED_SUITE = ("id", "family", "split", "prompt", "target", "scorer")


def fixtures_dir() -> Path:
    """Where the suites live: ``$MI_ATLAS_FIXTURES`` or ``fixtures/`` at the repository root."""
    env = os.environ.get("MI_ATLAS_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "fixtures"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- parsing


MAX_LINE_BYTES_ENV = "MI_ATLAS_MAX_LINE_BYTES"
# bytes per JSONL line: the longest fixture line is under 1 KiB (885 bytes), so 64 KiB leaves a 70x margin for
# hand-written prompts while refusing a runaway line (a 10 MB line once reached the tokenizer and the allocator)
DEFAULT_MAX_LINE_BYTES = 64 * 1024


def max_line_bytes() -> int:
    """The most bytes one JSONL line may have: ``$MI_ATLAS_MAX_LINE_BYTES``, else :data:`DEFAULT_MAX_LINE_BYTES`."""
    try:
        return settings.positive_int(MAX_LINE_BYTES_ENV, DEFAULT_MAX_LINE_BYTES, "bytes")[0]
    except ValueError as exc:
        raise SuiteError(str(exc)) from None


def _open_regular(path: Path):
    """Open ``path`` for binary reading if it is a regular file; a directory, FIFO, socket or device is refused
    by name. The open is non-blocking and the type is checked on the open descriptor, so a FIFO (or a file
    swapped for one) never blocks the loader waiting for a writer."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SuiteError(f"{path}: no such file") from None
    except OSError as err:
        raise SuiteError(f"{path}: cannot read ({err.strerror or err}); check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise SuiteError(f"{path}: is a directory, not a JSONL file; give the path of a .jsonl file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise SuiteError(f"{path}: is not a regular file ({_file_kind(st.st_mode)}); save the prompts to a "
                         ".jsonl file on disk and give its path")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise SuiteError(f"{path}: cannot read ({err.strerror or err}); check the path and its permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SuiteError(f"{path}: is not a regular file; save the prompts to a .jsonl file on disk and give its path")
    return os.fdopen(fd, "rb")


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO / named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"


_CR_ONLY = ("uses CR-only (old Mac) line endings: a carriage return (\\r) not followed by a newline; "
            "convert it to LF line endings (e.g. `tr '\\r' '\\n' < old.jsonl > new.jsonl`)")


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Decode a JSONL file line by line as UTF-8; a bad byte is reported with its line number.

    Bounded: a line over :func:`max_line_bytes` is refused before it is decoded or parsed (the file is read one
    line at a time, never more than the cap plus one byte of a line). A carriage return inside a line (not
    just before its newline) means CR-only line endings and is refused with the way out.
    """
    path = Path(path)
    cap = max_line_bytes()
    out: list[tuple[int, str]] = []
    with _open_regular(path) as handle:
        lineno = 0
        while True:
            # the line, its newline and at most one byte over the cap (plus a UTF-8 BOM on the first line)
            chunk = handle.readline(cap + 2 + (3 if lineno == 0 else 0))
            if not chunk:
                break
            lineno += 1
            if lineno == 1 and chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
            body = chunk[:-1] if chunk.endswith(b"\n") else chunk
            body = body[:-1] if body.endswith(b"\r") else body  # CRLF endings are fine
            if len(body) > cap:
                cr = f"; the file {_CR_ONLY}" if b"\r" in body else ""
                raise SuiteError(f"{path}:{lineno}: line longer than {cap} bytes (the line-size cap){cr}; "
                                 f"shorten the prompt, or raise ${MAX_LINE_BYTES_ENV} if it is meant to be this long")
            if b"\r" in body:
                raise SuiteError(f"{path}:{lineno}: the file {_CR_ONLY}")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SuiteError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start}); "
                                 "save the file as UTF-8") from None
            if text.strip():
                out.append((lineno, text))
    if not out:
        raise SuiteError(f"{path}: empty file (no JSON lines)")
    return out


def _parse_record(path: Path, lineno: int, text: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise SuiteError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise SuiteError(f"{path}:{lineno}: JSON nesting too deep (arrays/objects nested beyond what the parser "
                         "allows); each line must be one flat object of string fields") from None
    if not isinstance(record, dict):
        raise SuiteError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    for key, value in record.items():
        if key not in _FIELDS:
            raise SuiteError(f"{path}:{lineno}: unknown field {key!r} (allowed: {', '.join(_FIELDS)})")
        if value is not None and not isinstance(value, str):
            raise SuiteError(f"{path}:{lineno}: field {key!r} must be a string, got {type(value).__name__}")
    return record


def _check_example(path: Path, lineno: int, ex: Example, *, suite: bool) -> None:
    where = f"{path}:{lineno}"
    if not ex.prompt.strip():
        raise SuiteError(f"{where}: field 'prompt' is empty")
    if not ex.id.strip():
        raise SuiteError(f"{where}: field 'id' is empty")
    if ex.scorer not in SCORER_NAMES:
        raise SuiteError(f"{where}: field 'scorer' is {ex.scorer!r}; choose from {', '.join(SCORER_NAMES)}")
    if ex.scorer != "none" and not ex.target.strip():
        raise SuiteError(f"{where}: field 'target' is empty but scorer is {ex.scorer!r}")
    if (ex.corrupt is None) != (ex.clean is None):
        missing = "clean" if ex.clean is None else "corrupt"
        raise SuiteError(f"{where}: field {missing!r} is missing (clean and corrupt come as a pair)")
    if ex.corrupt_target is not None and ex.corrupt is None:
        raise SuiteError(f"{where}: field 'corrupt_target' given without 'corrupt'")
    if suite:
        if ex.family not in FAMILIES and not is_registered(ex.family):
            raise SuiteError(f"{where}: field 'family' is {ex.family!r}, not one of the {len(FAMILIES)} families "
                             "(nor another registered task family)")
        if ex.split not in SPLITS:
            raise SuiteError(f"{where}: field 'split' is {ex.split!r}; choose from {', '.join(SPLITS)}")



def parse_jsonl(path, *, suite: bool) -> list[Example]:
    """Parse a JSONL file of examples strictly.

    ``suite=True`` (fixture files) requires every field and a built-in or registered family;
    ``suite=False`` (user files) requires only ``prompt`` and fills the rest: ``id`` = ``<file stem>-<line>``,
    ``family`` = ``"custom"``, ``split`` = ``"user"``, ``scorer`` = ``"exact"`` when a ``target`` is given,
    else ``"none"``; a line with ``corrupt`` but no ``clean`` pairs the corrupt prompt with ``prompt``.
    Blank lines are ignored; anything else that is wrong raises :class:`SuiteError`.
    """
    path = Path(path)
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, text in _read_lines(path):
        record = _parse_record(path, lineno, text)
        for key in _REQUIRED_SUITE if suite else ("prompt",):
            if key not in record:
                raise SuiteError(f"{path}:{lineno}: missing field {key!r}")
            if record[key] is None:
                raise SuiteError(f"{path}:{lineno}: field {key!r} is null; it must be a string")
        if record.get("corrupt") is not None and record.get("clean") is None:
            record["clean"] = record["prompt"]  # a corrupt prompt pairs with the prompt itself by default
        if not suite:
            record.setdefault("id", f"{path.stem}-{lineno}")
            record.setdefault("family", "custom")
            record.setdefault("split", "user")
            record.setdefault("target", "")
            record.setdefault("scorer", "exact" if record["target"] else "none")
            for key in ("id", "family", "split", "target", "scorer"):
                if record[key] is None:
                    raise SuiteError(f"{path}:{lineno}: field {key!r} is null")
        ex = Example(**record)
        _check_example(path, lineno, ex, suite=suite)
        object.__setattr__(ex, "_source", f"{path}:{lineno}")  # not a field: neither hashed nor compared
        if ex.id in seen:
            raise SuiteError(f"{path}:{lineno}: duplicate id {ex.id!r} (first on line {seen[ex.id]})")
        seen[ex.id] = lineno
        examples.append(ex)
    return examples


def example_source(example) -> str | None:
    """Where an example was read, as ``"file:line"`` (set by :func:`parse_jsonl`), else None (built in code).

    Kept as an attribute outside the dataclass fields, so it changes neither :meth:`Example.to_dict`, the suite
    hash, equality nor any cache key; ``dataclasses.replace`` drops it (the copy was not read from a file)."""
    return getattr(example, "_source", None)


def load_prompts(path) -> list[Example]:
    """Load a user JSONL file: each line an object with ``prompt`` and optionally ``target``, ``family``,
    ``id``, ``scorer`` (and ``split``, ``clean``, ``corrupt``, ``corrupt_target``). Strict: see
    :func:`parse_jsonl`."""
    return parse_jsonl(path, suite=False)


def write_jsonl(path: Path, examples: Iterable[Example]) -> None:
    """Write examples one per line in canonical form (keys in field order, UTF-8, ``\\n`` endings)."""
    lines = [json.dumps(ex.to_record(), ensure_ascii=False) for ex in examples]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


# --------------------------------------------------------------------------------------------- suites


def load_manifest(directory: Path | None = None) -> dict:
    directory = Path(directory) if directory is not None else fixtures_dir()
    path = directory / "manifest.json"
    if not path.is_file():
        raise SuiteError(f"{path}: no manifest; run `mi-atlas suite generate`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SuiteError(f"{path}: unreadable manifest ({err})") from None


@functools.lru_cache(maxsize=8)
def _load_suite_cached(name: str, directory: str) -> tuple[Example, ...]:
    manifest = load_manifest(Path(directory))
    entries = [f for f in manifest["files"] if f["suite"] == name]
    if not entries:
        raise SuiteError(f"{directory}/manifest.json: no files for suite {name!r}")
    out: list[Example] = []
    ids: set[str] = set()
    for entry in entries:
        path = Path(directory) / entry["path"]
        if not path.is_file():
            raise SuiteError(f"{path}: listed in the manifest but missing; run `mi-atlas suite generate`")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise SuiteError(f"{path}: sha256 {digest[:12]}... does not match the manifest "
                             f"({entry['sha256'][:12]}...); regenerate with `mi-atlas suite generate`")
        examples = parse_jsonl(path, suite=True)
        if len(examples) != entry["count"]:
            raise SuiteError(f"{path}: {len(examples)} examples, manifest says {entry['count']}")
        for ex in examples:
            if ex.id in ids:
                raise SuiteError(f"{path}: duplicate id {ex.id!r} across suite files")
            ids.add(ex.id)
        out.extend(examples)
    return tuple(out)


def load_suite(name: str = "synthetic") -> list[Example]:
    """All examples of a suite (``"synthetic"`` or ``"nl"``), in manifest order (family, then split),
    after checking each file against its sha256 in the manifest."""
    if name not in SUITES:
        raise SuiteError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    return list(_load_suite_cached(name, str(fixtures_dir())))


# --------------------------------------------------------------------------------------------- sampling


def sample(families: Sequence[str] | None = None, per_family: int = 4, seed: int = 0,
           suite: str | Sequence[Example] = "synthetic", split: str | None = None,
           nested: bool = False) -> list[Example]:
    """A stratified sample: ``per_family`` examples drawn without replacement from each family.

    ``suite`` is a suite name or a list of examples (e.g. from :func:`load_prompts`); ``split`` restricts
    the pool (None: all splits). The draw for each family depends on (seed, family, split) only, so the
    same seed always gives the same sample and different seeds give different samples. ``nested``: the first
    ``per_family`` of a fixed order of the family per (seed, family, split), so a larger sample contains every
    smaller one (the stages of sequential looks); a different draw from the default one. The result lists
    families in the order given (default: :data:`FAMILIES` order, or first appearance for custom lists).
    """
    pool = load_suite(suite) if isinstance(suite, str) else list(suite)
    suite_label = suite if isinstance(suite, str) else "custom"
    if per_family < 1:
        raise SuiteError(f"per_family must be >= 1, got {per_family}")
    if split is not None:
        pool = [ex for ex in pool if ex.split == split]
        if not pool:
            raise SuiteError(f"suite {suite_label!r} has no examples in split {split!r}")
    present = list(dict.fromkeys(ex.family for ex in pool))
    if families is None:
        families = [f for f in FAMILIES if f in present] + [f for f in present if f not in FAMILIES]
    elif isinstance(families, str):
        raise SuiteError("families must be a list of family names, not a string")
    out: list[Example] = []
    for family in families:
        members = [ex for ex in pool if ex.family == family]
        if not members:
            raise SuiteError(f"suite {suite_label!r} has no family {family!r}"
                             + (f" in split {split!r}" if split else ""))
        if per_family > len(members):
            raise SuiteError(f"family {family!r} has {len(members)} examples, asked for {per_family}")
        rng = random.Random(f"mi-atlas-sample/{seed}/{family}/{split}")
        out.extend(rng.sample(members, len(members))[:per_family] if nested else rng.sample(members, per_family))
    return out


def suite_hash(examples: Iterable[Example]) -> str:
    """sha256 of the canonical JSON of the examples (fields in declaration order, unset fields omitted).

    Order-dependent on purpose: a sample is a sequence, and the same examples in another order are a
    different run. Sort by ``id`` first if you need an order-free identity.
    """
    payload = [ex.to_dict() for ex in examples]
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
