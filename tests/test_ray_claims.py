"""A claims run's measurements on Ray (``pytest claims --executor ray --ray-address ADDR``, engine/executors.py's
measurement executor): usage errors, the same cache entries and records bit for bit as a local run (tiny
random-weight models), and a rerun served from the cache the Ray run filled.

The Ray tests start one local cluster on loopback with 2 CPUs for the module (as tests/test_ray_executor.py).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from toy_catalogue import HEADER

import claims.plugin  # noqa: F401  (imported here, so the inline sessions below import nothing new)
from engine import atlas as atlas_lib
from engine import executors, models, tasks
from engine.lora import training
from engine.lora.adapters import LoraTarget
from engine.studies import atlas as _studies_atlas  # noqa: F401

pytest_plugins = ["pytester"]

RESAMPLES = 200
QUIET = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider", "-p", "no:xdist")

CATALOGUE = HEADER + """scale_05b = "Qwen2.5-0.5B"

[[claim]]
id = "T-RAY"
block = "atlas"
statement = "The tiny atlas's peak layer is measured."
rule = "the figure is a layer"
tiers = ["cpu"]
models = ["smollm2-135m"]
key = "peak"
tolerance = { abs = 0 }
"""

# A claim test whose figures come from a cached atlas and a cached LoRA run of the tiny test model.
RAY_CLAIM = '''
import pytest
import torch

from claims.plugin import record_both
from engine import atlas as atlas_lib
from engine import models, tasks
from engine.lora import training
from engine.lora.adapters import LoraTarget
from engine.studies.findings import Finding


@pytest.mark.claim("T-RAY", model="smollm2-135m")
def test_ray_claim(claim, request):
    from engine import executors

    on_ray = request.config.getoption("--executor") == "ray"
    assert (executors.measurement_executor() is not None) == on_ray
    lm = models.shared("tiny-llama")
    examples = tasks.sample(per_family=1, seed=5)
    a = atlas_lib.atlas(lm, examples, component="attn", n_resamples=200, cache=True)
    run = training.train_cached(lm, examples[:6], LoraTarget(layers=(0,), modules=("q",), r=2, alpha=4),
                                training.TrainConfig(steps=2, batch_size=2, warmup_steps=0))
    if on_ray:
        assert executors.measurement_executor().calls == 2  # both computed on the Ray actor
    effects = [float(x) for x in a.to_json()["mean"]] if "mean" in a.to_json() else a.to_json()["per_example"]
    figures = {"peak": 0, "effects": effects, "losses": run.losses}
    record_both(claim, Finding("seed", figures, holds=True), Finding("rigorous", figures, holds=True))
'''


def run_inline(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    catalogue = pytester.path / "catalogue.toml"
    catalogue.write_text(CATALOGUE)
    return pytester.runpytest("-p", "claims.plugin", f"--claims-results={pytester.path / 'results'}",
                              f"--claims-catalogue={catalogue}", *QUIET, *args)


# ------------------------------------------------------------------------------------------------ usage errors


def test_executor_ray_without_ray_is_one_usage_line(pytester, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = run_inline(pytester, "--executor", "ray")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR")]
    assert len(errors) == 1 and "pip install -e '.[ray]'" in errors[0], result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


@pytest.mark.parametrize("args, message", [
    (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --executor ray"),
    (["--executor", "local", "--ray-address", "127.0.0.1:6379"], "--ray-address needs --executor ray"),
    (["--executor", "dask"], "unknown executor 'dask'"),
])
def test_executor_usage_errors(pytester, args, message):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = run_inline(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str() and "Traceback" not in result.stderr.str()


def test_no_executor_leaves_measurements_local():
    assert executors.measurement_executor() is None
    assert executors.remote(atlas_lib.sweep_json, models.shared("tiny-llama"), []) is None


# ------------------------------------------------------------------------------------------------ ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' to run the Ray tests")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the driver's count, which the Ray worker takes too
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def measure(root, lm, examples):
    """An atlas and a LoRA run through the caches under ``root`` (the claims' cached measurements)."""
    a = atlas_lib.atlas(lm, examples, component="attn", n_resamples=RESAMPLES, cache=True)
    run = training.train_cached(lm, examples[:6], LoraTarget(layers=(0, 1), modules=("q", "v"), r=2, alpha=4),
                                training.TrainConfig(steps=3, batch_size=2, warmup_steps=0),
                                cache_dir=root / "lora")
    return a.to_json(), run


def entries(root) -> dict:
    """Every results-cache entry under ``root``: name -> payload without timings."""
    out = {}
    for path in sorted((root / "results").rglob("*.json")):
        payload = json.loads(path.read_text())["payload"]
        out[path.name] = {k: v for k, v in payload.items() if k != "seconds"}
    return out


def test_a_claims_measurement_on_ray_is_the_local_one_and_reruns_from_cache(ray_cluster, one_thread, tmp_path,
                                                                              monkeypatch):
    lm = models.shared("tiny-llama")
    examples = tasks.sample(per_family=1, seed=5)
    results = {}
    for name in ("local", "ray"):
        root = tmp_path / name
        monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(root / "results"))
        executor = executors.RayMeasurements() if name == "ray" else None
        previous = executors.use_measurement_executor(executor)
        try:
            results[name] = measure(root, lm, examples)
            if executor is not None:
                assert executor.calls == 2 and len(executor.pids) == 1  # the atlas and the training, one actor
                import os

                assert os.getpid() not in executor.pids
                again = measure(root, lm, examples)  # a rerun: both read from the cache the Ray run filled
                assert executor.calls == 2
                assert {k: v for k, v in again[0].items() if k != "seconds"} == \
                    {k: v for k, v in results[name][0].items() if k != "seconds"}
                assert again[1].losses == results[name][1].losses
        finally:
            executors.use_measurement_executor(previous)
            if executor is not None:
                executor.close()
    (local_atlas, local_run), (ray_atlas, ray_run) = results["local"], results["ray"]
    # the same cache keys (entry names), the same payloads bit for bit
    assert entries(tmp_path / "local") == entries(tmp_path / "ray") and entries(tmp_path / "ray")
    assert {k: v for k, v in local_atlas.items() if k != "seconds"} == \
        {k: v for k, v in ray_atlas.items() if k != "seconds"}
    assert [p.name for p in (tmp_path / "local" / "lora").iterdir() if p.is_dir()] == \
        [p.name for p in (tmp_path / "ray" / "lora").iterdir() if p.is_dir()]
    assert local_run.losses == ray_run.losses and local_run.lrs == ray_run.lrs
    assert local_run.state.keys() == ray_run.state.keys()
    assert all(torch.equal(local_run.state[k], ray_run.state[k]) for k in local_run.state)
    assert training.check_manifest(ray_run.adapter_dir.parent) is None
    assert sorted(local_run.checkpoints) == sorted(ray_run.checkpoints)


def test_a_model_no_load_reproduces_stays_in_the_driver(ray_cluster):
    import dataclasses

    lm = models.shared("tiny-llama")
    previous = executors.use_measurement_executor(executors.RayMeasurements())
    try:
        assert executors.remote(atlas_lib.sweep_json, lm, []) is not None
        copy = dataclasses.replace(lm, fingerprint="other")  # e.g. an adapted or layer-skipped model
        assert executors.remote(atlas_lib.sweep_json, copy, []) is None
    finally:
        executors.use_measurement_executor(previous).close()


def test_a_claims_session_on_ray_records_the_local_figures_and_its_executor(ray_cluster, pytester, monkeypatch):
    """Two inline sessions of one claim test (a cached atlas and LoRA run of the tiny model), local then on
    Ray, each with an empty cache: the same records, and the run's meta names the executor."""
    pytester.makepyfile(test_ray_claim=RAY_CLAIM)
    runs = {}
    for name in ("local", "ray"):
        monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(pytester.path / name / "results"))
        monkeypatch.setenv("MI_ATLAS_CACHE", str(pytester.path / name / "cache"))
        result = run_inline(pytester, "--executor", name, f"--claims-results={pytester.path / name / 'out'}",
                            "-p", "no:randomly")
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        runs[name] = json.loads((pytester.path / name / "out" / "latest" / "claims.json").read_text())
    assert runs["local"]["meta"]["executor"] == "local" and runs["ray"]["meta"]["executor"] == "ray"
    figures = {name: [r["figures"] for r in run["records"]] for name, run in runs.items()}
    assert figures["local"] == figures["ray"] and figures["local"]
    assert executors.measurement_executor() is None  # the session's executor is gone with it
