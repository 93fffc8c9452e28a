"""`mi-atlas claims | report | diff`: run the claim suite, re-render a run's report, compare two runs.

Thin commands over ``engine.results``; ``register(app)`` mounts them on the ``mi-atlas`` typer app.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from engine import results
from engine.verdicts import load_catalogue

RESULTS_HELP = "results root (runs, registry, baselines); default: ./results if present, else <project>/results"


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


def pytest_command(args: list[str]) -> list[str]:
    """The pytest command line for ``mi-atlas claims ARGS``: the claims/ suite unless ARGS name tests."""
    names_tests = any("::" in arg or Path(arg.split("::")[0]).exists() for arg in args if not arg.startswith("-"))
    return [sys.executable, "-m", "pytest", *([] if names_tests else [str(claims_dir())]), *args]


def run_claims(args: list[str]) -> int:
    """Run the claim suite with extra pytest ``args``; returns pytest's exit code."""
    return subprocess.call(pytest_command(args))


def render_report(run: str | None = None, root: Path | None = None) -> str:
    """Re-render ``report.md`` of a run (default: latest) from its claims.json; returns the markdown."""
    root = default_results_root() if root is None else root
    directory = results.run_dir(root, run)
    loaded = results.load_run(root, str(directory))
    text = results.render_markdown(loaded)
    results.write_atomic(directory / results.REPORT_FILE, text)
    return text


def diff_text(run_a: str, run_b: str, root: Path | None = None, catalogue: Path | None = None) -> str:
    """Verdict flips and moved figures from run A to run B, one line each, plus claims only in one run."""
    return diff_runs(run_a, run_b, root, catalogue)[0]


def diff_runs(run_a: str, run_b: str, root: Path | None = None,
              catalogue: Path | None = None) -> tuple[str, list[results.Change]]:
    """The diff text and the changes (flips and figures moved beyond tolerance) from run A to run B."""
    root = default_results_root() if root is None else root
    a, b = results.load_run(root, run_a), results.load_run(root, run_b)
    changes = results.diff_runs(a, b, load_catalogue(catalogue))
    keys_a = {(r.claim_id, r.model, r.protocol) for r in a.records}
    keys_b = {(r.claim_id, r.model, r.protocol) for r in b.records}
    lines = [f"diff {a.name} -> {b.name}"]
    lines += [f"  {c.describe()}" for c in changes]
    lines += [f"  ONLY-A {c} {m} [{p}]" for c, m, p in sorted(keys_a - keys_b)]
    lines += [f"  ONLY-B {c} {m} [{p}]" for c, m, p in sorted(keys_b - keys_a)]
    if len(lines) == 1:
        lines.append("  no verdict or figure changed beyond tolerance")
    return "\n".join(lines), changes


# ------------------------------------------------------------------------------------------------ typer


def claims_command(ctx: typer.Context) -> None:
    """Run the claim suite: `mi-atlas claims -m "cpu" -n 2` passes everything after `claims` to pytest."""
    raise typer.Exit(run_claims(list(ctx.args)))


def recompute_text(run: str | None = None, root: Path | None = None,
                   catalogue: Path | None = None) -> tuple[str, int]:
    """Each verdict of a run decided again from its stored evidence; (text, number of verdicts that differ)."""
    root = default_results_root() if root is None else root
    loaded = results.load_run(root, str(results.run_dir(root, run)))
    rows = results.recompute_run(loaded, load_catalogue(catalogue))
    lines, differ, same = [f"recompute {loaded.name}"], 0, 0
    for record, verdict, note in rows:
        where = f"{record.claim_id} {record.model} [{record.protocol}]"
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


def report_command(run: str = typer.Argument(None, help="run name or directory (default: latest)"),
                   results_root: Path = typer.Option(None, "--results", help=RESULTS_HELP),
                   recompute: bool = typer.Option(False, "--recompute", help="decide every verdict again from the "
                                                  "per-example data stored in the run; exit 1 if one differs"),
                   catalogue: Path = typer.Option(None, help="claims catalogue (default: the packaged one)")) -> None:
    """Re-render a run's report.md from its claims.json and print it (or, with --recompute, re-decide it)."""
    try:
        if recompute:
            text, differ = recompute_text(run, results_root, catalogue)
            typer.echo(text)
            raise typer.Exit(1 if differ else 0)
        typer.echo(render_report(run, results_root), nl=False)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def diff_command(run_a: str = typer.Argument(..., help="earlier run (name or directory)"),
                 run_b: str = typer.Argument(..., help="later run (name or directory)"),
                 results_root: Path = typer.Option(None, "--results", help=RESULTS_HELP),
                 catalogue: Path = typer.Option(None, help="claims catalogue for figure tolerances"),
                 fail_on_change: bool = typer.Option(False, "--fail-on-change",
                                                     help="exit 1 when a verdict flipped or a figure moved")) -> None:
    """Show verdict flips and figures moved beyond tolerance between two runs."""
    try:
        text, changes = diff_runs(run_a, run_b, results_root, catalogue)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(text)
    if fail_on_change and changes:
        raise typer.Exit(1)


def merge_command(source: Path = typer.Argument(..., help="another machine's registry.jsonl (or its results dir)"),
                  results_root: Path = typer.Option(None, "--results", help=RESULTS_HELP)) -> None:
    """Append another machine's verdict registry to this one: whole lines only, torn lines reported, no duplicates."""
    root = Path(results_root) if results_root else default_results_root()
    try:
        appended, duplicate, problems = results.merge_registry(root, source)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    typer.echo(f"{appended} verdict line(s) appended to {root / results.REGISTRY_FILE}, {duplicate} already present")


def register(app: typer.Typer) -> None:
    """Add `claims`, `report`, `diff` and `merge` to the `mi-atlas` app."""
    app.command("claims", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                            "help_option_names": []})(claims_command)
    app.command("report")(report_command)
    app.command("diff")(diff_command)
    app.command("merge")(merge_command)
