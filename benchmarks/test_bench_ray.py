"""Benchmark: the overhead of the Ray executor over the local one, on CPU, for one SmolLM2-135M atlas.

    pytest benchmarks/test_bench_ray.py -m bench -p no:xdist --benchmark-json=results/bench-ray.json

Workload: what ``mi-atlas atlas --model smollm2-135m`` computes by default: zero ablation of each of the 30
layers, KL at the answer position, ``engine.tasks.sample(per_family=2, seed=0)`` (24 prompts), fp32, no cache.

* local: ``models.load`` + ``engine.atlas.atlas`` in this process (torch's default threads);
* ray: ``atlas(..., executor=RayExecutor())`` on a local Ray cluster with ``MI_ATLAS_BENCH_RAY_CPUS`` CPUs
  (default 2): one 1-CPU actor per CPU, each starting its process and loading the model itself, the 30 layers
  in cells of ``MI_ATLAS_BENCH_RAY_LAYERS`` (default 4) layers. The cluster's own start-up is timed separately.

Reported in ``benchmark.extra_info``: ``local_s``, ``ray_s``, ``ray_overhead_ratio`` = ray_s / local_s (below 1:
Ray's two processes beat one process's threads; above 1: the actors' start-up and model loads and the cells'
extra clean forwards cost more than they parallelise), ``ray_startup_s`` and ``ratio_with_startup``. Both runs
must give the same atlas (checked). No assertion on time: the ratio is reported, not gated.
"""

from __future__ import annotations

import json
import os
import platform
import time

import pytest
import torch

from engine import models, tasks
from engine.atlas import atlas

pytestmark = pytest.mark.bench

PER_FAMILY = int(os.environ.get("MI_ATLAS_BENCH_RAY_PER_FAMILY", "2"))
RAY_CPUS = int(os.environ.get("MI_ATLAS_BENCH_RAY_CPUS", "2"))
LAYERS_PER_CELL = int(os.environ.get("MI_ATLAS_BENCH_RAY_LAYERS", "4"))
MODEL = "smollm2-135m"


def test_ray_overhead_vs_local_for_smollm2(benchmark):
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")
    from engine import executors

    examples = tasks.sample(per_family=PER_FAMILY, seed=0)
    models.load(MODEL, pull_if_missing=True)  # converted weights present before either timing starts

    start = time.perf_counter()
    lm = models.load(MODEL, dtype="fp32", device="cpu")
    local = atlas(lm, examples)
    local_s = time.perf_counter() - start

    start = time.perf_counter()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    startup_s = time.perf_counter() - start
    try:
        options = executors.RayOptions(layers_per_cell=LAYERS_PER_CELL)

        def on_ray():
            return atlas(lm, examples, executor=executors.RayExecutor(options))

        remote = benchmark.pedantic(on_ray, rounds=1, iterations=1)
        ray_s = benchmark.stats.stats.max
    finally:
        ray.shutdown()

    a, b = local.to_json(), remote.to_json()
    differ = [k for k in set(a) | set(b) if k != "seconds" and json.dumps(a.get(k)) != json.dumps(b.get(k))]
    assert differ == [], f"the Ray atlas differs from the local one in {differ}"
    info = {
        "model": MODEL, "prompts": len(examples), "layers": lm.n_layers, "layers_per_cell": LAYERS_PER_CELL,
        "ray_cpus": RAY_CPUS, "ray_workers": min(RAY_CPUS, -(-lm.n_layers // LAYERS_PER_CELL)),
        "local_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.processor(),
        "local_s": round(local_s, 2), "ray_s": round(ray_s, 2), "ray_startup_s": round(startup_s, 2),
        "ray_overhead_ratio": round(ray_s / local_s, 3),
        "ratio_with_startup": round((ray_s + startup_s) / local_s, 3),
    }
    benchmark.extra_info.update(info)
    print(f"\nRay vs local, {MODEL}, {len(examples)} prompts x {lm.n_layers} layers: local {local_s:.1f} s, ray "
          f"{ray_s:.1f} s (+ cluster start {startup_s:.1f} s): ratio {info['ray_overhead_ratio']:.2f} "
          f"({info['ratio_with_startup']:.2f} with start-up)")
