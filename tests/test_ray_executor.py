"""Atlas sweeps on the local and the Ray executor (engine/executors.py).

Without ray the local-executor tests still run and the Ray tests skip with the reason; CI installs the extra
(``pip install -e '.[dev,ray]'``). The Ray tests start one local cluster on loopback with 2 CPUs for the module.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
import torch

from engine import atlas as atlas_lib
from engine import executors as ex
from engine import models, tasks
from engine.interventions import InterventionError

ALL_COMPONENTS = ("layer", "resid", "attn", "mlp", "head", "module")
RESAMPLES = 200  # bootstrap resamples of the hub CI: enough to exercise it, cheap on 2 cores


def tiny_sweep(layers_per_cell: int = 1, **plan) -> ex.Sweep:
    """Every component type (zero ablation) on tiny-llama, every other method on tiny-qwen2 (random weights)."""
    sweep = ex.Sweep.from_grid(["tiny-llama"], [0], per_family=1, components=ALL_COMPONENTS,
                               layers_per_cell=layers_per_cell, n_resamples=RESAMPLES, **plan)
    sweep.jobs += ex.Sweep.from_grid(["tiny-qwen2"], [1], per_family=1, components=("layer", "head"),
                                     methods=("mean", "resample", "noise"), n_resamples=RESAMPLES).jobs
    return sweep


def in_process(job: atlas_lib.Job) -> dict:
    """The un-split atlas of a job's options, computed in this process."""
    return atlas_lib.atlas(models.shared(job.model, dtype=job.dtype), list(job.examples), job.options).to_json()


def same_atlas(a: dict, b: dict) -> list[str]:
    """Fields where two atlas JSONs differ (timings excluded); compared as canonical JSON, i.e. bit for bit."""
    keys = (set(a) | set(b)) - {"seconds"}
    return sorted(k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True))


@pytest.fixture(scope="module")
def tiny_local() -> tuple[ex.Sweep, dict]:
    sweep = tiny_sweep()
    return sweep, ex.run_sweep(sweep, "local")


# ------------------------------------------------------------------------------------------------ local


def test_a_merged_local_sweep_is_the_unsplit_atlas(tiny_local):
    sweep, result = tiny_local
    assert result["complete"] and len(result["atlases"]) == len(sweep.jobs)
    assert {job.options.component for job in sweep.jobs} == set(ALL_COMPONENTS)
    assert result["plan"]["n_cells"] == sweep.n_cells > len(sweep.jobs)  # jobs really were split into layer ranges
    for job, merged in zip(sweep.jobs, result["atlases"]):
        assert same_atlas(merged, in_process(job)) == [], job.label


def test_a_family_split_plan_keeps_every_per_example_effect():
    """Per-family cells batch other prompts together (other padding, other matmul shapes): the effects agree with
    the un-split atlas to float32 rounding, not bit for bit. Both executors use the same plan, so they agree
    exactly with each other whatever the plan."""
    sweep = ex.Sweep.from_grid(["tiny-llama"], [0], per_family=2, components=("layer", "head"), layers_per_cell=1,
                               by_family=True, max_rows=1, n_resamples=RESAMPLES)
    result = ex.run_sweep(sweep, "local")
    assert result["plan"]["n_cells"] == 2 * 12 * 2 * 2  # jobs x families x rows x layers
    for job, merged in zip(sweep.jobs, result["atlases"]):
        whole = in_process(job)
        # float32 rounding of KL values around 1e-3
        np.testing.assert_allclose(merged["per_example"], whole["per_example"], rtol=1e-3, atol=2e-6)
        assert merged["example_ids"] == whole["example_ids"] and merged["units"] == whole["units"]


def test_write_sweep_is_atomic_and_refuses_a_partial_sweep(tiny_local, tmp_path):
    _sweep, result = tiny_local
    path = ex.write_sweep(result, tmp_path / "atlas.json")
    assert json.loads(path.read_text())["atlases"] == json.loads(json.dumps(result["atlases"]))
    assert [p.name for p in tmp_path.iterdir()] == ["atlas.json"]  # no temporary file left behind
    for broken in ({**result, "complete": False}, {**result, "atlases": result["atlases"][:-1]}):
        with pytest.raises(ex.SweepError):
            ex.write_sweep(broken, tmp_path / "partial.json")
    assert not (tmp_path / "partial.json").exists()


def failing_sweep() -> ex.Sweep:
    """A good job, then one whose cells raise when computed (tiny-llama's tokenizer adds no BOS token)."""
    sweep = ex.Sweep.from_grid(["tiny-llama"], [0], per_family=1, n_resamples=RESAMPLES)
    sweep.jobs += ex.Sweep.from_grid(["tiny-llama"], [0], per_family=1, positions="bos").jobs
    return sweep


def test_a_failing_cell_leaves_no_atlas_json(tmp_path):
    with pytest.raises(atlas_lib.AtlasError, match="bogus"):  # options are checked when the sweep is planned
        ex.Sweep.from_grid(["tiny-llama"], [0], per_family=1, components=("layer", "bogus"))
    with pytest.raises(InterventionError, match="BOS"):
        ex.run_sweep(failing_sweep(), "local", out=tmp_path / "atlas.json")
    assert not (tmp_path / "atlas.json").exists()


def test_missing_cells_are_never_assembled(tiny_local):
    sweep, _ = tiny_local
    first = sweep.jobs[0]
    outputs = {(0, i): atlas_lib.run_cell(first, i) for i in range(len(first.cells))}
    with pytest.raises(ex.SweepError, match="incomplete") as info:
        ex._per_job(sweep.jobs, outputs)
    assert len(info.value.done) == len(outputs)


def test_without_ray_the_ray_executor_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    sweep = ex.Sweep([])
    with pytest.raises(ex.ExecutorError, match=r"pip install -e '\.\[ray\]'"):
        ex.run_sweep(sweep, "ray")
    with pytest.raises(ex.ExecutorError, match="unknown executor"):
        ex.run_sweep(sweep, "dask")
    with pytest.raises(ex.ExecutorError, match="needs --executor ray"):
        ex.run_sweep(sweep, "local", ray_options=ex.RayOptions(address="10.0.0.1:6379"))


def test_actors_request_memory_sized_from_the_model():
    assert ex.estimate_memory("smollm2-135m", "fp32") == int(2 * 135e6 * 4) + 2**30
    assert ex.estimate_memory("qwen2.5-1.5b", "bf16") == int(2 * 1.5e9 * 2) + 2**30
    assert ex.estimate_memory("smollm2-135m", "fp32", "nf4") < ex.estimate_memory("smollm2-135m", "fp32", "int8")
    assert ex.estimate_memory("tiny-llama") is None  # no parameter count: no request


def test_the_cli_executor_option_without_ray_or_with_a_stray_address(monkeypatch):
    assert ex.get_executor("local") is None
    with pytest.raises(ex.ExecutorError, match="--ray-address needs --executor ray"):
        ex.get_executor("local", address="127.0.0.1:6379")
    with pytest.raises(ex.ExecutorError, match="unknown executor"):
        ex.get_executor("dask")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ex.ExecutorError, match=r"pip install -e '\.\[ray\]'"):
        ex.get_executor("ray")


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


def test_ray_computes_the_local_atlas_of_every_component_type(ray_cluster, tiny_local):
    sweep, local = tiny_local
    events = []
    result = ex.run_sweep(sweep, "ray", ray_options=ex.RayOptions(), progress=events.append)
    assert ex.comparable(result) == ex.comparable(local)
    assert result["executor"] == "ray" and local["executor"] == "local"
    assert result["ray"]["workers"] == 2 and len(result["ray"]["pids"]) == 2
    # progress streamed once per cell, in order, from both workers
    assert [e.done for e in events] == list(range(1, sweep.n_cells + 1))
    assert {e.worker for e in events} == {"worker-0", "worker-1"}


@pytest.mark.parametrize("model", ["smollm2-135m"])
def test_ray_computes_the_local_atlas_of_a_real_model(ray_cluster, model):
    """Every component type on real weights, 3 prompts; head/module on the last layers only (each ablation
    re-runs the layers after it: the cost of the test, not of its coverage)."""
    grid = dict(family_groups=[["arithmetic", "factual_recall", "copying"]], per_family=1, layers_per_cell=1,
                n_resamples=RESAMPLES)
    sweep = ex.Sweep.from_grid([model], [0], components=("layer", "resid", "attn", "mlp"), layers=(0, 29), **grid)
    sweep.jobs += ex.Sweep.from_grid([model], [0], components=("head", "module"), layers=(28, 29), **grid).jobs
    local = ex.run_sweep(sweep, "local")
    result = ex.run_sweep(sweep, "ray", ray_options=ex.RayOptions())
    assert ex.comparable(result) == ex.comparable(local)
    assert [a["component"] for a in result["atlases"]] == list(ALL_COMPONENTS)
    assert all(a["n_examples"] == 3 and len(a["layers"]) == 2 for a in result["atlases"])
    assert result["ray"]["workers"] == 2
    assert result["ray"]["memory"] == ex.estimate_memory(model, "fp32")  # each actor asked for its memory


def test_a_worker_killed_mid_sweep_is_restarted_and_its_cells_retried(ray_cluster, tiny_local):
    sweep, local = tiny_local
    killed = []

    def kill_first_worker(event):
        if not killed:
            killed.append(event.pid)
            os.kill(event.pid, signal.SIGKILL)

    result = ex.run_sweep(sweep, "ray", ray_options=ex.RayOptions(in_flight=3), progress=kill_first_worker)
    assert killed and killed[0] in result["ray"]["pids"]
    assert result["ray"]["cells_on_restarted_workers"] >= 1  # the killed actor came back and computed cells
    assert len(result["ray"]["pids"]) >= 3  # two workers plus the restarted one
    assert ex.comparable(result) == ex.comparable(local)


def test_a_worker_lost_beyond_its_restarts_fails_the_sweep_and_writes_nothing(ray_cluster, tmp_path):
    sweep = tiny_sweep()

    def kill(event):
        os.kill(event.pid, signal.SIGKILL)

    out = tmp_path / "atlas.json"
    with pytest.raises(ex.SweepError, match="worker lost") as info:
        ex.run_sweep(sweep, "ray", ray_options=ex.RayOptions(max_restarts=0, max_task_retries=0), progress=kill,
                     out=out)
    assert not out.exists()
    assert 1 <= len(info.value.done) < sweep.n_cells


def test_a_cell_that_raises_fails_the_sweep_at_once(ray_cluster):
    with pytest.raises(ex.SweepError, match="BOS"):
        ex.run_sweep(failing_sweep(), "ray", ray_options=ex.RayOptions(max_task_retries=3))


def test_atlas_with_the_ray_executor_is_the_local_atlas(ray_cluster):
    """``engine.atlas.atlas(..., executor=RayExecutor())``: what ``mi-atlas atlas --executor ray`` runs."""
    lm = models.load("tiny-llama")
    examples = tasks.sample(per_family=1, seed=3)
    events = []
    on_ray = atlas_lib.atlas(lm, examples, component="attn", n_resamples=RESAMPLES,
                             executor=ex.RayExecutor(ex.RayOptions(layers_per_cell=1), progress=events.append))
    here = atlas_lib.atlas(lm, examples, component="attn", n_resamples=RESAMPLES)
    assert same_atlas(on_ray.to_json(), here.to_json()) == []
    assert len(events) == lm.n_layers  # one cell per layer, each reported as it finished


def test_ray_and_local_run_one_job_format_to_the_same_figures(ray_cluster):
    """The same jobs (one format: model key, dtype, examples, options, cells) through ``run_cell`` in this process
    and on Ray actors: every cell's output and every merged atlas agree bit for bit, and equal the un-split atlas."""
    examples = tasks.sample(per_family=1, seed=7)
    options = atlas_lib.AtlasOptions(method="resample", component="head", heads=(1, 3), positions="last3",
                                     seed=7, batch_size=5, n_resamples=RESAMPLES)
    jobs = [atlas_lib.Job.plan("tiny-qwen2", examples, options, layer_chunk=1),
            atlas_lib.Job.plan("tiny-llama", examples, options, method="noise", component="mlp", layer_chunk=1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each 1-CPU actor: float32 reductions (batch 5 here) depend on the thread count
    try:
        here = ex.LocalExecutor().run(jobs)
        whole = [in_process(job) for job in jobs]
    finally:
        torch.set_num_threads(threads)
    there = ex.RayExecutor(ex.RayOptions(num_cpus=1)).run(jobs)
    drop = [[{**o, "result": {**o["result"], "seconds": 0}} for o in outs] for outs in here], \
        [[{**o, "result": {**o["result"], "seconds": 0}} for o in outs] for outs in there]
    assert drop[0] == drop[1]
    for job, a, b, c in zip(jobs, here, there, whole):
        merged_here, merged_there = atlas_lib.merge_job(job, a).to_json(), atlas_lib.merge_job(job, b).to_json()
        assert same_atlas(merged_here, merged_there) == [] and same_atlas(merged_there, c) == []


def test_the_ray_driver_plans_and_merges_without_loading_weights(ray_cluster, monkeypatch):
    """Planning (layer counts from the registry) and merging (model facts from the workers' outputs) never load
    a model in the driver: loading is made to fail here, and only the actors load."""
    def no_loading(*args, **kwargs):
        raise AssertionError("the driver loaded a model")

    for module, name in ((models, "load"), (models, "shared"), (models.loading, "load"), (models.pool, "load"),
                         (models.pool, "shared")):
        monkeypatch.setattr(module, name, no_loading)
    sweep = ex.Sweep.from_grid(["tiny-llama", "smollm2-135m"], [0], family_groups=[["arithmetic"]], per_family=1,
                               components=("attn",), layers=(0, 1), layers_per_cell=1, n_resamples=RESAMPLES)
    assert [job.options.layers for job in sweep.jobs] == [(0, 1), (0, 1)]
    result = ex.run_sweep(sweep, "ray", ray_options=ex.RayOptions())
    assert [a["n_layers"] for a in result["atlases"]] == [2, 30]  # reported by the workers that loaded them
    assert result["atlases"][1]["fingerprint"] == models.identity_of("smollm2-135m")
    with pytest.raises(AssertionError, match="driver loaded"):  # the guard is live: a local run would load here
        ex.run_sweep(sweep, "local")


def test_the_cli_ray_driver_loads_no_weights(ray_cluster, monkeypatch, tmp_path):
    """`mi-atlas atlas --executor ray`: the driver checks the prompts with the tokenizer and keys the cache on the
    model identity, but the weights are loaded by the actors only."""
    import json as json_lib

    import transformers
    from typer.testing import CliRunner

    from engine.cli import app

    def no_weights(*args, **kwargs):
        raise AssertionError("the driver loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["atlas", "--model", "smollm2-135m", "--executor", "ray", "--families",
                                      "arithmetic", "--per-family", "1", "--template", "none", "--no-cache",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json_lib.loads((out / "atlas.json").read_text())
    assert data["n_layers"] == 30 and data["executor"] == "ray" and data["fingerprint"] == models.identity_of(
        "smollm2-135m")
