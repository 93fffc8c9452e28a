"""`mi-atlas suite generate | stats | validate`: the task suite in fixtures/ from the command line.

Thin commands over ``engine.tasks.generate`` and ``engine.tasks``; ``register(app)`` mounts them on the
``mi-atlas`` typer app as the ``suite`` sub-command.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

suite_app = typer.Typer(help="The task suite (fixtures/): generate it, count it, measure a model's baseline, "
                             "validate a custom prompt file.", no_args_is_help=True)
console = Console(width=None if sys.stdout.isatty() else 160)


def _fail(message: str) -> None:
    from rich.markup import escape

    # one line on stderr; a path's [..] is text
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add the ``suite`` sub-command to the main ``mi-atlas`` app."""
    app.add_typer(suite_app, name="suite")


def regenerate_matches(directory: Path) -> list[str]:
    """Regenerate the suites in a temporary directory and compare with ``directory``'s manifest; returns the
    files whose sha256 (or presence) differs (empty: the fixtures are reproducible)."""
    from engine.tasks.generate import check_fixtures

    return check_fixtures(directory)


@suite_app.command("generate")
def generate(out: Path = typer.Option(None, "--out", help="Output directory (default: fixtures/ or "
                                                          "$MI_ATLAS_FIXTURES)."),
             check: bool = typer.Option(False, "--check", help="Write nothing: regenerate in a temporary "
                                                               "directory and compare sha256 with the manifest.")) -> None:
    """Write the synthetic (4,300) and natural-language (2,500) suites and manifest.json, deterministically."""
    from engine.tasks import SuiteError, fixtures_dir
    from engine.tasks.generate import write_fixtures

    directory = out if out is not None else fixtures_dir()
    if check:
        try:
            differ = regenerate_matches(directory)
        except SuiteError as exc:
            _fail(str(exc))
        if differ:
            _fail(f"{len(differ)} file(s) differ from {directory}/manifest.json: {', '.join(differ)}")
        console.print(f"[green]ok[/]: regenerating reproduces every sha256 in {directory}/manifest.json")
        return
    manifest = write_fixtures(directory)
    totals = ", ".join(f"{suite} {n}" for suite, n in manifest["totals"].items())
    console.print(f"wrote {len(manifest['files'])} files + manifest.json to {directory} ({totals}; "
                  f"generator v{manifest['generator_version']})")


def _count_table(examples, title: str) -> Table:
    counts = Counter((ex.family, ex.split) for ex in examples)
    pairs = Counter((ex.family, ex.split) for ex in examples if ex.corrupt is not None)
    splits = list(dict.fromkeys(ex.split for ex in examples))
    table = Table(title=title)
    table.add_column("family")
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    table.add_column("clean/corrupt pairs", justify="right")
    for family in dict.fromkeys(ex.family for ex in examples):
        row = [str(counts[(family, s)]) for s in splits]
        table.add_row(family, *row, str(sum(counts[(family, s)] for s in splits)),
                      str(sum(pairs[(family, s)] for s in splits)))
    table.add_row("[bold]all[/]", *[str(sum(v for (f, s), v in counts.items() if s == split)) for split in splits],
                  f"[bold]{len(examples)}[/]", str(sum(pairs.values())))
    return table


@suite_app.command("stats")
def stats(model: list[str] = typer.Option(None, "--model", help="Also measure greedy baseline accuracy per "
                                                                  "family for this model (repeatable)."),
          per_family: int = typer.Option(20, "--per-family", help="Examples per family for the baseline."),
          seed: int = typer.Option(0, "--seed", help="Sampling seed for the baseline."),
          suite: str = typer.Option("synthetic", "--suite", help="synthetic | nl"),
          split: str = typer.Option(None, "--split", help="Restrict the baseline to one split (short | long)."),
          template: str = typer.Option("auto", "--template", help="auto (chat template when the tokenizer has "
                                                                  "one) | chat | none (raw prompt)."),
          prompts: Path = typer.Option(None, "--prompts", help="A custom JSONL prompt file instead of a suite."),
          markdown: Path = typer.Option(None, "--markdown", help="Also write the baseline table as markdown.")) -> None:
    """Counts per family and split; with --model, greedy baseline accuracy per family (scored)."""
    from engine.tasks import SuiteError, load_prompts, load_suite, sample

    try:
        if prompts is not None:
            examples = load_prompts(prompts)
            source = str(prompts)
        else:
            examples = [ex for name in (("synthetic", "nl") if not model else (suite,))
                        for ex in load_suite(name)]
            source = "fixtures/"
    except SuiteError as exc:
        _fail(str(exc))
    console.print(_count_table(examples, f"Task suite ({source}): examples per family and split"))
    if not model:
        return

    import torch

    from engine import models
    from engine.tasks.baseline import baseline_rows, markdown_table

    try:
        chosen = sample(per_family=per_family, seed=seed, suite=examples if prompts is not None else suite,
                        split=split)
    except SuiteError as exc:
        _fail(str(exc))
    if any(ex.scorer == "none" for ex in chosen):
        _fail("some prompts have no target: a baseline needs a target for every prompt")
    rows = []
    for key in model:
        try:
            loaded = models.load(key, device="cpu" if not torch.cuda.is_available() else None)
        except models.ModelError as exc:
            _fail(str(exc))
        _check_lengths(key, chosen, template, loaded=loaded)  # the baseline renders prompts itself: bound them here
        with Progress(TextColumn(f"{key} ({template})"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=not console.is_terminal) as bar:
            task = bar.add_task("baseline", total=len(chosen))
            rows.extend(baseline_rows(loaded, chosen, template=template,
                                      progress=lambda done, total: bar.update(task, completed=done)))
        models.free(loaded)
    table = Table(title=f"Greedy baseline accuracy ({suite if prompts is None else prompts}, "
                        f"{per_family} per family, seed {seed}{', split ' + split if split else ''})")
    table.add_column("family")
    columns = list(dict.fromkeys((r.model, r.template) for r in rows))
    for m, t in columns:
        table.add_column(f"{m} ({t})", justify="right")
    for family in dict.fromkeys(r.family for r in rows):
        cells = []
        for m, t in columns:
            r = next(r for r in rows if (r.model, r.template, r.family) == (m, t, family))
            cells.append(f"{r.accuracy:.2f} ({r.correct}/{r.n})")
        table.add_row(family, *cells)
    console.print(table)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(markdown_table(rows), encoding="utf-8")
        console.print(f"markdown table written to {markdown}")


@suite_app.command("validate")
def validate(file: Path = typer.Argument(..., help="A JSONL prompt file: one object per line with at least "
                                                  "'prompt' (optional 'target', 'family', 'id', 'scorer')."),
             model: str = typer.Option(None, "--model", help="Also render every prompt for this model (registry key "
                                                            "or local HF directory) and check its token count "
                                                            "against the model's context and "
                                                            "$MI_ATLAS_MAX_PROMPT_TOKENS."),
             template: str = typer.Option("auto", "--template", help="With --model: auto | chat | none.")) -> None:
    """Check a custom prompt file strictly; every problem names the file, line and field (with --model: also
    the token length of every prompt, as every forward pass checks it)."""
    from rich.markup import escape

    from engine.tasks import SuiteError, load_prompts

    try:
        examples = load_prompts(file)
    except SuiteError as exc:
        _fail(str(exc))
    longest = ""
    if model is not None:
        longest = _check_lengths(model, examples, template)
    with_target = sum(ex.scorer != "none" for ex in examples)
    families = Counter(ex.family for ex in examples)
    console.print(f"[green]ok[/]: {escape(str(file))}: {len(examples)} prompts, {with_target} with a target, "
                  f"{sum(ex.corrupt is not None for ex in examples)} clean/corrupt pairs; families: "
                  + ", ".join(f"{f} {n}" for f, n in families.items()) + longest, soft_wrap=True)


def _check_lengths(model, examples, template: str, loaded=None) -> str:
    """Render ``examples`` (and their corrupt prompts) for ``model`` as ``encode`` does and check each token
    count against the limit; a failure exits 2 with the one-line error. Returns a note on the longest prompt."""
    from dataclasses import replace

    import torch

    from engine import models
    from engine.interventions import InterventionError
    from engine.interventions.batch import check_prompts, prompt_token_limit
    from engine.tasks import SuiteError
    from engine.tasks.examples import example_source

    lm = loaded
    try:
        if lm is None:
            lm = models.load(model, device="cpu" if not torch.cuda.is_available() else None)
        inputs = list(examples)
        for ex in examples:  # corrupt prompts are forward-passed too; errors still name the source line
            if ex.corrupt is not None:
                copy = replace(ex, id=f"{ex.id}/corrupt", prompt=ex.corrupt, target=ex.corrupt_target or "")
                if example_source(ex):
                    object.__setattr__(copy, "_source", example_source(ex) + ", field 'corrupt'")
                inputs.append(copy)
        counts = check_prompts(lm, inputs, template=template)
        limit = prompt_token_limit(lm)[0]
    except (models.ModelError, InterventionError, SuiteError) as exc:
        _fail(str(exc))
    finally:
        if loaded is None and lm is not None:
            models.free(lm)
    return f"; {lm.key}: longest prompt {max(counts)} tokens (limit {limit})"
