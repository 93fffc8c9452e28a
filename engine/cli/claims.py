"""`mi-atlas claims | report | diff | merge`: run the claim suite, re-render a run's report (``report --html``: its
self-contained HTML page), compare two runs, merge another machine's registry.

Thin commands over ``engine.results``; ``register(app)`` mounts them on the ``mi-atlas`` typer app. What they read
is checked before it is used: every record's field types (a wrong-typed run-file or registry entry is one line;
``merge`` refuses it and merges nothing), the stored evidence ``report --recompute`` decides again (a missing field,
a resample count outside 1..100,000), the pytest arguments of ``claims`` (read with pytest's own parser: an
option's value is never a test path). Every error is one line, exit 2 (``engine/cli/_boundary.py``).
"""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from engine import results
from engine.cli._boundary import user_errors
from engine.verdicts import VerdictRecord, load_catalogue

RESULTS_HELP = "results root (runs, registry, baselines); default: ./results if present, else <project>/results"
# The pytest plugins the project's root conftest.py loads (``pytest_plugins``): their options are known when
# ``mi-atlas claims ARGS`` tells an option's value from a test path.
CLAIMS_PLUGINS = ("claims.plugin", "claims.xdist_groups", "claims.progress", "claims.html_extras")
DIRECTORY_OPTIONS = ("claims_results", "claims_baselines")  # pytest option dests that name a directory
MAX_RECOMPUTE_RESAMPLES = 100_000  # report --recompute: Monte Carlo sign patterns per interval, at most


def claims_dir() -> Path:
    """The ``claims/`` package directory, installed beside ``engine/`` (its parent holds conftest.py).

    Found by path, not imported: the engine never imports the pytest layer above it.
    """
    import engine

    return Path(engine.__file__).resolve().parent.parent / "claims"


def default_results_root() -> Path:
    """Where `mi-atlas claims` writes: ``./results`` when it exists, else the project root's ``results/``."""
    here = Path("results")
    return here if here.is_dir() else claims_dir().parent / "results"


def exists(path: str | Path) -> bool:
    """``Path(path).exists()``, False for a name the system cannot even look up (too long, a NUL byte)."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def parse_pytest_args(args: Sequence[str]) -> tuple[list[str], dict[str, Any], list[str]] | None:
    """Split pytest ``args`` as pytest itself will: (test paths / node ids, option values by dest, unknown
    options). Read with pytest's own parser and the options of its installed plugins and of the claims plugins, so
    an option's value (``--claims-results out``, ``-k expr``, ``-n 2``) is never taken for a test path. None when
    the parser cannot be built (pytest then decides alone)."""
    try:
        from _pytest.config import get_config

        config = get_config()
        config.pluginmanager.load_setuptools_entrypoints("pytest11")
        for name in CLAIMS_PLUGINS:
            config.pluginmanager.import_plugin(name)
        namespace, unknown = config._parser.parse_known_and_unknown_args(list(args))
    except Exception:  # a pytest whose internals moved, a plugin that fails to import: pytest reports it itself
        return None
    options = vars(namespace)
    return [str(a) for a in options.pop("file_or_dir", None) or []], options, list(unknown)


def _names_tests(arg: str) -> bool:
    return "::" in arg or exists(arg)


_UNPARSED = object()


def pytest_command(args: list[str], parsed=_UNPARSED) -> list[str]:
    """The pytest command line for ``mi-atlas claims ARGS``: the claims/ suite unless ARGS name tests (paths or
    node ids; an option's value is not one: ``--claims-results out`` with an existing ``out/`` runs the suite).
    ``parsed``: :func:`parse_pytest_args`'s answer for ``args``, when the caller has it."""
    parsed = parse_pytest_args(args) if parsed is _UNPARSED else parsed
    if parsed is not None:
        names_tests = bool(parsed[0])
    else:  # the old reading: any non-option word that is a path or a node id
        names_tests = any(_names_tests(arg) for arg in args if not arg.startswith("-"))
    return [sys.executable, "-m", "pytest", *([] if names_tests else [str(claims_dir())]), *args]


def check_claims_args(args: Sequence[str], parsed=_UNPARSED) -> None:
    """Refuse, as one line (``ValueError``), before any claim runs: a test path that does not exist and a results
    or baselines directory that is a file. Left to pytest when its parser cannot be built or an option is not
    known (its value could be read as a test path)."""
    parsed = parse_pytest_args(args) if parsed is _UNPARSED else parsed
    if parsed is None:
        return
    paths, options, unknown = parsed
    for dest in DIRECTORY_OPTIONS:
        value = options.get(dest)
        if value and exists(value) and not Path(value).is_dir():
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} {value}: a file, not a directory; give a directory (created if missing)")
    if unknown or options.get("pyargs"):
        return
    for arg in paths:
        if not exists(arg.split("::")[0]):
            raise ValueError(f"claims: {arg}: no such test file or directory (arguments after `claims` are pytest "
                             "options, test paths or node ids)")


def run_claims(args: list[str]) -> int:
    """Run the claim suite with extra pytest ``args``; returns pytest's exit code."""
    parsed = parse_pytest_args(args)
    check_claims_args(args, parsed)
    return subprocess.call(pytest_command(args, parsed))


# ------------------------------------------------------------------------------------------------ run files


def _type_matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_type_matches(value, h) for h in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    cls = typing.get_origin(hint) or hint
    return isinstance(value, cls) if isinstance(cls, type) else True


def check_record(record: VerdictRecord, where: str) -> VerdictRecord:
    """``record`` with every field of the type ``VerdictRecord`` declares (evidence: a list of objects), else a
    one-line ``ValueError`` naming ``where`` and the field."""
    hints = typing.get_type_hints(VerdictRecord)
    for name, hint in hints.items():
        value = getattr(record, name)
        if not _type_matches(value, hint):
            raise ValueError(f"{where}: field {name!r} is {type(value).__name__} {str(value)[:40]!r}, not the "
                             f"{getattr(hint, '__name__', None) or str(hint).replace('typing.', '')} a verdict "
                             "record holds")
    for i, evidence in enumerate(record.evidence):
        if not isinstance(evidence, Mapping):
            raise ValueError(f"{where}: field 'evidence' item {i} is {type(evidence).__name__}, not an object")
    return record


def _where(record: VerdictRecord) -> str:
    return f"{record.claim_id} {record.model} [{record.protocol}]"


def load_checked_run(root: Path, which: str | None) -> results.Run:
    """``results.load_run`` with every record's field types checked: a wrong-typed entry of a run file (or of the
    registry lines an interrupted run is rebuilt from) is a one-line ``ValueError`` naming the run and record."""
    try:
        run = results.load_run(root, which)
    except RecursionError:
        raise ValueError(f"run {which or results.LATEST}: not a claims run (JSON nested too deeply to read)") from None
    except (KeyError, TypeError, AttributeError, IndexError) as exc:  # a wrong-typed line the loader tripped on
        raise ValueError(f"run {which or results.LATEST}: not a claims run ({type(exc).__name__}: {exc})") from None
    for i, record in enumerate(run.records):
        check_record(record, f"run {run.name}: record {i + 1}")
    return run


def _rendered(what: str, run: results.Run, render):
    """``render()``, a data error it trips on (a field of the wrong shape inside a record) as one line."""
    try:
        return render()
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"run {run.name}: {what} failed on a malformed record ({type(exc).__name__}: "
                         f"{str(exc)[:120]})") from None


def render_report(run: str | None = None, root: Path | None = None) -> str:
    """Re-render ``report.md`` of a run (default: latest) from its claims.json; returns the markdown. Written back
    when the run directory can be written; else one warning on stderr (the report is still returned)."""
    root = default_results_root() if root is None else root
    directory = results.run_dir(root, run)
    loaded = load_checked_run(root, str(directory))
    text = _rendered("rendering the report", loaded, lambda: results.render_markdown(loaded))
    try:
        results.write_atomic(directory / results.REPORT_FILE, text)
    except OSError as exc:
        typer.echo(f"warning: report not written to {directory / results.REPORT_FILE} "
                   f"({exc.strerror or exc}); printed only", err=True)
    return text


def diff_text(run_a: str, run_b: str, root: Path | None = None, catalogue: Path | None = None) -> str:
    """Verdict flips and moved figures from run A to run B, one line each, plus claims only in one run."""
    return diff_runs(run_a, run_b, root, catalogue)[0]


def diff_runs(run_a: str, run_b: str, root: Path | None = None,
              catalogue: Path | None = None) -> tuple[str, list[results.Change]]:
    """The diff text and the changes (flips and figures moved beyond tolerance) from run A to run B."""
    root = default_results_root() if root is None else root
    a, b = load_checked_run(root, run_a), load_checked_run(root, run_b)
    claims = load_catalogue(catalogue)
    changes = _rendered(f"the diff with run {a.name}", b, lambda: results.diff_runs(a, b, claims))
    keys_a = {(r.claim_id, r.model, r.protocol) for r in a.records}
    keys_b = {(r.claim_id, r.model, r.protocol) for r in b.records}
    lines = [f"diff {a.name} -> {b.name}"]
    lines += [f"  {c.describe()}" for c in changes]
    lines += [f"  ONLY-A {c} {m} [{p}]" for c, m, p in sorted(keys_a - keys_b)]
    lines += [f"  ONLY-B {c} {m} [{p}]" for c, m, p in sorted(keys_b - keys_a)]
    if len(lines) == 1:
        lines.append("  no verdict or figure changed beyond tolerance")
    return "\n".join(lines), changes


def check_recomputable(record: VerdictRecord, where: str) -> None:
    """The stored evidence's resample counts within 1..MAX_RECOMPUTE_RESAMPLES (an absurd count would ask for more
    memory than any machine has), else a one-line ``ValueError``."""
    for i, evidence in enumerate(record.evidence):
        params = evidence.get("params")
        if params is None:
            continue
        if not isinstance(params, Mapping):
            raise ValueError(f"{where}: evidence {i} 'params' is {type(params).__name__}, not an object")
        n = params.get("n_resamples")
        if n is None:
            continue
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_RECOMPUTE_RESAMPLES:
            raise ValueError(f"{where}: evidence {i} asks for n_resamples={str(n)[:40]}, outside "
                             f"1..{MAX_RECOMPUTE_RESAMPLES}: the run file is damaged or was edited")


def check_registry_types(source: Path) -> None:
    """Refuse a registry to merge (one-line ``ValueError``, nothing merged) when one of its complete JSON lines is
    a verdict record with a field of the wrong type (``"verdict": 3``, ``"figures": "x"``): such a line is not
    kept out of the registry by ``results.merge_registry``'s checks. Torn or malformed lines are left to those
    checks (each reported, skipped)."""
    import json

    from engine.verdicts import ClaimError

    source = Path(source)
    path = source / results.REGISTRY_FILE if source.is_dir() else source
    if not path.is_file():
        return  # merge_registry names it
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                break
            try:
                data = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not isinstance(data, dict):
                continue  # reported and skipped by the merge
            try:
                record = VerdictRecord.from_dict(data)
            except (ClaimError, ValueError, TypeError, AttributeError):
                continue  # reported and skipped by the merge
            check_record(record, f"{path}:{number} (nothing merged)")


# ------------------------------------------------------------------------------------------------ typer


def claims_command(ctx: typer.Context) -> None:
    """Run the claim suite: `mi-atlas claims -m "cpu" -n 2` passes everything after `claims` to pytest."""
    with user_errors():
        code = run_claims(list(ctx.args))
    raise typer.Exit(code)


def recompute_text(run: str | None = None, root: Path | None = None,
                   catalogue: Path | None = None) -> tuple[str, int]:
    """Each verdict of a run decided again from its stored evidence; (text, number of verdicts that differ).
    Evidence that cannot be decided again (a missing field, an absurd resample count) is a one-line
    ``ValueError`` naming the record."""
    root = default_results_root() if root is None else root
    loaded = load_checked_run(root, str(results.run_dir(root, run)))
    claims = load_catalogue(catalogue)
    rows = []
    for record in loaded.records:
        where = f"run {loaded.name}: {_where(record)}"
        check_recomputable(record, where)
        try:
            rows += results.recompute_run(results.Run(loaded.name, loaded.meta, [record]), claims)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            what = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else \
                f"{type(exc).__name__}: {str(exc)[:120]}"
            raise ValueError(f"{where}: its stored evidence cannot be decided again ({what})") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    lines, differ, same = [f"recompute {loaded.name}"], 0, 0
    for record, verdict, note in rows:
        where = _where(record)
        if verdict is None:
            if record.verdict.value != "UNTESTED":
                lines.append(f"  NOT RECOMPUTABLE {where}: {note}")
        elif verdict is record.verdict:
            same += 1
        else:
            differ += 1
            lines.append(f"  DIFFERS {where}: recorded {record.verdict.value}, recomputed {verdict.value} {note}")
    lines.append(f"  {same} verdict(s) recomputed identically, {differ} differ")
    return "\n".join(lines), differ


def render_html_report(run: str | None = None, root: Path | None = None, out: Path | None = None) -> Path:
    """Write the run's self-contained page (``report.html``, :mod:`engine.report_html`) from its claims.json into
    the run directory (or ``out``); returns the path written."""
    from engine import report_html

    root = default_results_root() if root is None else root
    directory = results.run_dir(root, run)
    loaded = load_checked_run(root, str(directory))
    text = _rendered("rendering the HTML page", loaded, lambda: report_html.render_page(loaded))
    path = Path(out) if out is not None else directory / report_html.PAGE_FILE
    if path.is_dir():
        path = path / report_html.PAGE_FILE
    try:
        results.write_atomic(path, text)
    except OSError as exc:
        raise ValueError(f"{path}: the HTML page could not be written ({exc.strerror or exc}); give --out "
                         "a writable file") from None
    return path


def report_command(run: str = typer.Argument(None, help="run name or directory (default: latest)"),
                   results_root: Path = typer.Option(None, "--results", help=RESULTS_HELP),
                   recompute: bool = typer.Option(False, "--recompute", help="decide every verdict again from the "
                                                  "per-example data stored in the run; exit 1 if one differs"),
                   catalogue: Path = typer.Option(None, help="claims catalogue (default: the packaged one)"),
                   as_html: bool = typer.Option(False, "--html", help="write the run's self-contained HTML page "
                                                "(report.html in the run directory, or --out) instead of printing "
                                                "report.md"),
                   out: Path = typer.Option(None, "--out", help="with --html: where to write the page (a file, or "
                                            "a directory for report.html)")) -> None:
    """Re-render a run's report.md from its claims.json and print it (or, with --recompute, re-decide it; with
    --html, write its HTML page); a run directory that cannot be written: the report is printed, with one warning."""
    with user_errors():  # also where these commands are mounted on another app
        if as_html:
            typer.echo(f"wrote {render_html_report(run, results_root, out)}")
            return
        if out is not None:
            raise ValueError("--out goes with --html (report.md is printed)")
        if recompute:
            text, differ = recompute_text(run, results_root, catalogue)
            typer.echo(text)
            raise typer.Exit(1 if differ else 0)
        typer.echo(render_report(run, results_root), nl=False)


def diff_command(run_a: str = typer.Argument(..., help="earlier run (name or directory)"),
                 run_b: str = typer.Argument(..., help="later run (name or directory)"),
                 results_root: Path = typer.Option(None, "--results", help=RESULTS_HELP),
                 catalogue: Path = typer.Option(None, help="claims catalogue for figure tolerances"),
                 fail_on_change: bool = typer.Option(False, "--fail-on-change",
                                                     help="exit 1 when a verdict flipped or a figure moved")) -> None:
    """Show verdict flips and figures moved beyond tolerance between two runs."""
    with user_errors():
        text, changes = diff_runs(run_a, run_b, results_root, catalogue)
    typer.echo(text)
    if fail_on_change and changes:
        raise typer.Exit(1)


def merge_command(source: Path = typer.Argument(..., help="another machine's registry.jsonl (or its results dir)"),
                  results_root: Path = typer.Option(None, "--results", help=RESULTS_HELP)) -> None:
    """Append another machine's verdict registry to this one: whole lines only, torn lines reported, no duplicates."""
    root = Path(results_root) if results_root else default_results_root()
    with user_errors():
        check_registry_types(source)
        appended, duplicate, problems = results.merge_registry(root, source)
    shown = 10  # every problem names its line; past ten, the count says how many more
    for problem in problems[:shown]:
        typer.echo(f"warning: {problem}", err=True)
    if len(problems) > shown:
        typer.echo(f"warning: ... and {len(problems) - shown} more line(s) skipped", err=True)
    typer.echo(f"{appended} verdict line(s) appended to {root / results.REGISTRY_FILE}, {duplicate} already present"
               + (f", {len(problems)} skipped" if problems else ""))


def compact_command(results_root: Path = typer.Option(None, "--results", help=RESULTS_HELP)) -> None:
    """Shrink the verdict registry: a line whose run's claims.json holds the same record keeps only its index fields."""
    root = Path(results_root) if results_root else default_results_root()
    with user_errors():
        compacted, whole, before, after = results.compact_registry(root)
    typer.echo(f"{root / results.REGISTRY_FILE}: {compacted} line(s) compacted (their records are in their runs' "
               f"{results.RUN_FILE}), {whole} kept whole; {before} -> {after} bytes")


def register(app: typer.Typer) -> None:
    """Add `claims`, `report`, `diff`, `merge` and `compact` to the `mi-atlas` app."""
    app.command("claims", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                            "help_option_names": []})(claims_command)
    app.command("report")(report_command)
    app.command("diff")(diff_command)
    app.command("merge")(merge_command)
    app.command("compact")(compact_command)
