"""QUANT-SPEED benchmark: forward latency and tokens/s at full precision vs int8 vs NF4, side by side in one process.

Run alone, never under xdist (pytest-benchmark disables itself there)::

    pytest benchmarks -m bench -p no:xdist --benchmark-json=results/bench/benchmarks.json

Every (model, precision) is one benchmark of the same batch (the same token ids) in the group of its model: warm
rounds (``MI_ATLAS_BENCH_WARMUP``, default 3, untimed) then ``MI_ATLAS_BENCH_ROUNDS`` timed rounds (default 20: enough
paired rounds for a CI of each ratio); the model is loaded, timed and freed before the next precision is loaded. The
last test of each model writes ``results/bench/quant-<model>.json`` and ``.png`` (the same report as ``mi-atlas bench
quant``) and the benchmark report ``quant-bench-<model>-<device>.json`` / ``.png`` (``engine.bench_report``: latency
ratios to bf16 and fp32 with 95% CIs through QUANT-SPEED's decision primitive, tokens/s, memory; CPU and GPU apart).
``tox -e bench`` keeps pytest-benchmark's JSON of every run (``--benchmark-autosave`` under ``results/bench/history``,
so ``pytest-benchmark compare`` works across runs) and draws ``results/bench/quant-history.png`` from them
(``mi-atlas bench history``). On CPU the ratios are information only: the claim (8-bit 52% slower, NF4 9% slower)
is about GPU kernels, and its verdict is the claim test's. Models: ``MI_ATLAS_BENCH_MODELS`` (comma-separated,
default both embedded cpu-tier models).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import bench_report
from engine import interventions as iv
from engine import memory, models, quant
from engine.studies import steer as steer_studies

pytestmark = pytest.mark.bench

MODELS = [m for m in os.environ.get("MI_ATLAS_BENCH_MODELS", "smollm2-135m,gemma3-270m").split(",") if m]
REFERENCE = "bf16"
PRECISIONS = list(dict.fromkeys([REFERENCE, *quant.SPEED_PRECISIONS]))
BATCH = 4
ROUNDS = int(os.environ.get("MI_ATLAS_BENCH_ROUNDS", "20"))
WARMUP = int(os.environ.get("MI_ATLAS_BENCH_WARMUP", "3"))
OUT = Path(__file__).resolve().parent.parent / "results" / "bench"

_rows: dict[str, dict[str, quant.SpeedRow]] = {}
_shapes: dict[str, tuple[int, int, str]] = {}


def _prompts():
    return steer_studies.steer_data(steer_studies.SIZES["cpu"]).test[:BATCH]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_forward_latency(benchmark, model, precision):
    present, why = models.availability(model)
    if not present:
        pytest.skip(why)
    reset = memory.rss_peak_reset()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        lm = quant.load_precision(model, precision)
    except (RuntimeError, ImportError, models.ModelError) as exc:  # recorded as a failed row, shown in the report
        _rows.setdefault(model, {})[precision] = quant.SpeedRow(precision, ok=False, error=f"load failed: {exc}")
        pytest.skip(f"{precision} cannot load here: {exc}")
    try:
        batch = iv.encode(lm, _prompts(), template="none")
        inputs = batch.model_inputs()
        inputs["logits_to_keep"] = 1  # the unquantised LM head must not swamp the quantised body
        tokens = int(batch.attention_mask.sum())
        benchmark.group = f"quant-{model}"
        benchmark.extra_info.update(model=model, precision=precision, tokens=tokens, device=str(lm.device),
                                    footprint_mb=round(memory.footprint_bytes(lm) / 2**20, 1))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
            out = benchmark.pedantic(lm.model, kwargs=inputs, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
        assert np.isfinite(out.logits.float().numpy()).any()
        times = list(benchmark.stats.stats.data)
        row = quant.SpeedRow(precision, ok=True, times_s=times, tokens=tokens,
                             footprint_mb=memory.footprint_bytes(lm) / 2**20,
                             peak_rss_mb=memory.rss_mb("VmHWM") if reset else None)
        if lm.device.type == "cuda":
            row.cuda_peak_mb = torch.cuda.max_memory_allocated(lm.device) / 2**20
        benchmark.extra_info["tokens_per_s"] = round(row.tokens_per_s, 1)
        _rows.setdefault(model, {})[precision] = row
        _shapes[model] = (len(batch), batch.seq_len, str(lm.device))
    finally:
        models.free(lm)


@pytest.mark.parametrize("model", MODELS)
def test_slowdown_report(model):
    """Ratios vs bf16 from the medians above, written as JSON + bar chart next to pytest-benchmark's own JSON."""
    rows = _rows.get(model)
    if not rows or model not in _shapes:
        pytest.skip(f"no precision of {model} was benchmarked in this session")
    n, seq, device = _shapes[model]
    report = quant.SpeedReport(model, device, n, seq, ROUNDS, WARMUP, REFERENCE,
                               {p: rows[p] for p in PRECISIONS if p in rows})
    json_path, png_path = quant.write_speed_report(report, OUT)
    assert json_path.is_file() and png_path.is_file()
    bench_json, bench_png = bench_report.write_bench_report(report, OUT)
    assert bench_json.is_file() and bench_png.is_file()
    measured = [p for p, r in report.rows.items() if r.ok]
    assert REFERENCE in measured, f"the reference {REFERENCE} was not measured: {rows[REFERENCE].error}"
    for p in measured:
        assert report.rows[p].median_s > 0 and np.isfinite(report.slowdown(p))
    ratios = bench_report.ratios(report)
    print(f"\n{model} on {device}: " + ", ".join(
        f"{p} x{r.ratio:.3g} [{r.low:.3g}, {r.high:.3g}]" if r.low is not None else f"{p} x{r.ratio:.3g} (no CI)"
        for p, r in ratios.get(REFERENCE, {}).items()) + f" vs {REFERENCE} -> {bench_json}")


# ---------------------------------------------------------------------- half-precision GEMMs: native vs upcast
# The full cpu plan's quant studies run their half-precision forwards "upcast" (engine.quant.half_matmuls): the ratio
# of the two, side by side on the same load and batch, per model and half-precision load. The batch is a quant
# study's first 11 prompts (one per family; logits at the last position only): with the 4 short prompts above the upcast's
# per-call cost of converting each weight to fp32 (Gemma's tied 262k x 640 LM head alone: 168M values) outweighs
# the GEMMs it speeds up (2026-12-07, AVX2 host, the other core busy: Gemma bf16 x0.81, SmolLM2 x3.3)
HALF_BATCH = 11

_half: dict[tuple[str, str], dict[str, float]] = {}


@pytest.mark.parametrize("how", quant.HALF_MATMULS)
@pytest.mark.parametrize("precision", ["bf16", "nf4-bf16"])
@pytest.mark.parametrize("model", MODELS)
def test_half_matmul_latency(benchmark, model, precision, how):
    present, why = models.availability(model)
    if not present:
        pytest.skip(why)
    try:
        lm = quant.load_precision(model, precision)
    except (RuntimeError, ImportError, models.ModelError) as exc:
        pytest.skip(f"{precision} cannot load here: {exc}")
    try:
        prompts = steer_studies.steer_data(steer_studies.sizes_for("cpu", plan="full")).test[:HALF_BATCH]
        batch = iv.encode(lm, prompts, template="none")
        inputs = batch.model_inputs()
        inputs["logits_to_keep"] = 1
        assert len(batch) == HALF_BATCH
        benchmark.group = f"half-matmul-{model}-{precision}"
        benchmark.extra_info.update(model=model, precision=precision, half_matmul=how, device=str(lm.device))

        def forward():
            with torch.no_grad(), quant.half_matmuls(how):
                return lm.model(**inputs)

        out = benchmark.pedantic(forward, rounds=min(ROUNDS, 5), warmup_rounds=1, iterations=1)
        assert torch.isfinite(out.logits.float()).any()
        _half.setdefault((model, precision), {})[how] = float(np.median(benchmark.stats.stats.data))
    finally:
        models.free(lm)


@pytest.mark.parametrize("precision", ["bf16", "nf4-bf16"])
@pytest.mark.parametrize("model", MODELS)
def test_half_matmul_ratio(model, precision):
    """native / upcast median latency, measured side by side above (information: the speed-up the full cpu plan's
    quant studies get on this CPU; ~1 where the CPU has native half-precision GEMMs)."""
    medians = _half.get((model, precision), {})
    if set(medians) != set(quant.HALF_MATMULS):
        pytest.skip(f"{model} {precision}: not benchmarked both ways in this session")
    ratio = medians["native"] / medians["upcast"]
    assert ratio > 0
    print(f"\n{model} {precision}: native {medians['native']:.3f} s / upcast {medians['upcast']:.3f} s = x{ratio:.2f}")
