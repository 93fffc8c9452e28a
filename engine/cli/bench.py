"""`mi-atlas bench quant --model KEY`: forward latency and tokens/s per precision, side by side in one process;
`mi-atlas bench history`: the latency history chart of the saved pytest-benchmark runs.

Thin commands over ``engine.quant.measure_speed`` / ``write_speed_report`` and ``engine.bench_report``: ``quant``
prints the table, writes ``results/bench/quant-<model>.json`` and a bar chart ``quant-<model>.png``, and the
benchmark report ``quant-bench-<model>-<device>.json`` / ``.png`` (latency ratios to bf16 and fp32 with 95% CIs,
tokens/s, memory); ``history`` reads pytest-benchmark's saved JSONs (``tox -e bench`` keeps them under
``results/bench/history``) and writes ``results/bench/quant-history.png``. ``register(app)`` mounts it on the
``mi-atlas`` typer app (under an existing ``bench`` group if another module already made one).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 160)
DEFAULT_OUT = Path("results") / "bench"


def _bench_group(app: typer.Typer) -> typer.Typer:
    for group in app.registered_groups:
        if group.name == "bench" and group.typer_instance is not None:
            return group.typer_instance
    bench = typer.Typer(help="Benchmarks (timings on this machine; ratios in one process).", no_args_is_help=True)
    app.add_typer(bench, name="bench")
    return bench


def speed_table(report) -> Table:
    """The rich table of a ``SpeedReport``: latency, tokens/s, slowdown vs the reference, footprint."""
    table = Table(title=f"{report.model} on {report.device}: batch {report.batch_size} x {report.seq_len} tokens, "
                        f"{report.warmup} warm-up + {report.rounds} rounds, {report.threads} threads")
    for column in ("precision", "median ms", "min ms", "tokens/s", f"vs {report.reference}", "weights MB", "note"):
        table.add_column(column, justify="left" if column in ("precision", "note") else "right")
    for name, row in report.rows.items():
        if not row.ok:
            table.add_row(name, "-", "-", "-", "-", f"{row.footprint_mb:.0f}" if row.footprint_mb else "-",
                          f"[red]{row.error[:80]}[/]")
            continue
        slow = report.slowdown(name)
        table.add_row(name, f"{row.median_s * 1e3:.1f}", f"{min(row.times_s) * 1e3:.1f}", f"{row.tokens_per_s:.0f}",
                      "reference" if name == report.reference else f"{slow:+.0%}", f"{row.footprint_mb:.0f}", "")
    return table


def register(app: typer.Typer) -> None:
    bench = _bench_group(app)

    @bench.command("quant")
    def bench_quant(
        model: str = typer.Option("smollm2-135m", "--model", help="Registry key or local HF directory."),
        precisions: str = typer.Option(None, help="Comma-separated precisions (default: every one in "
                                                  "engine.quant.SPEED_PRECISIONS)."),
        reference: str = typer.Option("bf16", help="The precision the slowdowns are relative to (the seed's bf16)."),
        batch_size: int = typer.Option(8, min=1, help="Prompts per forward."),
        rounds: int = typer.Option(5, min=1, help="Timed forwards per precision."),
        warmup: int = typer.Option(2, min=0, help="Untimed forwards first."),
        out: Path = typer.Option(DEFAULT_OUT, help="Directory for quant-<model>.json and .png."),
    ) -> None:
        """Forward latency and tokens/s of MODEL at full precision vs int8 vs NF4, one process, one batch."""
        from engine import models, quant

        names = [p.strip() for p in precisions.split(",") if p.strip()] if precisions else list(quant.SPEED_PRECISIONS)
        try:
            with console.status(f"benchmarking {model}: {', '.join(names)}"):
                report = quant.measure_speed(model, names, reference=reference, batch_size=batch_size,
                                             rounds=rounds, warmup=warmup)
        except (quant.QuantError, models.ModelError) as exc:
            from rich.markup import escape

            Console(stderr=True, soft_wrap=True, highlight=False).print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2)
        console.print(speed_table(report))
        if report.device == "cpu":
            console.print("[yellow]CPU run: the QUANT-SPEED claim is about GPU speed; these ratios are reported, "
                          "not a verdict.[/]")
        json_path, png_path = quant.write_speed_report(report, out)
        from engine import bench_report

        bench_json, bench_png = bench_report.write_bench_report(report, out)
        console.print(f"wrote {json_path}, {png_path}, {bench_json} and {bench_png}")

    @bench.command("history")
    def bench_history(
        storage: Path = typer.Option(DEFAULT_OUT / "history", help="pytest-benchmark storage (its saved JSONs, "
                                     "searched recursively)."),
        out: Path = typer.Option(DEFAULT_OUT / "quant-history.png", help="The chart to write."),
    ) -> None:
        """Median forward latency per precision across the saved benchmark runs, one panel per model and device."""
        from engine import bench_report

        written = bench_report.history_chart(storage, out)
        if written is None:
            Console(stderr=True, soft_wrap=True, highlight=False).print(
                f"[bold red]error:[/] {storage}: no saved quantisation benchmark (run `tox -e bench`, which keeps "
                "them there)")
            raise typer.Exit(2)
        console.print(f"wrote {written} ({len(bench_report.read_saved_benchmarks(storage))} benchmark(s))")
