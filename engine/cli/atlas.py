"""`mi-atlas atlas`: compute one model's causal atlas and write ``atlas.json`` + ``atlas.png``.

A thin layer over ``engine.atlas.atlas`` (the function the claims call) and ``engine.plots.atlas_heatmap``:

    mi-atlas atlas --model smollm2-135m                      # default suite sample, results/atlas/smollm2-135m/
    mi-atlas atlas --model /path/to/hf-dir --prompts my.jsonl --component mlp --method mean --out out/

``--executor local`` (default) runs the sweep in this process; ``--executor ray`` (``engine.executors``) cuts it
into cells (one ``engine.atlas.Job``) and runs them on Ray actors, which load the model by key or path.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from typer.core import TyperCommand

DEFAULT_PER_FAMILY = 2  # 24 prompts over the 12 families: a few minutes per model on 2 CPU cores
JSON_NAME, PNG_NAME = "atlas.json", "atlas.png"


def _examples(prompts: Path | None, families: str | None, per_family: int | None, seed: int):
    from engine import tasks

    chosen = [f.strip() for f in families.split(",") if f.strip()] if families else None
    if prompts is not None:
        pool = tasks.load_prompts(prompts)
        if chosen is not None:
            pool = [ex for ex in pool if ex.family in chosen]
        if per_family is None:
            return pool
        return tasks.sample(chosen, per_family=per_family, seed=seed, suite=pool)
    return tasks.sample(chosen, per_family=per_family or DEFAULT_PER_FAMILY, seed=seed)


def writable_directory(directory: Path) -> Path:
    """``directory``, created if needed, after proving a file can be written there; else a one-line OSError."""
    import tempfile

    if directory.exists() and not directory.is_dir():
        raise OSError(f"--out {directory} is a file, not a directory; choose another --out")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise OSError(f"--out {directory} is not writable ({exc.strerror or exc}); choose another --out") from None
    return directory


def output_record(result, *, seconds: float, from_cache: bool, template: str, executor: str) -> dict:
    """The ``atlas.json`` content: the atlas's own JSON (per-example effects, CIs, per-family hubs, guard)
    with the CLI's context. ``hub`` is None when the top layer is not separated from the runner-up (bootstrap
    CI of the gap includes 0); ``argmax_layer`` is then the bare argmax (the seed protocol's reading)."""
    data = result.to_json()
    data.update(seconds=seconds, from_cache=from_cache, template_requested=template, executor=executor)
    return data


def compact_table(data: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"{data['model']}: {data['component']}/{data['method']} atlas, KL(clean || ablated) nats "
                        f"at the {data['measure']} position{'s' if data['measure'] == 'all' else ''}")
    for column in ("family", "n", "argmax", "hub (CI-separated)", "max KL", "mean KL"):
        table.add_column(column, justify="left" if column == "family" else "right")
    counts: dict[str, int] = {}
    for fam in data["example_families"]:
        counts[fam] = counts.get(fam, 0) + 1
    for fam in data["families"]:
        row = _layer_values(data["effects"][fam])
        hub = data["family_hubs"].get(fam)
        table.add_row(fam, str(counts.get(fam, 0)), f"L{data['family_argmax'][fam]}",
                      "-" if hub is None else f"L{hub}", f"{max(row):.3f}", f"{sum(row) / len(row):.3f}")
    mean = _layer_values(data["mean_effect"])
    table.add_row("[bold]mean over families[/]", str(data["n_examples"]), f"L{data['argmax_layer']}",
                  "-" if data["hub"] is None else f"[bold]L{data['hub']}[/]", f"{max(mean):.3f}",
                  f"{sum(mean) / len(mean):.3f}")
    console.print(table)
    layers = data.get("layers") or list(range(data["n_layers"]))
    top = sorted(range(len(mean)), key=lambda i: -mean[i])[:5]
    console.print("top layers by mean effect: " + ", ".join(f"L{layers[i]} {mean[i]:.3f}" for i in top))


def _layer_values(values) -> list[float]:
    return [max(v) if isinstance(v, list) else float(v) for v in values]


def hub_line(data: dict) -> str:
    gap = data["gap"]
    ci = f"gap to runner-up L{data['runner_up']} {gap['estimate']:.4g}, 95% CI [{gap['low']:.4g}, {gap['high']:.4g}]"
    if data["hub"] is None:
        return (f"no separated hub: argmax L{data['argmax_layer']} (depth {data['argmax_depth']:.2f}) is tied with "
                f"the runner-up ({ci})")
    return f"hub L{data['hub']} (depth {data['hub_depth']:.2f} of {data['n_layers']} layers); {ci}"


def method_help() -> str:
    """``--method``'s help: the ablation methods registered now (``engine.interventions.methods``)."""
    from engine.interventions import methods

    return "Ablation method, one of the registered methods: " + " | ".join(methods.names())


class AtlasCommand(TyperCommand):
    """The ``atlas`` command: ``--method``'s help is read from the method registry when the command is invoked
    (not when the CLI module is imported), so a method registered before the app runs is listed in --help."""

    def make_context(self, info_name, args, parent=None, **extra):
        for param in self.params:
            if param.name == "method":
                param.help = method_help()
        return super().make_context(info_name, args, parent=parent, **extra)


def register(app: typer.Typer) -> None:
    @app.command("atlas", cls=AtlasCommand)
    def atlas_command(
        model: str = typer.Option(..., "--model", help="Registry key or local Hugging Face model directory."),
        prompts: Path = typer.Option(None, "--prompts", help="JSONL prompts (default: a sample of the suite)."),
        families: str = typer.Option(None, "--families", help="Comma-separated families (default: all)."),
        per_family: int = typer.Option(None, "--per-family", min=1,
                                       help=f"Examples per family (suite default {DEFAULT_PER_FAMILY}; with "
                                            "--prompts: all unless given)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the stratified sample (and of noise ablation)."),
        method: str = typer.Option("zero", "--method", help="Ablation method (the registered methods)."),
        component: str = typer.Option("layer", "--component", help="layer | resid | attn | mlp | head | module"),
        positions: str = typer.Option("all", "--positions",
                                      help="Where the ablation applies: all | answer (| bos | first | body | last3)"),
        measure: str = typer.Option("answer", "--measure", help="KL at the answer position, or mean over all."),
        template: str = typer.Option("auto", "--template", help="auto | none | chat"),
        out: Path = typer.Option(None, "--out", help="Output directory (default results/atlas/<model>)."),
        executor: str = typer.Option("local", "--executor", help="local (this process) | ray (Ray actors; needs "
                                     "pip install -e '.[ray]')"),
        ray_address: str = typer.Option(None, "--ray-address", help="with --executor ray: auto | HOST:6379 | "
                                        "ray://HOST:10001 (default: RAY_ADDRESS, else start a local Ray)"),
        batch_size: int = typer.Option(16, "--batch-size", min=1),
        dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16 | fp16"),
        cache: bool = typer.Option(True, "--cache/--no-cache", help="Read/write the content-addressed cache."),
    ) -> None:
        """Ablate every layer of a model on a suite sample; write atlas.json and an atlas.png heatmap."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        from engine import cache as cache_lib
        from engine import executors, models, tasks
        from engine.atlas import AtlasError, AtlasOptions, atlas, cache_key
        from engine.interventions import InterventionError
        from engine.interventions import methods as ablation_methods
        from engine.interventions.batch import check_prompts
        from engine.plots import atlas_heatmap

        console = Console()

        def fail(message: str) -> None:
            from rich.markup import escape

            # one line on stderr, taken literally (no markup read from it)
            Console(stderr=True, soft_wrap=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}")
            raise typer.Exit(2)

        if not ablation_methods.is_registered(method):
            fail(ablation_methods.unknown_method_message(method))
        try:
            examples = _examples(prompts, families, per_family, seed)
            run_executor = executors.get_executor(executor, address=ray_address)
            options = AtlasOptions(method=method, component=component, positions=positions, measure=measure,
                                   template=template, seed=seed, batch_size=batch_size)
        except (tasks.SuiteError, ValueError, OSError) as exc:
            fail(str(exc))
        if not examples:
            fail("no examples selected (check --families / --prompts)")
        try:
            # With another executor the workers load the weights; this driver needs only tokenizer, config and identity.
            lm = models.load(model, dtype=dtype, weights=run_executor is None)
        except models.ModelError as exc:
            fail(str(exc))
        try:  # every prompt within the model's context and the token cap, before any forward pass
            check_prompts(lm, examples, template=template)
        except (InterventionError, tasks.SuiteError) as exc:
            fail(str(exc))
        try:  # the output directory is checked before the sweep, so a finished sweep is never lost to it
            directory = writable_directory(out or Path("results") / "atlas" / lm.key)
        except OSError as exc:
            fail(str(exc))
        console.print(f"{lm.key} ({lm.arch}, {lm.n_layers} layers): {component}/{method} ablation at positions "
                      f"{positions}, {len(examples)} prompts, seed {seed}")
        progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        from_cache = False
        try:
            if cache:
                from_cache = cache_lib.lookup(cache_key(lm, examples, options))[0]
            cpu_start = time.process_time()
            with progress:
                task = progress.add_task("atlas sweep (batch x layer steps)", total=None)

                def advance(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                result = atlas(lm, examples, options, cache=cache, progress=advance, executor=run_executor)
        except (AtlasError, InterventionError, tasks.SuiteError, cache_lib.CacheError, executors.ExecutorError,
                models.ModelError) as exc:
            fail(str(exc))
        # seconds: the sweep's own wall time (model loading excluded); from the cache: the original sweep's.
        # cpu_seconds: this process's CPU time for it (wall time on a shared machine says little).
        data = output_record(result, seconds=result.seconds, from_cache=from_cache,
                             template=template, executor=executor)
        data["cpu_seconds"] = None if from_cache else time.process_time() - cpu_start
        (directory / JSON_NAME).write_text(json.dumps(data, indent=1, allow_nan=True) + "\n", encoding="utf-8")
        atlas_heatmap(result, directory / PNG_NAME)
        compact_table(data, console)
        console.print(hub_line(data))
        if result.information_erasing:
            console.print(f"[yellow]warning:[/] information-erasing ablation at {len(result.erasing_layers)} of "
                          f"{len(result.layers)} layers (unrelated prompts give nearly the same output)")
        cpu = "" if data["cpu_seconds"] is None else f", {data['cpu_seconds']:.1f} s CPU"
        console.print(f"sweep {data['seconds']:.1f} s{cpu}{' (from cache)' if from_cache else ''}; wrote "
                      f"{directory / JSON_NAME} and {directory / PNG_NAME}")

