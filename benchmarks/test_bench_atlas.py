"""Benchmark: the fast atlas sweep vs the plain per-layer hook loop, side by side in one process.

    pytest benchmarks/test_bench_atlas.py -m bench -p no:xdist --benchmark-json=results/bench-atlas.json

Model SmolLM2-135M (fp32, CPU), 48 prompts (``engine.tasks.sample(per_family=4, seed=0)``, chat template),
zero ablation of every layer's contribution, KL at the answer position. Both paths compute the same atlas
(checked: max |difference| <= 1e-4 nats); the figures go to ``benchmark.extra_info`` (kept in the JSON):

* ``speedup_vs_plain_batched``: the plain loop with the same batches (one full hooked forward per layer, logits
  at every position): what prefix reuse and answer-only logits buy;
* ``speedup_vs_plain_per_example`` (``MI_ATLAS_BENCH_PER_EXAMPLE=1``): the seed's loop, one example per forward;
* ``flop_rate_fraction``: the fast path's executed matmul FLOPs per second (linear layers + attention scores +
  LM head, counted from the model's shapes and the padded batches) over this machine's matmul peak, measured
  in the same run with a 2048x2048 fp32 ``torch.matmul``.

``MI_ATLAS_BENCH_PROMPTS`` (default 48) and ``MI_ATLAS_BENCH_BATCH`` (default 16) change the workload; the
issue's target is >= 2.5x with 48 prompts. No assertion on time: the figures are reported, not gated.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import pytest
import torch

from engine import models, tasks
from engine.atlas import atlas
from engine.interventions import encode

pytestmark = pytest.mark.bench

N_PROMPTS = int(os.environ.get("MI_ATLAS_BENCH_PROMPTS", "48"))
BATCH = int(os.environ.get("MI_ATLAS_BENCH_BATCH", "16"))
TARGET_SPEEDUP = 2.5


def matmul_peak(n: int = 2048, repeats: int = 8) -> float:
    """Best observed fp32 matmul rate (FLOP/s) on this machine, with torch's current thread setting."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def _layer_flops_per_token(lm, layer_index: int, context: int) -> float:
    layer = lm.adapter.layers(lm.model)[layer_index]
    linear = sum(2.0 * m.in_features * m.out_features for m in layer.modules() if isinstance(m, torch.nn.Linear))
    width = lm.adapter.n_heads(lm.model) * lm.adapter.head_dim(lm.model)
    return linear + 4.0 * context * width  # + Q K^T and A V over the (padded) context


def sweep_flops(lm, batches, n_layers: int, fast: bool) -> float:
    """Executed matmul FLOPs of a layer-contribution sweep over ``batches`` (padded shapes, as run)."""
    head = 2.0 * lm.d_model * lm.adapter.lm_head(lm.model).out_features
    total = 0.0
    for n, T in batches:
        tokens = n * T
        per_layer = [tokens * _layer_flops_per_token(lm, l, T) for l in range(n_layers)]
        head_positions = n if fast else tokens
        total += sum(per_layer) + head_positions * head  # the clean run
        for l in range(n_layers):
            run = per_layer[l + 1:] if fast else per_layer  # fast: the suffix after the ablated layer only
            total += sum(run) + head_positions * head
    return total


def _padded_shapes(lm, examples, batch_size: int) -> list[tuple[int, int]]:
    lengths = sorted(int(x) for x in encode(lm, examples).attention_mask.sum(1))  # the sweep's length buckets
    return [(len(lengths[i:i + batch_size]), max(lengths[i:i + batch_size])) for i in range(0, len(lengths), batch_size)]


@pytest.fixture(scope="module")
def workload():
    lm = models.load("smollm2-135m", device="cpu", dtype=torch.float32)
    examples = tasks.sample(per_family=max(1, N_PROMPTS // len(tasks.FAMILIES)), seed=0)[:N_PROMPTS]
    return lm, examples


def test_bench_atlas_fast_vs_plain(benchmark, workload):
    lm, examples = workload
    peak = matmul_peak()
    options = dict(component="layer", method="zero", batch_size=BATCH, n_resamples=200)
    atlas(lm, examples[:2], layers=[0], **options)  # warm-up: allocator, kernels

    start = time.perf_counter()
    plain = atlas(lm, examples, fast=False, **options)
    plain_s = time.perf_counter() - start
    per_example_s = None
    if os.environ.get("MI_ATLAS_BENCH_PER_EXAMPLE") == "1":
        start = time.perf_counter()
        atlas(lm, examples, fast=False, **{**options, "batch_size": 1})
        per_example_s = time.perf_counter() - start

    peak = max(peak, matmul_peak())  # measured next to each path: the best rate this machine gave in the run
    fast = benchmark.pedantic(atlas, args=(lm, examples), kwargs=options, rounds=1, iterations=1, warmup_rounds=0)
    fast_s = benchmark.stats.stats.max
    shapes = _padded_shapes(lm, examples, BATCH)
    flops_fast = sweep_flops(lm, shapes, lm.n_layers, fast=True)
    flops_plain = sweep_flops(lm, shapes, lm.n_layers, fast=False)
    max_diff = float(np.abs(fast.per_example - plain.per_example).max())
    load1, load5, _ = os.getloadavg()
    benchmark.extra_info.update({
        "model": lm.key, "n_prompts": len(examples), "batch_size": BATCH, "n_layers": lm.n_layers,
        "tokens": int(encode(lm, examples).attention_mask.sum()), "padded_batches": shapes,
        "fast_seconds": fast_s, "plain_batched_seconds": plain_s, "plain_per_example_seconds": per_example_s,
        "speedup_vs_plain_batched": plain_s / fast_s,
        "speedup_vs_plain_per_example": None if per_example_s is None else per_example_s / fast_s,
        "target_speedup": TARGET_SPEEDUP, "max_abs_diff_nats": max_diff,
        "flops_fast": flops_fast, "flops_plain": flops_plain, "flop_ratio_plain_over_fast": flops_plain / flops_fast,
        "matmul_peak_flops": peak, "fast_flop_rate": flops_fast / fast_s, "plain_flop_rate": flops_plain / plain_s,
        "flop_rate_fraction": flops_fast / fast_s / peak, "plain_flop_rate_fraction": flops_plain / plain_s / peak,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "loadavg_1_5": [load1, load5],
        "machine": platform.machine(), "torch": torch.__version__, "hub_argmax": fast.argmax_layer,
    })
    print("\n" + "\n".join(f"{k}: {v}" for k, v in benchmark.extra_info.items() if k != "padded_batches"))
    assert max_diff <= 1e-4  # same numbers (correctness, not timing)
