"""Progress a person can follow: one line per measurement as it starts and ends, and a time table at the end.

Registered from the root ``conftest.py`` next to ``claims.plugin``. The measurements are the session's ledger
(:mod:`engine.progress`: every content-addressed cache entry a claim asks for). Without ``-s``, in default
pytest output::

    [measure] start  atlas smollm2-135m n=120   for HUB-SMOL[smollm2-135m]        plan default: ETA 9m40s
    [measure] done   atlas smollm2-135m n=120   34.2 s computed                   plan default: ETA 9m06s
    [measure] cached atlas smollm2-135m n=120   for HUB-SEEDS[smollm2-135m]

The ETA is the plan's remaining time as the last session of the same plan measured it (``<results>/bench/
plan-<plan>-timings.json``, written at the end of every claims session; "ETA unknown" on a plan's first run).
Under pytest-xdist each worker writes its lines (prefixed by its id) to the terminal's stderr and sends its
ledger to the controller, which prints one time table (claim sessions only; unit tests stay quiet): per measurement (computed / cached, seconds, the claims
that used it) and per claim. ``--no-progress`` turns the lines off (the table stays).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine import progress
from engine.files import write_atomic
from engine.provenance import cpu_identity

LEDGER = pytest.StashKey[list]()
EXPECTED = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("mi-atlas claims").addoption(
        "--no-progress", action="store_true", help="no [measure] line per measurement (the time table stays)")


def _plan(config: pytest.Config) -> str:
    from claims.plugin import settings

    return settings(config).session_plan


def _timings_path(config: pytest.Config) -> Path:
    from claims.plugin import settings

    return settings(config).results / "bench" / f"plan-{_plan(config)}-timings.json"


def timings_source(config: pytest.Config) -> Path:
    """Where the ETA's timings are read: this results directory's, else the repository's committed ones (a run
    writing to a fresh directory, e.g. CI's, still gets an ETA)."""
    own = _timings_path(config)
    committed = Path(str(config.rootpath)) / "results" / "bench" / own.name
    return own if own.is_file() or not committed.is_file() else committed


_CLAIM_CONTEXT = re.compile(r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)*\[")  # "HUB-SMOL[smollm2-135m]"


def _claims_ran(entries: list[progress.Entry]) -> bool:
    """Some measurement was asked for by a claim test (only then are a plan's timings worth keeping)."""
    return any(_CLAIM_CONTEXT.match(e.context) for e in entries)


class Progress:
    def __init__(self, config: pytest.Config):
        self.config = config
        self.worker = getattr(config, "workerinput", {}).get("workerid")
        # what -> the seconds of each measurement so described when the plan last computed them (several
        # measurements share a description, e.g. one atlas per seed), and the claims that asked for them then
        self.expected: dict[str, list[float]] = {}
        self.users: dict[str, set[str]] = {}
        self.done: Counter = Counter()  # what -> measurements so described that ended (computed or cached)
        from engine.planner import read_timings

        # None: no file, or a malformed one (one warning, from the controller or the only process)
        data = read_timings(timings_source(config), warn=self.worker is None)
        self.timed_under = (data or {}).get("plan_sha256")  # the sizes the timings were measured under
        self.timed_on = _other_cpu((data or {}).get("cpu"))  # "": the same CPU, or the timings do not say
        self.stale = False  # set by select(): the plan's sizes differ from the timed ones
        for m in (data or {}).get("measurements", []):
            if m["computed"]:
                self.expected.setdefault(m["what"], []).append(float(m["seconds"]))
                self.users.setdefault(m["what"], set()).update(m.get("claims", []))
        self.show = not config.getoption("--no-progress")

    def select(self, claims: set[str]) -> str:
        """Keep the expected measurements of the collected claims; the plan's header line."""
        if self.expected:
            self.expected = {w: s for w, s in self.expected.items() if self.users.get(w, set()) & claims}
        count, total = sum(map(len, self.expected.values())), sum(map(sum, self.expected.values()))
        now = _fingerprint(_plan(self.config))
        self.stale = bool(self.expected and self.timed_under and now) and self.timed_under != now
        known = (f"{count} measurement(s) to compute, {_duration(total)} of compute when "
                 f"last timed" if self.expected else "no timings yet (the ETA starts with the next run)")
        if self.stale:
            known += (" under other sizes of this plan: the ETA may be off either way (a measurement added since is "
                      "not in it, one dropped still is)")
        elif self.expected and not self.timed_under:
            known += " (by a session that did not record the plan's sizes: the ETA cannot tell if they changed)"
        if self.expected and self.timed_on:
            known += (f"; timed on another CPU ({self.timed_on}): a half-precision measurement (the quant studies' "
                      "bf16 / NF4 forwards) can take several times as long on a CPU without native bf16")
        return f"[measure] plan {_plan(self.config)}: {len(claims)} claim test(s); {known}"

    def eta(self) -> str:
        if not self.expected:
            return f"plan {_plan(self.config)}: ETA unknown (no timings yet)"
        total = sum(map(sum, self.expected.values()))
        left = sum(sum(sorted(s)[:max(0, len(s) - self.done[what])]) for what, s in self.expected.items())
        # an xdist worker sees its own measurements end: the others are taken to progress at its pace
        workers = int(getattr(self.config, "workerinput", {}).get("workercount", 1) or 1)
        wall = max(0.0, total - workers * (total - left)) / workers
        notes = ([f"{workers} workers"] if workers > 1 else []) + (["timed under other sizes"] if self.stale else []) \
            + (["timed on another CPU"] if self.timed_on else [])
        return f"plan {_plan(self.config)}: ETA {_duration(wall)}" + (f" ({', '.join(notes)})" if notes else "")

    def __call__(self, event: str, entry: progress.Entry) -> None:
        if event == "end" and entry.source in ("computed", "cached"):
            self.done[entry.what] += 1
        if not self.show or not _CLAIM_CONTEXT.match(entry.context):  # unit tests' measurements stay quiet
            return
        pad = "  " * entry.depth
        if event == "start":
            what = f"{entry.stage} {entry.what}" if entry.stage else entry.what
            line = f"[measure] start  {pad}{what:<40} for {entry.context or '-':<36} {self.eta()}"
        elif entry.source == "cached":
            line = f"[measure] cached {pad}{entry.what:<40} for {entry.context or '-'}"
        else:
            line = f"[measure] {entry.source:<6} {pad}{entry.what:<40} {entry.seconds:8.1f} s{'':<27} {self.eta()}"
        self.write(line)

    def write(self, line: str) -> None:
        if self.worker is not None:  # an xdist worker: its output never reaches the user; the controller tails it
            folder = self.config.workerinput.get(PROGRESS_DIR)
            if folder:
                with open(Path(folder) / f"{self.worker}.log", "a", encoding="utf-8") as log:
                    log.write(f"[{self.worker}] {line}\n")
            return
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if tr is None:
            return
        if capman is not None:
            with capman.global_and_fixture_disabled():
                tr.write_line(line)
        else:
            tr.write_line(line)


PROGRESS_DIR = "mi_atlas_progress_dir"


class Tail(threading.Thread):
    """The controller's side under xdist: prints the workers' progress lines as they are written."""

    def __init__(self, folder: Path):
        super().__init__(name="mi-atlas-progress", daemon=True)
        self.folder, self.offsets, self.stopping = folder, {}, threading.Event()

    def poll(self) -> None:
        for log in sorted(self.folder.glob("*.log")):
            with open(log, encoding="utf-8") as f:
                f.seek(self.offsets.get(log, 0))
                text = f.read()
            done = text.rfind("\n") + 1  # complete lines only
            if done:
                self.offsets[log] = self.offsets.get(log, 0) + len(text[:done].encode("utf-8"))
                sys.__stderr__.write(text[:done])
                sys.__stderr__.flush()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.poll()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=2)
        self.poll()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    folder = getattr(node.config, "_mi_atlas_progress_dir", None)
    if folder is not None:
        node.workerinput[PROGRESS_DIR] = str(folder)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and (getattr(config.option, "numprocesses", None)
                                               or getattr(config.option, "dist", "no") != "no"):  # xdist controller
        config._mi_atlas_progress_dir = Path(tempfile.mkdtemp(prefix="mi-atlas-progress-"))  # type: ignore
        config._mi_atlas_tail = Tail(config._mi_atlas_progress_dir)  # type: ignore[attr-defined]
        config._mi_atlas_tail.start()  # type: ignore[attr-defined]
    listener = Progress(config)
    config.stash[LEDGER] = []
    config._mi_atlas_progress = listener  # type: ignore[attr-defined]
    progress.subscribe(listener)


def pytest_unconfigure(config: pytest.Config) -> None:
    listener = getattr(config, "_mi_atlas_progress", None)
    if listener is not None:
        progress.unsubscribe(listener)
    tail = getattr(config, "_mi_atlas_tail", None)
    if tail is not None:
        tail.stop()
        shutil.rmtree(tail.folder, ignore_errors=True)


def _claim_name(item: pytest.Item) -> str | None:
    from claims.plugin import TARGET

    target = item.stash.get(TARGET, None)
    return f"{target.claim.id}[{target.model}]" if target is not None else None


def pytest_collection_finish(session: pytest.Session) -> None:
    listener = getattr(session.config, "_mi_atlas_progress", None)
    claims = {name for name in map(_claim_name, session.items) if name}
    if listener is not None and claims and listener.show:
        line = listener.select(claims)
        if listener.worker is None or listener.worker == "gw0":  # one header line under xdist
            listener.write(line)
            listener.write(session_plan(session).summary())
            line = _budget_line(session)
            if line:
                listener.write(line)


def _budget_line(session: pytest.Session) -> str:
    """The session plan's budget line (``engine.budget.summary``) for a session with cpu claims; "" otherwise."""
    from claims.plugin import TARGET
    from engine import budget

    if not any(getattr(item.stash.get(TARGET, None), "tier", None) == "cpu" for item in session.items):
        return ""
    return budget.summary(_plan(session.config))


def session_plan(session: pytest.Session):
    """The planner's view of the collected claim tests (``engine.planner``): every declared measurement once, the
    claims reading each, as each row's template declares them (``engine.templates``) under the session's plan."""
    from claims.plugin import CATALOGUE, TARGET, settings
    from engine import planner, plans, templates

    tests, cpu = [], False
    for item in session.items:
        target = item.stash.get(TARGET, None)
        if target is not None:
            ctx = templates.ClaimContext(target.claim, target.models, target.tier, settings(session.config))
            tests.append((f"{target.claim.id}[{target.model}]", templates.declared(ctx)))
            cpu = cpu or target.tier == "cpu"
    out = planner.plan(_plan(session.config), tests)
    catalogue = session.config.stash.get(CATALOGUE, None)
    if cpu and catalogue is not None:  # a cpu session says which cpu models its plan leaves out, and who runs them
        out.left_out = plans.left_out(out.name, catalogue.cpu_models)
    return out


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    """Measurements made by fixtures (e.g. a LoRA bench) count for the claim too."""
    with progress.context(_claim_name(item) or item.nodeid.split("::")[-1]):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    name = _claim_name(item)
    if name is not None:
        item.config._mi_atlas_claims_ran = True  # type: ignore[attr-defined]
    with progress.context(name or item.nodeid.split("::")[-1]):
        return (yield)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    entries = [e.to_dict() for e in progress.ledger()]
    if hasattr(config, "workeroutput"):  # xdist worker: the controller prints and writes
        config.workeroutput["mi_atlas_ledger"] = json.dumps(entries)
        config.workeroutput["mi_atlas_claims_ran"] = getattr(config, "_mi_atlas_claims_ran", False)
        return
    config.stash[LEDGER].extend(entries)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    data = getattr(node, "workeroutput", {}).get("mi_atlas_ledger")
    if data:
        node.config.stash[LEDGER].extend(json.loads(data))
    if getattr(node, "workeroutput", {}).get("mi_atlas_claims_ran"):
        node.config._mi_atlas_claims_ran = True


def _entries(config: pytest.Config) -> list[progress.Entry]:
    return [progress.Entry(**e) for e in config.stash.get(LEDGER, [])]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    entries = _entries(config)
    if not _claims_ran(entries):
        return
    tab = progress.table(entries)
    tr = terminalreporter
    tr.section("mi-atlas measurements")
    computed = [m for m in tab["measurements"] if m["computed"]]
    total = sum(m["seconds"] for m in computed if m["computed"])
    twice = [m for m in tab["measurements"] if m["computed"] > 1]
    tr.write_line(f"{len(tab['measurements'])} measurement(s): {len(computed)} computed ({_duration(total)}), "
                  f"{sum(m['cached'] for m in tab['measurements'])} cache hit(s); plan {_plan(config)}"
                  + (f"; computed more than once: {len(twice)}" if twice else ""))
    tr.write_line(f"{'measurement':<44} {'computed':>8} {'cached':>6} {'seconds':>9}  claims")
    for m in sorted(tab["measurements"], key=lambda m: -m["seconds"]):
        tr.write_line(f"{m['what']:<44} {m['computed']:>8} {m['cached']:>6} {m['seconds']:>9.1f}  "
                      f"{', '.join(m['claims'])}")
    tr.write_line(f"{'claim':<44} {'computed':>8} {'cached':>6} {'seconds':>9}")
    for c in tab["claims"]:
        tr.write_line(f"{c['claim']:<44} {c['computed']:>8} {c['cached']:>6} {c['seconds']:>9.1f}")
    if computed and getattr(config, "_mi_atlas_claims_ran", False):  # a claims session (never the unit tests)
        path = _timings_path(config)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({"plan": _plan(config), "plan_sha256": _fingerprint(_plan(config)),
                                           "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                           "cpu": cpu_identity(),
                                           "atlas_work": _atlas_work(_plan(config)), **tab}, indent=1, sort_keys=True))
            tr.write_line(f"timings of plan {_plan(config)}: {path}")
        except OSError as exc:
            tr.write_line(f"timings not written ({path}: {exc.strerror or exc})")


def _other_cpu(timed: Any) -> str:
    """"<timings' CPU> vs this host's" when the CPU a timings file was measured on is recorded and is not this
    host's (model name or SIMD flags from /proc/cpuinfo differ); "" otherwise. A run on an AMD EPYC / AVX2 host
    took 2.7x+ the quant studies' time measured on the host of run df4ff7d, and about the same for the rest."""
    if not isinstance(timed, dict) or not (timed.get("cpu") or timed.get("simd")):
        return ""
    here = cpu_identity()
    if all(timed.get(k) == here.get(k) for k in ("cpu", "simd")):
        return ""
    return (f"{timed.get('cpu') or '?'} [{timed.get('simd') or '?'}]; this host "
            f"{here.get('cpu') or '?'} [{here.get('simd') or '?'}]")


def _fingerprint(plan: str) -> str:
    """The plan's sizes fingerprint (``engine.plans.fingerprint``); "" when the plans file cannot say."""
    from engine.plans import PlanError, fingerprint

    try:
        return fingerprint(plan)
    except PlanError:
        return ""


def _atlas_work(plan: str) -> dict:
    """Each model's atlas work under ``plan`` as this session ran it (``engine.planner.atlas_work``), for the timings
    file; {} when the plans or the catalogue cannot say (a user's files): the timings are written all the same."""
    from engine.planner import atlas_work
    from engine.plans import PlanError
    from engine.verdicts import ClaimError

    try:
        return atlas_work(plan)
    except (PlanError, ClaimError):
        return {}


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
