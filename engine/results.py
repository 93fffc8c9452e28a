"""Results on disk: run files, the verdict registry, baselines, run diffs and the markdown report.

Layout under the results root (default ``<rootdir>/results``)::

    runs/<timestamp>-<commit>/claims.json   every verdict record of the run, plus its provenance
    runs/<timestamp>-<commit>/report.md     the table and one paragraph per claim x model
    runs/<timestamp>-<commit>/report.html   the same run as one self-contained page (engine.report_html,
                                            written by the claims plugin through write_run's pages)
    latest                                  symlink to the newest run (a text file naming it where symlinks fail)
    registry.jsonl                          one JSON line per verdict, appended as verdicts arrive
    baselines/<plan>/<model>.json           a plan's pinned gated figures per claim x protocol, with their spread,
                                            the commit and the reason of the pin (see the gate section below)

Durability: registry lines are appended under a file lock, each with one ``os.write`` on an ``O_APPEND``
descriptor (byte count checked; a short write is cut off again and raised) + fsync, so parallel writers never
interleave and a killed run loses at most the verdict being written (a torn last line is cut off by the next
writer). claims.json, report.md and baselines are replaced atomically (temp file + os.replace). A session writes
its run files whatever happens, marked incomplete (``meta["incomplete"]``, with the reasons) when it did not finish
cleanly; ``latest`` moves only to a complete run, and only a complete run can be pinned.

Baselines are a checked contract (:func:`read_baseline_file`): every field typed, every number finite, each
figure's value and tolerance as they follow from its pinned runs, a sha256 over the canonical JSON of the entries;
the records a gate expects are those the catalogue and the plan declare (:func:`declared_records`), not whichever
files exist.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from filelock import FileLock

from engine import plans
from engine.files import write_atomic  # claims.json, report.md, baselines: mode 0o644, fsynced
from engine.provenance import cpu_identity, engine_identity, package_versions
from engine.verdicts import Catalogue, ClaimError, Tolerance, Verdict, VerdictRecord, fmt, is_number, is_number_list

RUNS_DIR = "runs"
RUN_FILE = "claims.json"
REPORT_FILE = "report.md"
LATEST = "latest"
REGISTRY_FILE = "registry.jsonl"
BASELINES_DIR = "baselines"
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "numpy", "scipy", "pytest")


# ------------------------------------------------------------------------------------------------ provenance


@lru_cache(maxsize=8)
def git_commit(cwd: str | Path = ".") -> str:
    """Short commit of the checkout at ``cwd`` (``+dirty`` with uncommitted tracked changes); 'nogit' if none."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
        return result.stdout.strip() if result.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        if not commit:
            return "nogit"
        # what a run itself writes under results/ (run files, latest, registry, timings, bench charts) does not make
        # the next run's provenance dirty; a change anywhere else does
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                         ":(exclude)results") else "")
    except (OSError, subprocess.SubprocessError):
        return "nogit"


def provenance() -> dict[str, Any]:
    """What makes a run reproducible besides the records: versions, machine, python."""
    versions = package_versions(PACKAGES)  # a package that is not installed: None
    return {**engine_identity(), "python": sys.version.split()[0], "platform": platform.platform(),
            "machine": socket.gethostname(), "cpu_count": os.cpu_count(), **cpu_identity(), "packages": versions}


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# ------------------------------------------------------------------------------------------------ files


def append_registry(root: Path, record: VerdictRecord | Mapping[str, Any]) -> None:
    """Append one verdict as one complete JSON line to ``root/registry.jsonl`` (locked, one write, fsynced).

    The line goes out in ONE ``os.write`` on an ``O_APPEND`` descriptor and the byte count is checked: a short
    write (a full disk) is cut off again (the file is truncated back to its size before the write) and raised as
    an ``OSError``, so the registry never holds a torn line of a writer that is still alive.
    """
    data = record.to_dict() if isinstance(record, VerdictRecord) else dict(record)
    line = (json.dumps(data, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    path = Path(root) / REGISTRY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = _cut_torn_tail(fd, path)
            try:
                written = os.write(fd, line)
            except OSError:
                _truncate_quietly(fd, size)
                raise
            if written != len(line):
                _truncate_quietly(fd, size)
                raise OSError(f"{path}: short write ({written} of {len(line)} bytes; disk full?): the line was "
                              "not appended")
            os.fsync(fd)
        finally:
            os.close(fd)


def _truncate_quietly(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


def _cut_torn_tail(fd: int, path: Path) -> int:
    """If a writer died mid-line (power loss), drop that partial line so the file stays whole lines; returns the
    size the file has before this writer's line."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    with open(path, "rb") as reader:
        reader.seek(size - 1)
        if reader.read(1) == b"\n":
            return size
        reader.seek(0)
        data = reader.read(size)
    keep = data.rfind(b"\n") + 1
    os.ftruncate(fd, keep)
    warnings.warn(f"{path}: dropped a torn last line of {size - keep} bytes left by an interrupted writer",
                  stacklevel=3)
    return keep


def read_registry(root: Path) -> list[dict]:
    """Every registry line as a dict; a malformed line is an error naming its line number.

    A last line without its newline is what a writer killed mid-write (power loss) leaves: it is skipped with a
    warning, and the next append cuts it off.
    """
    path = Path(root) / REGISTRY_FILE
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                warnings.warn(f"{path}:{number}: skipping a torn last line ({len(line)} bytes)", stacklevel=2)
                break
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a complete JSON line ({exc})") from exc
    return out


REGISTRY_INDEX_KEYS = ("run", "claim_id", "model", "protocol", "tier", "verdict", "test", "git_commit",
                       "engine_version", "timestamp", "plan")  # what a compacted line keeps


def compact_registry(root: Path) -> tuple[int, int, int, int]:
    """Shrink ``root/registry.jsonl`` without losing a recorded verdict: a line whose run has a complete
    ``runs/<run>/claims.json`` holding the very same record is cut to its index fields (:data:`REGISTRY_INDEX_KEYS`)
    plus ``"record": "runs/<run>/claims.json"``, where the whole record is; every other line (a run killed before its
    claims.json, a record the file does not hold) stays whole, so :func:`load_run` can still rebuild that run.
    Rewritten atomically under the registry's lock. Returns ``(compacted, kept_whole, bytes_before, bytes_after)``."""
    path = Path(root) / REGISTRY_FILE
    if not path.exists():
        return 0, 0, 0, 0
    with FileLock(str(path) + ".lock"):
        before = path.stat().st_size
        held: dict[str, set[str] | None] = {}

        def records_of(run: str) -> set[str] | None:
            if run not in held:
                held[run] = None
                claims = Path(root) / RUNS_DIR / run / RUN_FILE
                if claims.is_file():
                    got = Run.from_json(claims.read_text(encoding="utf-8"), str(claims))
                    if not got.meta.get("incomplete"):
                        held[run] = {json.dumps(r.to_dict(), sort_keys=True, allow_nan=False) for r in got.records}
            return held[run]

        lines, compacted, whole = [], 0, 0
        for line in read_registry(root):
            run = line.get("run")
            full = json.dumps(line, sort_keys=True, allow_nan=False)
            stored = records_of(run) if isinstance(run, str) and "record" not in line else None
            if stored is not None and full in stored:
                line = {k: line[k] for k in REGISTRY_INDEX_KEYS if k in line} | {
                    "record": f"{RUNS_DIR}/{run}/{RUN_FILE}"}
                compacted += 1
            else:
                whole += 1
            lines.append(json.dumps(line, sort_keys=True, allow_nan=False) + "\n")
        write_atomic(path, "".join(lines))
    return compacted, whole, before, path.stat().st_size


def merge_registry(root: Path, source: Path) -> tuple[int, int, list[str]]:
    """Append the verdict lines of another machine's ``registry.jsonl`` to ``root``'s, safely.

    Each source line must be a complete JSON object (a torn or malformed line is reported, never glued into the
    middle of the registry); each is appended through :func:`append_registry` (locked, whole lines), and a line
    already present is not appended twice, so a merge can be repeated: the same JSON, or the same verdict in the
    other form (a whole line and its compacted form, :func:`compact_registry`, are one verdict). A compacted line is
    merged only where its run file is under ``root`` and holds its record (:func:`_compacted_problem`). Returns
    ``(appended, already_present, problems)``.
    """
    source = Path(source)
    if source.is_dir():
        source = source / REGISTRY_FILE
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such registry file")
    present = set()
    for line in read_registry(root):
        present.update(_registry_keys(line))
    held: dict[str, set[tuple] | str] = {}  # run -> its run file's verdict identities under root, or why not
    appended, duplicate, problems = 0, 0, []
    with open(source, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                problems.append(f"{source}:{number}: torn last line ({len(line)} bytes) skipped")
                break
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{source}:{number}: not a complete JSON line ({exc.msg}) skipped")
                continue
            if isinstance(data, dict) and "record" in data:  # a compacted line: its record is in its run file
                why = _compacted_problem(root, data, held)
                if why:
                    problems.append(f"{source}:{number}: {why} skipped")
                    continue
            else:
                try:
                    VerdictRecord.from_dict(data)
                    json.dumps(data, allow_nan=False)
                except (ClaimError, ValueError, TypeError, AttributeError) as exc:
                    problems.append(f"{source}:{number}: not a verdict record ({str(exc)[:80]}) skipped")
                    continue
            keys = _registry_keys(data)
            if keys & present:
                duplicate += 1
                continue
            append_registry(root, data)
            present.update(keys)
            appended += 1
    return appended, duplicate, problems


_VERDICT_IDENTITY = ("run", "claim_id", "model", "protocol", "tier", "verdict", "timestamp")


def _registry_keys(line: Mapping[str, Any]) -> set:
    """What makes two registry lines one verdict: the same JSON, or (a line that names its run and timestamp) the
    same run, claim, model, protocol, tier, verdict and timestamp, whole or compacted."""
    keys: set = {json.dumps(line, sort_keys=True)}
    if isinstance(line.get("run"), str) and line.get("timestamp"):
        keys.add(tuple(str(line.get(k)) for k in _VERDICT_IDENTITY))
    return keys


def _compacted_problem(root: Path, line: Mapping[str, Any], held: dict) -> str:
    """Why a compacted registry line (:func:`compact_registry`) cannot be merged into ``root`` ('' when it can): it
    must carry the index fields, name a plain run (no path), point at ``runs/<that run>/claims.json``, and that run
    file must be under ``root`` already, complete, and hold the line's verdict (copy the run directory first: a line
    is never merged pointing at a record ``root`` lacks). ``held`` caches each run file's verdicts."""
    missing = [k for k in ("run", "claim_id", "model", "protocol", "verdict", "timestamp") if k not in line]
    if missing:
        return f"compacted line without {', '.join(missing)}"
    run, pointer = line["run"], line["record"]
    if not isinstance(run, str) or not run or any(bad in run for bad in ("/", "\\", "..", "\0")):
        return f"compacted line naming run {str(run)[:80]!r}, not a run directory's name"
    if pointer != f"{RUNS_DIR}/{run}/{RUN_FILE}":
        return f"compacted line pointing at {str(pointer)[:80]!r}, not its run's {RUNS_DIR}/{run}/{RUN_FILE}"
    if run not in held:
        claims = Path(root) / pointer
        if not claims.is_file():
            held[run] = f"compacted line of run {run}, whose {pointer} is not under {root}: copy that run directory first,"
        else:
            try:
                got = Run.from_json(claims.read_text(encoding="utf-8"), str(claims))
            except (OSError, ValueError) as exc:
                held[run] = f"compacted line of run {run}, whose {pointer} cannot be read ({str(exc)[:80]}),"
            else:
                held[run] = (f"compacted line of run {run}, whose {pointer} is incomplete (a killed run),"
                             if got.meta.get("incomplete") else
                             {tuple(str(r.to_dict().get(k)) for k in _VERDICT_IDENTITY) for r in got.records})
    if isinstance(held[run], str):
        return held[run]
    if tuple(str(line.get(k)) for k in _VERDICT_IDENTITY) not in held[run]:
        return f"compacted line of run {run} whose verdict its {pointer} does not hold,"
    return ""


# ------------------------------------------------------------------------------------------------ runs


@dataclass
class Change:
    """A verdict flip or a figure that moved beyond its tolerance, relative to a baseline or an earlier run."""

    claim_id: str
    model: str
    protocol: str
    kind: str  # "flip" | "figure"
    figure: str  # "" for a flip
    before: Any
    after: Any
    tolerance: str = ""
    pinned_commit: str = ""
    pinned_run: str = ""
    verdict_before: str = ""
    verdict_after: str = ""

    def describe(self) -> str:
        where = f"{self.claim_id} {self.model} [{self.protocol}]"
        since = f" (pinned at {self.pinned_commit}, run {self.pinned_run})" if self.pinned_commit else ""
        if self.kind == "flip":
            return f"FLIP  {where}: {self.before} -> {self.after}{since}"
        if self.kind == "swamped":
            return f"WIDE  {where}: {self.figure} tolerance {self.tolerance}{since}"
        if self.after is None:
            return f"GONE  {where}: {self.figure} was {fmt(self.before)}, not reported now{since}"
        return (f"MOVED {where}: {self.figure} {fmt(self.before)} -> {fmt(self.after)} "
                f"(tolerance {self.tolerance}){since}")


@dataclass
class Run:
    """One pytest session's verdicts and what was compared against."""

    name: str
    meta: dict = field(default_factory=dict)
    records: list[VerdictRecord] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counter = Counter(r.verdict.value for r in self.records)
        return {v.value: counter.get(v.value, 0) for v in Verdict}

    def to_json(self) -> str:
        payload = {"run": self.name, "meta": {**self.meta, "counts": self.counts()},
                   "records": [r.to_dict() for r in self.records], "changes": [asdict(c) for c in self.changes]}
        return json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "claims.json") -> "Run":
        try:
            data = json.loads(text)
            return cls(name=data["run"], meta=data.get("meta", {}),
                       records=[VerdictRecord.from_dict(r) for r in data["records"]],
                       changes=[Change(**c) for c in data.get("changes", [])])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{where}: not a claims run file ({exc})") from exc


def reserve_run_dir(root: Path, commit: str, when: datetime | None = None) -> Path:
    """Create ``runs/<timestamp>-<commit>`` (with a suffix if a parallel session took the name)."""
    runs = Path(root) / RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    base = f"{(when or utc_now()).strftime('%Y%m%dT%H%M%SZ')}-{commit}"
    for attempt in range(1, 1000):
        candidate = runs / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"{runs}: cannot find a free run directory name for {base}")


def write_run(run_dir: Path, run: Run, pages: Sequence[Callable[[Path, Run], list[str]]] = ()) -> list[str]:
    """Write claims.json, report.md and each of ``pages`` (e.g. ``engine.report_html.write_page_quietly``: the
    claims plugin writes report.html here) atomically; point ``latest`` at this run only when it is complete.

    Each file is attempted even when the other fails (a full disk, a read-only tree): a write error is returned as
    one line per file (never raised), and a run whose claims.json could not be written is marked incomplete in its
    report.md. ``latest`` moves only to a run that is complete (``meta["incomplete"]`` unset) and fully written.
    """
    problems = []
    try:
        write_atomic(run_dir / RUN_FILE, run.to_json())
    except (OSError, ValueError) as exc:
        problems.append(f"{run_dir / RUN_FILE}: not written ({_one_line(exc)})")
        mark_incomplete(run, f"write error: {RUN_FILE} not written ({_one_line(exc)})")
    try:
        write_atomic(run_dir / REPORT_FILE, render_markdown(run))
    except (OSError, ValueError) as exc:
        problems.append(f"{run_dir / REPORT_FILE}: not written ({_one_line(exc)})")
    for page in pages:  # a page's problem is one line, never raised
        problems += page(run_dir, run)
    if not problems and not run.meta.get("incomplete"):
        try:
            point_latest(run_dir.parent.parent, run_dir.name)
        except OSError as exc:
            problems.append(f"{Path(run_dir.parent.parent) / LATEST}: not moved ({_one_line(exc)})")
    return problems


def mark_incomplete(run: Run, reason: str) -> None:
    """Mark ``run`` as not finished cleanly (an internal error, a write error, an interruption), with why."""
    run.meta["incomplete"] = True
    reasons = run.meta.setdefault("incomplete_reasons", [])
    if reason not in reasons:
        reasons.append(reason)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def point_latest(root: Path, name: str) -> None:
    """``latest`` -> runs/<name>: an atomically replaced relative symlink, or a text file if symlinks fail."""
    latest = Path(root) / LATEST
    tmp = latest.with_name(f".{LATEST}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(Path(RUNS_DIR) / name, tmp, target_is_directory=True)
        if latest.is_dir() and not latest.is_symlink():
            raise OSError(f"{latest} is a real directory")
        os.replace(tmp, latest)
    except OSError:
        tmp.unlink(missing_ok=True)
        write_atomic(latest, name + "\n")


def run_dir(root: Path, which: str | None = None) -> Path:
    """Resolve a run: None/'latest', a run name, a run directory or a claims.json path.

    A run directory without claims.json (a run killed before its end) resolves too: see :func:`load_run`.
    """
    root = Path(root)
    if which in (None, "", LATEST):
        latest = root / LATEST
        if latest.is_symlink() or latest.is_dir():
            target = latest.resolve()
            if target.parent != (root / RUNS_DIR).resolve():
                raise ValueError(f"{latest} points outside {root / RUNS_DIR} (to {target}): not followed; point it "
                                 f"at a run under {RUNS_DIR}/ or name the run")
            if not target.is_dir():
                raise FileNotFoundError(f"{latest}: points at {target}, which does not exist")
            return target
        if latest.is_file():
            name = latest.read_text(encoding="utf-8", errors="replace").strip()
            if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
                raise ValueError(f"{latest} names {name[:80]!r}, not a run under {root / RUNS_DIR}: not followed")
            return root / RUNS_DIR / name
        raise FileNotFoundError(f"{latest}: no run recorded yet under {root}")
    for candidate in (Path(which), root / RUNS_DIR / which):
        if candidate.is_file() and candidate.name == RUN_FILE:
            return candidate.parent
        if (candidate / RUN_FILE).is_file():
            return candidate
    interrupted = root / RUNS_DIR / Path(which).name
    if interrupted.is_dir():
        return interrupted
    raise FileNotFoundError(f"run {which!r}: no {RUN_FILE} at {which} or {root / RUNS_DIR / which}")


def load_run(root: Path, which: str | None = None) -> Run:
    """A run from its claims.json; for a run killed before it wrote one, rebuilt from its registry lines."""
    directory = run_dir(root, which)
    path = directory / RUN_FILE
    if path.is_file():
        return Run.from_json(path.read_text(encoding="utf-8"), str(path))
    records = [VerdictRecord.from_dict(line) for line in read_registry(root)
               if line.get("run") == directory.name and "record" not in line]  # not a compacted index line
    if not records:
        raise FileNotFoundError(f"run {directory.name}: no {RUN_FILE} and no verdict of it in {REGISTRY_FILE}")
    commits = sorted({r.git_commit for r in records})
    meta = {"run": directory.name, "git_commit": ", ".join(commits), "engine_version": records[0].engine_version,
            "started": records[0].timestamp, "interrupted": True}
    return Run(directory.name, meta, records, [])


# ------------------------------------------------------------------------------------------------ comparison


ToleranceFor = Callable[[str, str], Tolerance]


def compare(before: Mapping[tuple[str, str, str], Mapping[str, Any]], records: Iterable[VerdictRecord],
            tolerance_for: ToleranceFor) -> list[Change]:
    """Flips and moved figures of ``records`` relative to ``before`` ((claim, model, protocol) -> entry).

    An entry has ``verdict``, ``figures`` and optionally ``commit`` and ``run``. UNTESTED records are not compared
    (a machine without a GPU says nothing about a figure), and claims without an entry are new, not changes.
    """
    changes = []
    for record in records:
        entry = before.get((record.claim_id, record.model, record.protocol))
        if entry is None or record.verdict is Verdict.UNTESTED or entry["verdict"] == Verdict.UNTESTED.value:
            continue
        pinned = {"pinned_commit": entry.get("commit", ""), "pinned_run": entry.get("run", "")}
        base = (record.claim_id, record.model, record.protocol)
        if entry["verdict"] != record.verdict.value:
            changes.append(Change(*base, "flip", "", entry["verdict"], record.verdict.value, **pinned))
        for name, old in entry.get("figures", {}).items():
            if reported_only(name):  # timings and memory: machine-dependent, reported, never a change
                continue
            new = record.figures.get(name)
            tolerance = tolerance_for(record.claim_id, name)
            if name not in record.figures:
                changes.append(Change(*base, "figure", name, old, None, **pinned))
            elif not _same(old, new, tolerance):
                changes.append(Change(*base, "figure", name, old, new, tolerance.describe(), **pinned))
    return changes


def _same(old: Any, new: Any, tolerance: Tolerance) -> bool:
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() == new.keys() and all(_same(old[k], new[k], tolerance) for k in old)
    if (is_number(old) or is_number_list(old)) and (is_number(new) or is_number_list(new)):
        return tolerance.within(new, old)
    return old == new


def _entries(records: Iterable[VerdictRecord], run: str = "") -> dict[tuple[str, str, str], dict]:
    return {(r.claim_id, r.model, r.protocol): {"verdict": r.verdict.value, "figures": r.figures,
                                                "commit": r.git_commit, "run": r.run or run}
            for r in records}


def diff_runs(a: Run, b: Run, catalogue: Catalogue) -> list[Change]:
    """What changed from run ``a`` to run ``b``: verdict flips and figures moved beyond their tolerance."""
    return compare(_entries(a.records, a.name), b.records, catalogue.tolerance_for)


# ------------------------------------------------------------------------------------------------ baselines + gate
#
# A plan's baselines live in ``baselines/<plan>/<model>.json`` (format 2). Each entry (claim/protocol) holds the
# gated figures of that record, every one with its observed values across the pinned runs, the baseline value and
# a tolerance taken from that spread (0: it must reproduce bit-for-bit), plus the reported-only figures (timings,
# memory) for information. Gated: the record's verdict and, per decision (``record.evidence``), its outcome, its
# estimate and its CI bounds. A record decided without evidence (a legacy bool rule) gates its figures instead,
# minus the reported-only ones.

BASELINE_FORMAT = 2
# tolerance = SPREAD_FACTOR x (max - min) of a figure across the pinned runs, around the midpoint of that range:
# a new run may land half a range beyond either observed extreme (k runs see most, not all, of the spread).
SPREAD_FACTOR = 1.0
# A float figure that reproduced bit-for-bit in every pinned run may still differ in its last bits on another CPU
# (BLAS kernels, reduction order, SIMD width): a relative floor of 1e-4 on every numeric gated figure, far below any
# claim's delta and any planted bug's move (tests/test_gate_mutations.py), far above fp32 rounding (~1e-7 per op).
FLOAT_REL = 1e-4
# Claims whose decision figures come from half-precision / 4-bit kernels, which differ by CPU instruction set (a
# fresh 2-core machine moved Gemma's bf16 steering KL 0.00995 -> 0.00330 and the seed's NF4 amplification 275.6 ->
# 436.4 at one commit): their verdicts are gated, their figures reported and flagged, never hidden by a tolerance.
MACHINE_DEPENDENT = {"QUANT-KL": "half-precision / NF4 kernels differ across CPUs",
                     "QUANT-SPEED": "a speed ratio of this machine"}
# Timing and memory figures are machine-dependent: reported, never gated. Matched per name token.
REPORTED_ONLY = re.compile(r"(?:^|[_.\-\[\]])(?:seconds|secs|sec|s|ms|mb|mib|gb|gib|kb|bytes|rss|memory|"
                           r"throughput|duration|elapsed|wall|latency|time|timing|speedup|slowdown|"
                           r"tokens_per_s|per_s|per_second)(?:$|[_.\-\[\]])", re.IGNORECASE)


def reported_only(name: str) -> bool:
    """A timing or memory figure (``train_seconds``, ``peak_rss_mb``, ``throughput``, ...): never gated."""
    return bool(REPORTED_ONLY.search(name))


def _flatten(value: Any, name: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{name}.{key}"))
        return out
    return {name: value}


def split_figures(record: VerdictRecord) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """(gated, reported_only, delta per gated figure) of one record, with flat names.

    Gated: ``verdict``; per evidence ``evidence[<part or label>].outcome | .estimate[.member] | .ci_low |
    .ci_high``. Reported-only: every figure of ``record.figures`` a decision does not use (all of them for an
    evidence-decided record; the timing and memory ones for a legacy record, whose other figures are gated).
    """
    gated: dict[str, Any] = {"verdict": record.verdict.value}
    deltas: dict[str, float] = {}
    figures = _flatten(record.figures, "figures") if record.figures else {}
    if record.claim_id in MACHINE_DEPENDENT:  # the verdict only (see MACHINE_DEPENDENT)
        return gated, figures, deltas
    if record.evidence:
        reported = figures
        seen: Counter = Counter()
        for e in record.evidence:
            label = str(e.get("part") or e.get("label") or e.get("primitive") or "decision")
            seen[label] += 1
            prefix = f"evidence[{label}]" + (f"#{seen[label]}" if seen[label] > 1 else "")
            ci = e.get("ci") or [None, None]
            parts = {f"{prefix}.outcome": e.get("outcome"), **_flatten(e.get("estimate"), f"{prefix}.estimate"),
                     f"{prefix}.ci_low": ci[0], f"{prefix}.ci_high": ci[1]}
            gated.update(parts)
            delta = (e.get("params") or {}).get("delta")
            if is_number(delta):
                deltas.update({name: float(delta) for name in parts if not name.endswith(".outcome")})
    else:
        reported = {n: v for n, v in figures.items() if reported_only(n)}
        gated.update({n: v for n, v in figures.items() if not reported_only(n)})
    return gated, reported, deltas


def _numeric(values: list[Any]) -> bool:
    return all(is_number(v) for v in values) or (
        all(is_number_list(v) for v in values) and len({len(v) for v in values}) == 1)


def pinned_figure(values: list[Any], delta: float | None = None) -> dict[str, Any]:
    """One gated figure pinned from its values across runs: value, tolerance (from the spread), flag."""
    entry: dict[str, Any] = {"runs": values}
    if all(v == values[0] for v in values):
        entry.update(value=values[0], tolerance=0.0)
    elif _numeric(values):
        columns = list(zip(*values)) if is_number_list(values[0]) else [values]
        spread = max(max(c) - min(c) for c in columns)
        mid = [(max(c) + min(c)) / 2 for c in columns]
        entry.update(value=mid if is_number_list(values[0]) else mid[0], tolerance=SPREAD_FACTOR * spread)
    else:
        entry.update(value=values[0], allowed=[v for i, v in enumerate(values) if v not in values[:i]],
                     tolerance=None, flag="varies across the pinned runs (not a number): any observed value passes")
    tolerance = entry["tolerance"]
    if delta is not None and tolerance and delta > 0 and tolerance >= delta:
        entry["flag"] = (f"spread swamps the claim's delta: tolerance {fmt(tolerance)} >= delta {fmt(delta)} "
                         "(this figure cannot show a move of the decision's size)")
    elif delta is not None and tolerance and delta <= 0:
        # a threshold part (delta 0: the threshold is already subtracted; < 0: an estimated threshold's margin, the
        # boundaries 0 and delta): no move of a decision's size to swamp (the gate's _swamped leaves it; the part's
        # outcome and the verdict are gated), but a spread that reaches a boundary is worth a look: reported
        members = entry["value"] if is_number_list(entry["value"]) else [entry["value"]]
        margin = min(min(abs(v), abs(v - delta)) for v in members)
        if tolerance >= margin:
            entry["flag"] = (f"spread reaches the threshold: tolerance {fmt(tolerance)} >= {fmt(margin)}, the "
                             "distance of (a member of) the figure from a decision boundary (reported; its "
                             "outcome is gated)")
    if delta is not None:
        entry["delta"] = delta
    return entry


def figure_within(entry: Mapping[str, Any], new: Any) -> bool:
    """Whether a new value of a pinned figure is within its baseline's tolerance."""
    if entry.get("allowed") is not None:
        return new in entry["allowed"]
    old, tolerance = entry["value"], entry.get("tolerance") or 0.0
    if (is_number(old) or is_number_list(old)) and (is_number(new) or is_number_list(new)):
        return Tolerance(abs=float(tolerance), rel=FLOAT_REL).within(new, old)
    return new == old


def describe_tolerance(entry: Mapping[str, Any]) -> str:
    if entry.get("allowed") is not None:
        return "one of " + ", ".join(fmt(v, 20) for v in entry["allowed"])
    floor = f"rel {FLOAT_REL:g} (other CPUs)"
    return (f"bit-for-bit here, {floor}" if not entry.get("tolerance") else
            f"±{fmt(entry['tolerance'])} (spread) or {floor}")


def plan_dir(baselines: Path, plan: str) -> Path:
    return Path(baselines) / plan


def baseline_files(baselines: Path, plan: str) -> list[Path]:
    return sorted(plan_dir(baselines, plan).glob("*.json"))


class BaselineError(ValueError):
    """Bad input to pin or gate: one line, naming the file or run."""


# The contract a baseline file is read under (format 2): every field by type, every number finite, each gated
# figure's value and tolerance as they follow from its pinned runs, and a sha256 over the canonical JSON of the
# entries. Any other file is refused with one line naming the file and the entry.
BASELINE_KEYS = {"format", "plan", "model", "commit", "reason", "pinned_at", "pinned_by", "runs", "spread_rule",
                 "entries", "sha256"}
ENTRY_KEYS = {"verdict", "test", "figures", "reported"}
FIGURE_KEYS = {"runs", "value", "tolerance", "allowed", "flag", "delta"}
#: The tier whose records the gate expects: the cpu tier, which every machine (CI) measures.
GATED_TIER = "cpu"


def entries_sha256(entries: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a baseline file's ``entries`` (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} (NaN and Infinity are refused)")


def _finite(value: Any, where: str) -> None:
    """Every number in a JSON value is finite (``1e400`` parses to inf without passing parse_constant)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: non-finite number {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _finite(item, where)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float))


def _figure_value(value: Any) -> bool:
    """What a gated figure's value may be: a JSON scalar, a list of scalars, or an empty dict (an empty estimate)."""
    return _scalar(value) or (isinstance(value, list) and all(_scalar(v) for v in value)) or value == {}


def _real(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def _check_figure(figure: Any, where: str) -> None:
    if not isinstance(figure, dict):
        raise ValueError(f"{where}: a figure must be an object, not {type(figure).__name__}")
    unknown = set(figure) - FIGURE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
    for key in ("value", "runs", "tolerance"):
        if key not in figure:
            raise ValueError(f"{where}: no {key!r}")
    runs, value, tolerance = figure["runs"], figure["value"], figure["tolerance"]
    if not isinstance(runs, list) or not runs or not all(_figure_value(v) for v in runs):
        raise ValueError(f"{where}: 'runs' must be a non-empty list of the values pinned")
    if not _figure_value(value):
        raise ValueError(f"{where}: value of type {type(value).__name__} is not a figure")
    if tolerance is not None and not (_real(tolerance) and tolerance >= 0):
        raise ValueError(f"{where}: tolerance {tolerance!r} is not a finite number >= 0")
    delta = figure.get("delta")
    if "delta" in figure and not _real(delta):  # 0: a threshold claim; < 0: an estimated threshold's margin
        raise ValueError(f"{where}: delta {delta!r} is not a finite number")
    if "flag" in figure and not isinstance(figure["flag"], str):
        raise ValueError(f"{where}: flag must be text")
    allowed = figure.get("allowed")
    if tolerance is None and not (isinstance(allowed, list) and allowed and value in allowed):
        raise ValueError(f"{where}: a figure without a tolerance needs the list of 'allowed' values, holding its value")
    if tolerance is not None and allowed is not None:
        raise ValueError(f"{where}: a figure has a tolerance or 'allowed' values, not both")
    # The value and the tolerance follow from the pinned runs (pinned_figure): neither can be widened by hand.
    expect = pinned_figure(runs)
    if (expect["value"] != value or expect["tolerance"] != tolerance
            or expect.get("allowed") != allowed):
        raise ValueError(f"{where}: value {fmt(value, 40)} / tolerance {fmt(tolerance, 20)} do not follow from its "
                         f"pinned runs (value {fmt(expect['value'], 40)}, tolerance {fmt(expect['tolerance'], 20)})")


def _check_entry(key: Any, entry: Any, where: str) -> tuple[str, str]:
    if not isinstance(key, str) or key.count("/") != 1 or not all(key.split("/")):
        raise ValueError(f"{where}: entry key {key!r} is not CLAIM/protocol")
    where = f"{where}: entry {key}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: an entry must be an object, not {type(entry).__name__}")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
    verdict, figures = entry.get("verdict"), entry.get("figures")
    if verdict not in {v.value for v in Verdict}:
        raise ValueError(f"{where}: verdict {verdict!r} is not one of {', '.join(v.value for v in Verdict)}")
    if "test" in entry and not isinstance(entry["test"], str):
        raise ValueError(f"{where}: test must be text")
    if "reported" in entry and not isinstance(entry["reported"], dict):
        raise ValueError(f"{where}: reported must be an object")
    if not isinstance(figures, dict) or "verdict" not in figures:
        raise ValueError(f"{where}: figures must be an object holding at least the pinned 'verdict'")
    for name, figure in figures.items():
        _check_figure(figure, f"{where}: figure {name}")
    pinned_verdict = figures["verdict"]
    if verdict not in (pinned_verdict.get("allowed") or [pinned_verdict["value"]]):
        raise ValueError(f"{where}: verdict {verdict} differs from its pinned verdict figure "
                         f"{fmt(pinned_verdict['value'], 20)}")
    claim_id, protocol = key.split("/")
    return claim_id, protocol


def read_baseline_file(path: Path, plan: str) -> tuple[dict, dict[tuple[str, str, str], dict]]:
    """One baseline file, validated: (its header, its entries keyed (claim, model, protocol)).

    Raises :class:`BaselineError` (one line naming the file and the entry) on anything but a well-formed file:
    not JSON, a non-finite number anywhere (NaN, Infinity, 1e400), a wrong-typed field, a verdict that is not a
    verdict, a figure whose value or tolerance does not follow from its pinned runs, a missing or wrong sha256.
    """
    path = Path(path)
    try:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read it ({_one_line(exc)})") from exc
        data = json.loads(text, parse_constant=_refuse_constant)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object expected, not {type(data).__name__}")
        if data.get("format") != BASELINE_FORMAT or data.get("plan") != plan:
            raise ValueError(f"format {data.get('format')!r}, plan {data.get('plan')!r}; expected format "
                             f"{BASELINE_FORMAT}, plan {plan!r}")
        _finite(data, "file")
        unknown = set(data) - BASELINE_KEYS
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        for key in ("model", "commit", "reason"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise ValueError(f"{key!r} must be non-empty text")
        if data["model"] != path.stem:
            raise ValueError(f"it pins model {data['model']!r} but is named {path.name}")
        runs = data.get("runs")
        if not isinstance(runs, list) or not runs or not all(
                isinstance(r, dict) and isinstance(r.get("run"), str) and r["run"] for r in runs):
            raise ValueError("'runs' must be a non-empty list of {\"run\": NAME, ...}")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not entries:
            raise ValueError("'entries' must be a non-empty object")
        keyed = {}
        pinned = {"commit": data["commit"], "reason": data["reason"], "runs": [r["run"] for r in runs]}
        for key, entry in entries.items():
            claim_id, protocol = _check_entry(key, entry, "entries")
            keyed[(claim_id, data["model"], protocol)] = {**entry, **pinned}
        digest = data.get("sha256")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("no sha256 of its entries (a file written by `mi-atlas baselines pin` carries one)")
        if digest != entries_sha256(entries):
            raise ValueError("its entries do not match its sha256 (edited after the pin?)")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise BaselineError(f"{path}: not a format-{BASELINE_FORMAT} baseline file ({str(exc)[:300]}); re-pin it "
                            "with `mi-atlas baselines pin`") from exc
    return data, keyed


def load_plan_baselines(baselines: Path, plan: str) -> dict[tuple[str, str, str], dict]:
    """Every pinned entry of ``plan`` keyed (claim, model, protocol); each carries its file's commit/reason/runs.

    Every file is validated (:func:`read_baseline_file`); a bad one raises :class:`BaselineError`.
    """
    entries: dict[tuple[str, str, str], dict] = {}
    for path in baseline_files(baselines, plan):
        entries.update(read_baseline_file(path, plan)[1])
    return entries


def declared_records(catalogue: Catalogue, plan: str, tier: str = GATED_TIER) -> set[tuple[str, str, str]]:
    """Every (claim, model, protocol) the catalogue declares for ``tier`` in a block ``plan`` sizes: the record
    set a gated run of ``plan`` must measure and its baselines must pin (not whichever baseline files exist)."""
    known = plans.read()[1]
    if plan not in known:
        raise BaselineError(f"plan {plan!r}: no such plan in {plans.PLANS_FILE} ({', '.join(known)})")
    blocks = set(known[plan].get(tier, {}))
    out = set()
    for claim in catalogue:
        if tier not in claim.tiers or claim.block not in blocks:
            continue
        out.update((claim.id, target, protocol) for target in catalogue.targets(claim, plan, tier)
                   for protocol in catalogue.protocols_of(claim))
    return out


def run_plan(run: Run) -> str:
    """The plan a run measured: its session's ``--plan``, else its records' plan, else ``default``."""
    if run.meta.get("plan"):
        return str(run.meta["plan"])
    named = {r.plan for r in run.records if r.plan}
    return named.pop() if len(named) == 1 else "default"


def pin_plan_baselines(baselines: Path, plan: str, runs: list[Run], reason: str, *,
                       pinned_by: str = "mi-atlas baselines pin") -> list[Path]:
    """Re-pin every baseline of ``plan`` from one or more runs of one commit (several runs: spread -> tolerance).

    The plan's directory is replaced: a model no longer measured loses its file, so the gate's expected record
    count is exactly what these runs measured. Raises :class:`BaselineError` on bad input.
    """
    if not reason or not reason.strip():
        raise BaselineError("a re-pin needs a reason (--reason \"...\"): it is stored in the baseline file")
    keyed, commit = _records_of(runs, plan, "pin")
    by_model: dict[str, dict[str, dict]] = {}
    for key in sorted(keyed[0]):
        records = [k[key] for k in keyed]
        splits = [split_figures(r) for r in records]
        names = list(dict.fromkeys(n for gated, _, _ in splits for n in gated))
        figures = {}
        for name in names:
            values = [gated.get(name) for gated, _, _ in splits]
            figures[name] = pinned_figure(values, splits[0][2].get(name))
        by_model.setdefault(key[1], {})[f"{key[0]}/{key[2]}"] = {
            "verdict": records[0].verdict.value, "test": records[0].test, "figures": figures,
            "reported": splits[0][1]}
    header = {"commit": commit, "reason": reason.strip(), "pinned_by": pinned_by,
              "runs": [_pinned_run(r) for r in runs]}
    return _write_plan_baselines(baselines, plan, by_model, header)


def widen_plan_baselines(baselines: Path, plan: str, runs: list[Run], reason: str, *,
                         pinned_by: str = "mi-atlas baselines pin --widen") -> list[Path]:
    """Add runs of another machine to ``plan``'s pinned baselines: every gated figure's pinned values and the new
    runs' values together give its spread, hence its tolerance (:func:`pinned_figure`, as in a pin of several runs).

    For a float figure whose last bits depend on the CPU (reduction order and vector width: an AVX2 and an AVX-512
    host differ, and LoRA training amplifies that to the third digit), the spread that matters is across
    machines, which no run of one machine shows. The new runs must measure exactly the pinned records, report the
    same figures and reach the pinned verdict on every record: a verdict that differs on another machine is a
    change to look at, never a spread to absorb, and so is a decision part whose outcome (or any other non-numeric
    figure) takes a value no pinned run had (both refused, one line). Widening is for another machine: a new run on
    a CPU (model name and SIMD flags) a pinned run recorded is refused (pin several runs instead), and so is one
    whose engine code differs from a pinned run's recorded ``engine_code`` (runs pinned before it was recorded
    cannot be checked: the reason must say why the code is the same). The pinned runs' provenance is kept and the
    new runs' added; the commit reads "<pinned>+<new>" when they differ, the earlier pin's commit and reason are
    quoted in the reason. Raises :class:`BaselineError` on bad input.
    """
    if not reason or not reason.strip():
        raise BaselineError("a widening needs a reason (--reason \"...\"): it is stored in the baseline file")
    keyed, commit = _records_of(runs, plan, "widen with")
    headers, pinned = {}, {}
    for path in baseline_files(baselines, plan):
        header, entries = read_baseline_file(path, plan)
        headers[header["model"]] = header
        pinned.update(entries)
    if not pinned:
        raise BaselineError(f"no baselines pinned for plan {plan!r} under {plan_dir(baselines, plan)}: pin first")
    if set(pinned) != set(keyed[0]):
        odd = min(set(pinned) ^ set(keyed[0]))
        raise BaselineError(f"the runs and the pinned baselines hold different records (e.g. {odd[0]} {odd[1]} "
                            f"[{odd[2]}]): widen with runs of the pinned selection, or re-pin")
    for model, header in headers.items():
        for old in header["runs"]:
            for run in runs:
                new = _pinned_run(run)
                if old.get("cpu") and old.get("simd") and (old["cpu"], old["simd"]) == (new["cpu"], new["simd"]):
                    raise BaselineError(f"run {run.name} ran on the CPU of pinned run {old['run']} ({new['cpu']}, "
                                        f"{new['simd']}): widening adds another machine; pin several runs instead")
                if old.get("engine_code") and new["engine_code"] and old["engine_code"] != new["engine_code"]:
                    raise BaselineError(f"run {run.name}: engine code {new['engine_code']}, pinned run {old['run']}'s "
                                        f"{old['engine_code']}: widen with runs of the pinned code, or re-pin")
    by_model: dict[str, dict[str, dict]] = {}
    for key in sorted(pinned):
        entry, records = pinned[key], [k[key] for k in keyed]
        where = f"{key[0]} {key[1]} [{key[2]}]"
        for run, record in zip(runs, records):
            if record.verdict.value != entry["verdict"]:
                raise BaselineError(f"{where}: {record.verdict.value} on run {run.name}, pinned {entry['verdict']}: "
                                    "a verdict that differs is a change to look at, not a spread; re-pin deliberately")
        splits = [split_figures(r) for r in records]
        for run, (gated, _, _) in zip(runs, splits):
            if set(gated) != set(entry["figures"]):
                odd = min(set(gated) ^ set(entry["figures"]))
                raise BaselineError(f"{where}: run {run.name} reports other gated figures than the pin (e.g. {odd}): "
                                    "re-pin instead")
            for name, figure in entry["figures"].items():
                if not _numeric([*figure["runs"], gated[name]]) and gated[name] not in figure["runs"]:
                    raise BaselineError(f"{where}: {name} is {fmt(gated[name], 20)} on run {run.name}, pinned "
                                        f"{', '.join(fmt(v, 20) for v in figure['runs'])}: a decision part that "
                                        "differs is a change to look at, not a spread; re-pin deliberately")
        figures = {name: pinned_figure([*figure["runs"], *(gated[name] for gated, _, _ in splits)],
                                       figure.get("delta"))
                   for name, figure in entry["figures"].items()}
        by_model.setdefault(key[1], {})[f"{key[0]}/{key[2]}"] = {
            "verdict": entry["verdict"], "test": entry.get("test"), "figures": figures,
            "reported": entry.get("reported", {})}
    written = []
    for model, entries in sorted(by_model.items()):
        old = headers[model]
        known = old["commit"].split("+")
        header = {"commit": "+".join(known if commit in known else [*known, commit]), "pinned_by": pinned_by,
                  "reason": f"{reason.strip()} (widened the pin at {old['commit']}: {old['reason'][:300]})",
                  "runs": [*old["runs"], *(_pinned_run(r) for r in runs)]}
        written += _write_plan_baselines(baselines, plan, {model: entries}, header, replace=False)
    return written


def _records_of(runs: list[Run], plan: str, verb: str = "pin"
                ) -> tuple[list[dict[tuple[str, str, str], VerdictRecord]], str]:
    """Each run's records keyed (claim, model, protocol), and the runs' one commit, after checking the runs can be
    pinned: runs of one commit and of ``plan``, complete, not interrupted, one record per key, the same keys in every
    run. ``verb`` names what the caller does with them in the one-commit message."""
    if not runs:
        raise BaselineError("no run to pin from")
    commits = {str(r.meta.get("git_commit", "?")) for r in runs}
    if len(commits) > 1:
        raise BaselineError(f"runs of different commits ({', '.join(sorted(commits))}): {verb} runs of one commit")
    keyed: list[dict[tuple[str, str, str], VerdictRecord]] = []
    for run in runs:
        if run_plan(run) != plan:
            raise BaselineError(f"run {run.name} measured plan {run_plan(run)!r}, not {plan!r}")
        if run.meta.get("interrupted"):
            raise BaselineError(f"run {run.name} was interrupted: pin complete runs only")
        if run.meta.get("incomplete"):
            why = "; ".join(map(str, run.meta.get("incomplete_reasons") or [])) or "it did not finish cleanly"
            raise BaselineError(f"run {run.name} is incomplete ({why[:200]}): pin complete runs only")
        own: dict[tuple[str, str, str], VerdictRecord] = {}
        for r in run.records:
            key = (r.claim_id, r.model, r.protocol)
            if key in own:
                raise BaselineError(f"run {run.name} holds two records of {r.claim_id} {r.model} [{r.protocol}]")
            own[key] = r
        if not own:
            raise BaselineError(f"run {run.name} holds no verdict record")
        if keyed and own.keys() != keyed[0].keys():
            odd = min(own.keys() ^ keyed[0].keys())
            raise BaselineError(f"runs {runs[0].name} and {run.name} measured different records "
                                f"(e.g. {odd[0]} {odd[1]} [{odd[2]}]): pin runs of the same selection")
        keyed.append(own)
    return keyed, commits.pop()


def _pinned_run(run: Run) -> dict[str, Any]:
    """A pinned run's provenance in a baseline file: which commit, machine and CPU computed its values."""
    return {"run": run.name, "commit": run.meta.get("git_commit"), "machine": run.meta.get("machine"),
            "cpu_count": run.meta.get("cpu_count"), "platform": run.meta.get("platform"),
            "cpu": run.meta.get("cpu"), "simd": run.meta.get("simd"),
            "cpu_capability": run.meta.get("cpu_capability"), "engine_code": run.meta.get("engine_code"),
            "torch_threads": run.meta.get("torch_threads")}


def _write_plan_baselines(baselines: Path, plan: str, by_model: Mapping[str, Mapping[str, dict]], header: dict, *,
                          replace: bool = True) -> list[Path]:
    """One file per model; ``replace``: the plan's directory holds exactly these models afterwards (a model no
    longer measured loses its file, so the gate's expected record count is what the runs measured)."""
    directory = plan_dir(baselines, plan)
    directory.mkdir(parents=True, exist_ok=True)
    header = {"format": BASELINE_FORMAT, "plan": plan, **header,
              "pinned_at": utc_now().isoformat(timespec="seconds"),
              "spread_rule": f"tolerance = {SPREAD_FACTOR:g} x (max - min) across the runs, around the midpoint; "
                             "0 = reproduces bit-for-bit"}
    written = []
    with FileLock(str(directory) + ".lock"):
        if replace:
            for stale in set(baseline_files(baselines, plan)) - {directory / f"{m}.json" for m in by_model}:
                stale.unlink()
        for model, entries in sorted(by_model.items()):
            path = directory / f"{model}.json"
            entries = json.loads(json.dumps(entries, allow_nan=False))  # as it is read back: tuples -> lists
            write_atomic(path, json.dumps({**header, "model": model, "entries": entries,
                                           "sha256": entries_sha256(entries)}, indent=1,
                                          sort_keys=True, allow_nan=False) + "\n")
            written.append(path)
    return written


@dataclass
class GateReport:
    """What the regression gate compared for one plan, and what moved."""

    plan: str
    baselines: str
    expected: int = 0  # records the gate expects: pinned, and declared by the catalogue for the plan
    compared: int = 0
    gated: int = 0  # figures compared (verdicts included)
    reported_only: int = 0
    missing: list = field(default_factory=list)  # (claim, model, protocol) pinned but not measured
    not_pinned: list = field(default_factory=list)  # declared by the catalogue and the plan, but not pinned
    unpinned: list = field(default_factory=list)  # measured, neither pinned nor declared (not a failure)
    changes: list = field(default_factory=list)  # Change
    flags: list = field(default_factory=list)  # "claim model [protocol] figure: flag"
    commits: list = field(default_factory=list)
    reasons: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (not self.changes and not self.missing and not self.not_pinned
                and self.compared >= self.expected > 0)

    def summary(self) -> str:
        pinned = ", ".join(f"{c} ({r})" for c, r in zip(self.commits, self.reasons)) or "nothing pinned"
        return (f"gate [plan {self.plan}]: {self.compared} of {self.expected} pinned record(s) compared, "
                f"{self.gated} gated figure(s), {self.reported_only} reported-only (timing/memory or not used by a "
                f"decision); {len(self.changes)} moved, {len(self.missing)} missing, {len(self.not_pinned)} not "
                f"pinned, {len(self.unpinned)} unpinned; baselines {self.baselines} pinned at {pinned}")

    def table(self) -> tuple[list[str], list[list[str]]]:
        return gate_table(self.changes, self.missing, self.not_pinned)

    def lines(self) -> list[str]:
        """Summary, the failure table (aligned text) and the flags: what the terminal and report.md show."""
        out = [self.summary()]
        if self.compared < self.expected:
            out.append(f"FAIL: fewer records compared ({self.compared}) than the plan's baselines expect "
                       f"({self.expected})")
        if self.not_pinned:
            models = sorted({m for _, m, _ in self.not_pinned})
            out.append(f"FAIL: {len(self.not_pinned)} record(s) the catalogue declares for plan {self.plan} have no "
                       f"baseline (model(s) {', '.join(models)}): re-pin with `mi-atlas baselines pin`")
        header, rows = self.table()
        if rows:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            out += ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
            out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        out += [f"flag: {flag}" for flag in self.flags]
        return out

    def to_dict(self) -> dict:
        return {"plan": self.plan, "baselines": self.baselines, "expected": self.expected,
                "compared": self.compared, "gated": self.gated, "reported_only": self.reported_only,
                "missing": [list(k) for k in self.missing], "not_pinned": [list(k) for k in self.not_pinned],
                "unpinned": [list(k) for k in self.unpinned],
                "flags": self.flags, "commits": self.commits, "passed": self.passed}


GATE_HEADER = ["claim", "model", "protocol", "figure", "baseline", "new", "tolerance", "verdict before",
               "verdict after", "pinned at"]


def gate_table(changes: Iterable[Change], missing: Iterable = (),
               not_pinned: Iterable = ()) -> tuple[list[str], list[list[str]]]:
    """The table a reviewer acts on: one row per moved figure or flip, per pinned record not measured and per
    declared record not pinned."""
    rows = [[c.claim_id, c.model, c.protocol, c.figure or "verdict", fmt(c.before, 40),
             "(absent)" if c.after is None and c.kind != "flip" else fmt(c.after, 40), c.tolerance,
             c.verdict_before, c.verdict_after, c.pinned_commit] for c in changes]
    rows += [[c, m, p, "(record)", "pinned", "not measured", "-", "", "", ""] for c, m, p in missing]
    rows += [[c, m, p, "(record)", "not pinned", "declared", "-", "", "", ""] for c, m, p in not_pinned]
    return list(GATE_HEADER), rows


def gate(pinned: Mapping[tuple[str, str, str], Mapping[str, Any]], records: Iterable[VerdictRecord], *,
         plan: str, baselines: str | Path = "", declared: Iterable[tuple[str, str, str]] | None = None) -> GateReport:
    """Compare ``records`` with a plan's pinned entries: every gated figure within its tolerance, every pinned
    record measured.

    ``declared``: the records the catalogue and the plan declare (:func:`declared_records`); each must be pinned
    and measured (a missing model file or entry fails, it is not "unpinned"). A gated figure the run reports that
    the baseline does not pin fails, and so does a tolerance that reaches its decision's delta (recomputed here
    from the run's own evidence, not read from the file)."""
    records = list(records)
    declared = set(declared or ())
    report = GateReport(plan=plan, baselines=str(baselines), expected=len(set(pinned) | declared))
    report.not_pinned = sorted(declared - set(pinned))
    report.commits = sorted({e["commit"] for e in pinned.values()})
    report.reasons = [next(e["reason"] for e in pinned.values() if e["commit"] == c) for c in report.commits]
    for key, entry in pinned.items():
        for name, figure in entry["figures"].items():
            if figure.get("flag"):
                report.flags.append(f"{key[0]} {key[1]} [{key[2]}] {name}: {figure['flag']}")
    seen = set()
    for record in records:
        key = (record.claim_id, record.model, record.protocol)
        entry = pinned.get(key)
        if entry is None:
            if key not in declared:
                report.unpinned.append(key)
            continue
        seen.add(key)
        report.compared += 1
        gated, reported, deltas = split_figures(record)
        report.reported_only += len(reported)
        common = {"pinned_commit": entry["commit"], "pinned_run": ",".join(entry["runs"]),
                  "verdict_before": entry["verdict"], "verdict_after": record.verdict.value}
        for name in sorted(entry["figures"], key=lambda n: n != "verdict"):  # the verdict's row first
            figure = entry["figures"][name]
            report.gated += 1
            if name not in gated:
                report.changes.append(Change(*key, "figure", name, figure["value"], None,
                                             describe_tolerance(figure), **common))
            elif not figure_within(figure, gated[name]):
                report.changes.append(Change(*key, "flip" if name == "verdict" else "figure",
                                             "" if name == "verdict" else name, figure["value"], gated[name],
                                             describe_tolerance(figure), **common))
            swamped = _swamped(figure, deltas.get(name))
            if swamped:
                report.changes.append(Change(*key, "swamped", name, figure["value"], gated.get(name), swamped,
                                             **common))
        for name in sorted(set(gated) - set(entry["figures"])):
            report.changes.append(Change(*key, "figure", name, "(not pinned)", gated[name],
                                         "not pinned: re-pin", **common))
    report.missing = sorted(set(pinned) - seen)
    return report


def _swamped(figure: Mapping[str, Any], delta: float | None) -> str:
    """Why a pinned figure's tolerance cannot show a move of its decision's size ('' when it can): the tolerance
    reaches the decision's delta (the run's own, else the one stored with the figure)."""
    tolerance = figure.get("tolerance")
    # a decision's size: threshold claims (delta 0) and margins shifted below 0 have none to swamp
    deltas = [d for d in (delta, figure.get("delta")) if is_number(d) and math.isfinite(d) and d > 0]
    if not (is_number(tolerance) and tolerance) or not deltas:
        return ""
    if tolerance >= min(deltas):
        return (f"±{fmt(tolerance)} reaches the decision's delta {fmt(min(deltas))}: this figure cannot show a move "
                "of the decision's size (re-pin from runs that agree)")
    return ""


# ------------------------------------------------------------------------------------------------ tables


@dataclass
class Row:
    """One summary row: a claim x model, with one record per protocol measured."""

    claim_id: str
    model: str
    tier: str
    by_protocol: dict[str, VerdictRecord]

    def figure_text(self, protocols: Iterable[str]) -> str:
        """Key figure per protocol vs the expectation, or the reason for UNTESTED."""
        records = [self.by_protocol[p] for p in protocols if p in self.by_protocol]
        if records and all(r.verdict is Verdict.UNTESTED for r in records):
            return records[0].reason
        measured = [r for r in records if r.verdict is not Verdict.UNTESTED]
        first = measured[0]
        keys = {r.key if r.key in r.figures else "" for r in measured}  # "": no key figure reported
        if len(keys) > 1:  # a protocol compared another figure
            text = " | ".join(f"{r.key} = {fmt(r.measured, 24)} ({r.protocol})" if r.key in r.figures
                              else f"rule checked ({r.protocol})" for r in measured)
        elif keys != {""}:
            text = f"{first.key} = " + " | ".join(f"{fmt(r.measured, 24)} ({r.protocol})" for r in measured)
        else:  # no key figure: the decisions themselves, per protocol, in full (the terminal wraps them)
            decided = [f"{r.protocol}: " + "; ".join(e.get("statement", "") for e in r.evidence) for r in measured
                       if r.evidence]
            text = " | ".join(decided) if decided else "rule checked"
        looks = [f"{r.protocol} stopped at look {r.figures['looks']['stopped_at_look']}/"
                 f"{r.figures['looks']['n_looks']} ({r.figures['looks']['history'][-1][0]}/family)"
                 for r in measured if isinstance(r.figures.get("looks"), dict)]
        if looks:
            text = f"[{'; '.join(looks)}] {text}"
        if first.expected is not None and first.tolerance:
            return f"{text} vs seed figure {fmt(first.expected, 24)} {Tolerance(**first.tolerance).describe()}"
        return f"{text}; expected: {first.expectation}"


def summary_rows(records: Iterable[VerdictRecord]) -> list[Row]:
    """Rows sorted by claim and model; seed and rigorous verdicts of one claim x model share a row.

    Records are taken in (claim, model, test, protocol order) order, so the rows do not depend on the order in
    which xdist workers delivered them."""
    rows: list[Row] = []
    open_rows: dict[tuple[str, str], Row] = {}
    order = {p: i for i, p in enumerate(("seed", "rigorous"))}
    for record in sorted(records, key=lambda r: (r.claim_id, r.model, r.test, order.get(r.protocol, 9))):
        row = open_rows.get(record.row_key)
        if row is None or record.protocol in row.by_protocol:  # a repeated protocol starts a new row
            row = Row(record.claim_id, record.model, record.tier, {})
            rows.append(row)
            open_rows[record.row_key] = row
        row.by_protocol[record.protocol] = record
    return rows


def protocols_of(records: Iterable[VerdictRecord]) -> list[str]:
    seen = {r.protocol for r in records}
    return [p for p in ("seed", "rigorous") if p in seen] + sorted(seen - {"seed", "rigorous"})


def table_cells(records: list[VerdictRecord]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table (shared by the terminal summary and report.md)."""
    protocols = protocols_of(records)
    header = ["claim", "model", "tier", *protocols, "key figure vs expectation"]
    body = []
    for row in summary_rows(records):
        verdicts = [row.by_protocol[p].verdict.value if p in row.by_protocol else "-" for p in protocols]
        body.append([row.claim_id, row.model, row.tier, *verdicts, row.figure_text(protocols)])
    return header, body


# ------------------------------------------------------------------------------------------------ markdown


def evidence_key(record: VerdictRecord) -> str:
    """What makes two records' decisions one decision: the same rule on the same data (primitive, per-example data
    and parameters of every evidence; labels aside). Records with no evidence are their own decision."""
    import hashlib

    if not record.evidence:
        return f"record:{record.claim_id}:{record.model}:{record.protocol}:{record.test}"
    parts = [{"primitive": e.get("primitive"), "data": e.get("data"), "params": e.get("params"),
              "outcome": e.get("outcome")} for e in record.evidence]
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def shared_evidence(records: Iterable[VerdictRecord]) -> dict[str, list[VerdictRecord]]:
    """Records grouped by :func:`evidence_key` (a group of 2+ records is one decision reported several times)."""
    groups: dict[str, list[VerdictRecord]] = {}
    for r in records:
        groups.setdefault(evidence_key(r), []).append(r)
    return groups


def decision_summary(records: Iterable[VerdictRecord]) -> str:
    """One line: records and distinct decisions (records sharing one piece of evidence count once), how many of
    each are decided (CONFIRMED / REVISED / FAILED) and INCONCLUSIVE, and the rigorous protocol's distinct share
    apart when both protocols are there. UNTESTED records (a protocol that could not run: its reason says why)
    count in none of them."""
    records = [r for r in records if r.verdict is not Verdict.UNTESTED]
    if not records:
        return "decisions: none (every record UNTESTED)"
    decided = {Verdict.CONFIRMED, Verdict.REVISED, Verdict.FAILED}
    groups = shared_evidence(records)
    n_decided = sum(r.verdict in decided for r in records)
    distinct_decided = sum(any(r.verdict in decided for r in g) for g in groups.values())
    shared = sum(len(g) for g in groups.values() if len(g) > 1)
    text = (f"decisions: {n_decided} of {len(records)} record(s) decided ({n_decided / len(records):.0%}), "
            f"{len(records) - n_decided} INCONCLUSIVE; distinct decisions: {distinct_decided} of {len(groups)} decided "
            f"({distinct_decided / len(groups):.0%})")
    if shared:
        text += f"; {shared} record(s) share their evidence with another record (counted once)"
    rigorous = [g for g in groups.values() if g[0].protocol == "rigorous"]
    if rigorous and len(rigorous) < len(groups):  # the careful re-measurement's own share (#29's target)
        got = sum(any(r.verdict in decided for r in g) for g in rigorous)
        text += f"; rigorous protocol: {got} of {len(rigorous)} distinct decided ({got / len(rigorous):.0%})"
    return text


def recompute_run(run: Run, catalogue: Catalogue) -> list[tuple[VerdictRecord, Verdict | None, str]]:
    """Every record's verdict decided again from its stored evidence: (record, recomputed or None, note)."""
    from engine.verdicts import recompute

    out = []
    for r in run.records:
        if r.claim_id not in catalogue:
            out.append((r, None, f"claim {r.claim_id} is not in {catalogue.path}"))
            continue
        claim = catalogue[r.claim_id]
        note = ""
        if r.catalogue_sha256 and claim.catalogue_sha256 != r.catalogue_sha256:
            note = f"catalogue changed since the run ({r.catalogue_sha256[:12]} -> {claim.catalogue_sha256[:12]})"
        verdict = recompute(r, claim)
        out.append((r, verdict, note or ("no stored evidence: decided by a bare rule" if verdict is None else "")))
    return out


def render_markdown(run: Run) -> str:
    """report.md: provenance, the summary table, changes since the baseline, one paragraph per claim x model."""
    meta = run.meta
    counts = run.counts()
    lines = [f"# MI-Atlas claims run {run.name}", ""]
    lines.append(f"Commit `{meta.get('git_commit', '?')}`, engine {meta.get('engine_version', '?')}, "
                 f"started {meta.get('started', '?')}, {meta.get('duration_s', '?')} s, "
                 f"machine {meta.get('machine', '?')} ({meta.get('platform', '?')}).")
    if meta.get("args") is not None:
        lines.append(f"Pytest arguments: `{' '.join(meta['args']) or '(none)'}`.")
    if meta.get("interrupted"):
        lines += ["", f"**Interrupted run**: it ended before writing {RUN_FILE}; these are the verdicts it had "
                      f"appended to {REGISTRY_FILE}, without a baseline comparison."]
    if meta.get("incomplete"):
        why = "; ".join(map(str, meta.get("incomplete_reasons") or [])) or "it did not finish cleanly"
        lines += ["", f"**Incomplete run** ({_md_cell(why)}): these are the verdicts it made before it ended; "
                      f"`{LATEST}` was not moved to it and `mi-atlas baselines pin` refuses it."]
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".",
              "", decision_summary(run.records) + ".", ""]
    header, body = table_cells(run.records)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for cells in body:
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines += ["", "## Changes since the baseline", ""]
    if meta.get("baseline_updated"):
        lines.append("Baselines were re-pinned by this run (`--claims-update-baseline`).")
        lines.append("")
    gate_meta = meta.get("gate")
    if gate_meta:
        outcome = "passed" if gate_meta.get("passed") else "did not pass"
        lines += [(f"Gate (plan {gate_meta['plan']}, baselines {gate_meta['baselines']}, pinned at "
                   f"{', '.join(gate_meta.get('commits', []))}): {gate_meta['compared']} of {gate_meta['expected']} "
                   f"pinned record(s) compared, {gate_meta['gated']} gated figure(s), {gate_meta['reported_only']} "
                   f"reported-only; {outcome}."), ""]
    missing = [tuple(k) for k in (gate_meta or {}).get("missing", [])]
    not_pinned = [tuple(k) for k in (gate_meta or {}).get("not_pinned", [])]
    if run.changes or missing or not_pinned:
        header, rows = gate_table(run.changes, missing, not_pinned)
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    else:
        lines.append("None: no verdict flipped and no figure moved beyond its tolerance "
                     "(claims without a baseline are not compared).")
    lines += [f"- flag: {_md_cell(flag)}" for flag in (gate_meta or {}).get("flags", [])]
    lines += ["", "## Claims", ""]
    sharing = {}
    for group in shared_evidence(r for r in run.records if r.evidence).values():
        for r in group:
            sharing[id(r)] = [o for o in group if o is not r]
    for row in summary_rows(run.records):
        any_record = next(iter(row.by_protocol.values()))
        lines += [f"### {row.claim_id} · {row.model} ({row.tier})", "", f"*{any_record.statement}*", ""]
        for protocol, record in row.by_protocol.items():
            text = _paragraph(protocol, record)
            others = sharing.get(id(record))
            if others:
                text += (" Shares its evidence (one decision, counted once) with "
                         + ", ".join(f"{o.claim_id} {o.protocol}" for o in others) + ".")
            lines += [text, ""]
    return "\n".join(lines).rstrip() + "\n"


def _paragraph(protocol: str, r: VerdictRecord) -> str:
    text = f"**{protocol} protocol: {r.verdict.value}.** {r.reason}."
    if r.verdict is Verdict.UNTESTED:
        return text
    if r.figures:
        parts = []
        for name, value in r.figures.items():
            ci = f" (95% CI [{fmt(r.ci[name][0])}, {fmt(r.ci[name][1])}])" if name in r.ci else ""
            parts.append(f"{name} = {fmt(value, 200)}{ci}")
        text += " Figures: " + "; ".join(parts) + "."
    extra_ci = [n for n in r.ci if n not in r.figures]
    if extra_ci:
        text += " Intervals: " + "; ".join(f"{n} [{fmt(r.ci[n][0])}, {fmt(r.ci[n][1])}]" for n in extra_ci) + "."
    text += f" Expectation: {r.expectation}."
    for e in r.evidence:
        part = f"{e['part']}: " if e.get("part") else ""
        text += f" Decision ({part}{e.get('primitive')}, n {e.get('n')} over {e.get('n_strata')} families): " \
                f"{e.get('statement')} -> {e.get('outcome')}."
    if r.verdict is Verdict.INCONCLUSIVE and r.n_to_decide:
        text += f" A power projection from the observed variance expects ~{r.n_to_decide} examples per family " \
                f"to decide."
    if r.thresholds:
        text += " Thresholds: " + ", ".join(f"{k} = {fmt(v)}" for k, v in r.thresholds.items()) + "."
    if r.plan:
        text += f" Plan {r.plan}."
    if r.catalogue_sha256:
        text += f" Catalogue sha256 {r.catalogue_sha256[:12]}."
    if r.seeds:
        text += f" Seeds {', '.join(map(str, r.seeds))}."
    if r.suite_hash:
        text += f" Suite {r.suite_hash}."
    text += f" {r.duration_s:.1f} s, commit {r.git_commit}, engine {r.engine_version}, test `{r.test}`."
    if r.notes:
        text += f" {r.notes}"
    return text


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
