"""`mi-atlas baselines pin | check`: re-pin a plan's regression baselines (deliberately, with a reason) from one
or more runs, and gate a finished run against them.

``pin --plan smoke --reason "..." RUN [RUN ...]``: several runs of one commit (other machines, thread counts)
give each gated figure its spread, hence its tolerance (``engine.results.pin_plan_baselines``).
``pin --widen --plan smoke --reason "..." RUN``: add runs of another machine (another CPU) to the pinned values:
each figure's spread across machines becomes its tolerance; a verdict that differs is refused
(``engine.results.widen_plan_baselines``).
``check --plan smoke RUN``: the same gate ``pytest --claims-baseline-gate`` applies, on a run already written
(every record the run's catalogue and the plan declare must be pinned and measured).
An incomplete or interrupted run is never pinned.
Bad input (no reason, an unknown run, runs of another plan or commit, a malformed baseline): one line, exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine import plans, results, verdicts
from engine.cli.claims import RESULTS_HELP, default_results_root

BASELINES_HELP = "baselines directory: <DIR>/<plan>/<model>.json (default: <results root>/baselines)"

baselines_app = typer.Typer(help="Regression baselines per plan: pin (with a reason) and check a run.",
                            no_args_is_help=True)


def _dirs(results_root: Path | None, baselines: Path | None) -> tuple[Path, Path]:
    root = Path(results_root) if results_root else default_results_root()
    return root, Path(baselines) if baselines else root / results.BASELINES_DIR


def _plan(plan: str | None) -> str:
    if not plan:
        raise results.BaselineError("--plan NAME is required (the plan whose baselines are pinned or checked)")
    known = plans.read()[1]
    if plan not in known:
        raise results.BaselineError(f"--plan {plan}: no such plan in {plans.PLANS_FILE} ({', '.join(known)})")
    return plan


def _load(root: Path, which: str) -> results.Run:
    try:
        return results.load_run(root, which)
    except (FileNotFoundError, ValueError) as exc:
        raise results.BaselineError(str(exc).splitlines()[0]) from exc


def pin(runs: list[str], *, plan: str | None, reason: str | None, results_root: Path | None = None,
        baselines: Path | None = None, widen: bool = False) -> list[Path]:
    """Re-pin ``plan``'s baselines from ``runs`` (``widen``: add them to the pinned values); raises BaselineError
    (one line) on bad input."""
    root, where = _dirs(results_root, baselines)
    plan = _plan(plan)
    if not (reason or "").strip():
        raise results.BaselineError('a re-pin needs a reason: --reason "..." (stored in the baseline file)')
    loaded = [_load(root, run) for run in runs]
    if widen:
        return results.widen_plan_baselines(where, plan, loaded, reason)
    return results.pin_plan_baselines(where, plan, loaded, reason)


def check(run: str | None, *, plan: str | None, results_root: Path | None = None,
          baselines: Path | None = None) -> results.GateReport:
    """The gate of ``plan`` applied to a written run (default: latest)."""
    root, where = _dirs(results_root, baselines)
    plan = _plan(plan)
    pinned = results.load_plan_baselines(where, plan)
    if not pinned:
        raise results.BaselineError(f"no baselines pinned for plan {plan!r} under {where}")
    loaded = _load(root, run or results.LATEST)
    declared = results.declared_records(_catalogue_of(loaded), plan)
    return results.gate(pinned, loaded.records, plan=plan, baselines=where, declared=declared)


def _catalogue_of(run: results.Run) -> verdicts.Catalogue:
    """The catalogue the run was measured with (its meta names it; the packaged one by default): it declares the
    records the gate expects."""
    path = run.meta.get("catalogue")
    try:
        if run.meta.get("claims_file"):  # a researcher's claims file (beside the catalogue, or alone)
            from engine import claims_file

            user = claims_file.load_claims_file(run.meta["claims_file"])
            return claims_file.merged(verdicts.load_catalogue(), user) if run.meta.get("with_catalogue") else user
        if not path or path == verdicts.DEFAULT_CATALOGUE:
            return verdicts.load_catalogue()
        return verdicts.load_catalogue(path)
    except verdicts.ClaimError as exc:
        raise results.BaselineError(f"run {run.name}: its catalogue {path}: {str(exc).splitlines()[0]}") from exc


@baselines_app.command("pin")
def pin_command(runs: Annotated[list[str], typer.Argument(help="run directories (or names) of one commit")],
                plan: Annotated[str | None, typer.Option("--plan", help="the plan the runs measured "
                                                         "(required)")] = None,
                reason: Annotated[str | None, typer.Option("--reason", help="why the baselines move (required; "
                                                           "stored in the baseline file with the commit)")] = None,
                results_root: Annotated[Path | None, typer.Option("--results", help=RESULTS_HELP)] = None,
                baselines: Annotated[Path | None, typer.Option("--baselines", help=BASELINES_HELP)] = None,
                widen: Annotated[bool, typer.Option("--widen", help="add the runs (another machine's) to the pinned "
                                                    "values instead of replacing them: the spread across machines "
                                                    "gives each figure's tolerance; a verdict that differs is "
                                                    "refused")] = False) -> None:
    """Re-pin a plan's baselines from one or more runs (several: their spread gives each figure's tolerance)."""
    try:
        written = pin(runs, plan=plan, reason=reason, results_root=results_root, baselines=baselines, widen=widen)
    except (results.BaselineError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for path in written:
        typer.echo(f"pinned {path}")
    if widen:
        for line in widened_lines(results.load_plan_baselines(written[0].parent.parent, plan)):
            typer.echo(line)
    flagged = results.gate(results.load_plan_baselines(written[0].parent.parent, plan), [], plan=plan).flags
    for flag in flagged:
        typer.echo(f"flag: {flag}")
    typer.echo(f"{len(written)} baseline file(s) of plan {plan} from {len(runs)} run(s); {len(flagged)} flagged")


def widened_lines(pinned: dict, top: int = 8) -> list[str]:
    """What a widening did, for the reviewer: how many figures now have a spread, and the widest of them
    against their decision's delta (the largest share of a delta a CPU moves a figure by)."""
    spread = [(key, name, figure) for key, entry in pinned.items() for name, figure in entry["figures"].items()
              if figure.get("tolerance")]

    def share(item) -> float:
        delta = item[2].get("delta")
        return item[2]["tolerance"] / delta if isinstance(delta, (int, float)) and delta > 0 else 0.0

    lines = [f"{len(spread)} gated figure(s) of {sum(len(e['figures']) for e in pinned.values())} now have a "
             "spread across the pinned runs (tolerance > 0)"]
    for key, name, figure in sorted(spread, key=share, reverse=True)[:top]:
        delta = figure.get("delta")
        lines.append(f"  {key[0]} {key[1]} [{key[2]}] {name}: {verdicts.fmt(figure['runs'][0])} .. "
                     f"{verdicts.fmt(figure['runs'][-1])}, tolerance {verdicts.fmt(figure['tolerance'])}"
                     + (f" = {share((key, name, figure)):.1%} of delta {verdicts.fmt(delta)}" if share(
                         (key, name, figure)) else ""))
    return lines


@baselines_app.command("check")
def check_command(run: Annotated[str | None, typer.Argument(help="run name or directory (default: latest)")] = None,
                  plan: Annotated[str | None, typer.Option("--plan", help="the plan whose baselines gate the run "
                                                           "(required)")] = None,
                  results_root: Annotated[Path | None, typer.Option("--results", help=RESULTS_HELP)] = None,
                  baselines: Annotated[Path | None, typer.Option("--baselines", help=BASELINES_HELP)] = None) -> None:
    """Gate a written run against a plan's baselines: exit 1 when it does not pass (table of what moved)."""
    try:
        report = check(run, plan=plan, results_root=results_root, baselines=baselines)
    except (results.BaselineError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo("\n".join(report.lines()))
    raise typer.Exit(0 if report.passed else 1)


def register(app: typer.Typer) -> None:
    """Add the `baselines` command group to the `mi-atlas` app."""
    app.add_typer(baselines_app, name="baselines")
