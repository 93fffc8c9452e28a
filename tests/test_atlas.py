"""The atlas: the fast sweep equals the plain hook loop, hubs and CIs mean what they say, cells merge exactly,
the cache computes once (also under a race) and recovers from corruption, and the CLI writes its files.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import cache as cache_lib
from engine import metrics, models
from engine.atlas import (
    Atlas, AtlasError, AtlasOptions, Cell, Job, atlas, cache_key, compute_cell, merge_cells, merge_job, model_identity,
    plan_cells, prompt_overlap, replicate, run_cell, suite_hash,
)
from engine.interventions import Ablate, Reference, clean_run, edit_residual, encode, next_token_logits, run_from
from engine.tasks import Example

ARCHS = ("llama", "qwen2", "gemma3")
PROMPTS = ["The capital of France is", "2 + 2 =", "def f(x): return x", "hi", "Once upon a time there was",
           "[1, 2, 3] ->"]
TOL = 1e-4  # the bound on |fast - plain| in fp32


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@lru_cache(maxsize=None)
def tiny(arch: str, n_layers: int = 3):
    return models.tiny(arch, n_layers=n_layers)


def _examples(n_families: int = 3, per_family: int = 4) -> list[Example]:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    out = []
    for f in range(n_families):
        for k in range(per_family):
            prompt = f"Family {f} item {k}: {' '.join(words[(f + k + j) % len(words)] for j in range(1 + k % 3))}"
            out.append(Example(id=f"f{f}-{k}", family=f"fam{f}", split="short", prompt=prompt, target=" x",
                               scorer="exact"))
    return out


# --------------------------------------------------------------------------------------------- fast == plain

prompt_text = st.text(alphabet="abcdefghij XYZ0123456789+=:.,()", min_size=1, max_size=14).filter(str.strip)
EDITS = [("layer", "zero", None), ("resid", "zero", None), ("layer", "mean", None), ("resid", "noise", "answer"),
         ("attn", "zero", None), ("mlp", "resample", None), ("head", "zero", None), ("module", "mean", "body"),
         ("layer", "resample", "last3"), ("mlp", "noise", None)]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(ARCHS), prompts=st.lists(prompt_text, min_size=1, max_size=4),
       layer=st.integers(0, 2), edit=st.sampled_from(EDITS), unit=st.integers(0, 3))
def test_fast_path_equals_plain_hook_loop(arch, prompts, layer, edit, unit):
    """Logits (answer position) of the prefix-reusing suffix run equal a full hooked forward to 1e-4."""
    lm = tiny(arch)
    component, method, positions = edit
    kwargs = {"head": unit} if component == "head" else {"module": ("q", "k", "v", "o", "gate", "up", "down")[unit]} \
        if component == "module" else {}
    ablation = Ablate(component, layer, method, positions=positions, seed=7, **kwargs)
    batch = encode(lm, prompts)
    ref = Reference(encode(lm, PROMPTS), shift=2)
    plain = next_token_logits(lm, batch, ablation, reference=ref)
    run = clean_run(lm, batch)
    if component in ("layer", "resid"):
        hidden, _trace = edit_residual(lm, run, ablation, reference=ref)
        fast = run_from(lm, run, layer + 1, hidden)
    else:
        fast = run_from(lm, run, layer, run.resid[layer], ablation, reference=ref)
    assert (plain - fast).abs().max().item() <= TOL
    assert (run.logits - next_token_logits(lm, batch)).abs().max().item() <= TOL


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(ARCHS), prompts=st.lists(prompt_text, min_size=2, max_size=5, unique=True),
       layers=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
       component=st.sampled_from(("layer", "resid", "attn", "mlp", "head")),
       method=st.sampled_from(("zero", "mean", "resample", "noise")), measure=st.sampled_from(("answer", "all")),
       batch_size=st.integers(1, 4))
def test_fast_atlas_equals_plain_atlas(arch, prompts, layers, component, method, measure, batch_size):
    lm = tiny(arch)
    options = dict(component=component, method=method, measure=measure, layers=sorted(layers), heads=[0, 3],
                   batch_size=batch_size, n_resamples=50)
    fast = atlas(lm, prompts, **options)
    plain = atlas(lm, prompts, fast=False, **options)
    assert fast.per_example.shape == plain.per_example.shape
    assert np.abs(fast.per_example - plain.per_example).max() <= TOL
    assert np.abs(fast.logit_effect - plain.logit_effect).max() <= 10 * TOL  # logits, not probabilities
    assert fast.correct == plain.correct


def test_fast_atlas_equals_plain_loop_on_real_smollm(smollm):
    prompts = ["The capital of France is", "def add(a, b):"]
    for component, layers in (("layer", None), ("resid", [0, 29]), ("mlp", [7]), ("attn", [20])):
        fast = atlas(smollm, prompts, component=component, layers=layers, n_resamples=50)
        plain = atlas(smollm, prompts, component=component, layers=layers, fast=False, n_resamples=50)
        assert np.isfinite(fast.per_example).all() and fast.per_example.max() > 0
        assert np.abs(fast.per_example - plain.per_example).max() <= TOL, component
    # the seed's residual zeroing in a bias-free model: every layer gives the same KL (logits become uniform)
    assert np.ptp(atlas(smollm, prompts, component="resid", layers=[0, 29], n_resamples=50).per_example, 1).max() < 1e-4


# --------------------------------------------------------------------------------------------- batch independence


@pytest.mark.parametrize("arch", ARCHS)
def test_effects_alone_equal_effects_in_a_padded_batch(arch):
    lm = tiny(arch)
    for component, method in (("layer", "zero"), ("head", "zero"), ("resid", "noise")):
        together = atlas(lm, PROMPTS, component=component, method=method, n_resamples=50, heads=[1])
        for i, p in enumerate(PROMPTS):
            alone = compute_cell(lm, PROMPTS, Cell((i,), (0, 1, 2)), component=component, method=method, heads=[1])
            assert np.abs(alone.per_example[0].reshape(together.per_example[i].shape)
                          - together.per_example[i]).max() <= 1e-5, (component, p)


def test_the_logit_metric_and_correctness_are_read_from_the_same_forward_passes():
    """Beside KL every atlas keeps the drop of the answer token's centred logit (the target's first token) and
    whether the clean model's top-1 is that token: checked against a direct computation, kept by JSON and by
    restrict."""
    from engine.studies.atlas.common import restrict

    lm = tiny("llama")
    examples = _examples(n_families=2, per_family=3)
    a = atlas(lm, examples, layers=[0, 2], n_resamples=50)
    batch = encode(lm, examples)
    clean = next_token_logits(lm, batch)
    assert a.correct == (clean.argmax(-1) == batch.target_ids).tolist()
    for li, layer in enumerate((0, 2)):
        edited = next_token_logits(lm, batch, Ablate("layer", layer, "zero"))
        want = metrics.logit_drop(clean, edited, batch.target_ids)
        assert np.abs(a.logit_effect[:, li] - want.numpy()).max() <= 1e-3
    back = Atlas.from_json(json.loads(json.dumps(a.to_json())))
    assert np.array_equal(back.logit_effect, a.logit_effect) and back.correct == a.correct
    sub = restrict(a, [examples[0].family])
    assert sub.correct == a.correct[:3] and np.array_equal(sub.logit_effect, a.logit_effect[:3])
    # the centred logit ignores a constant shift of every logit (softmax's invariance)
    assert torch.allclose(metrics.centred_logit(clean + 5.0, batch.target_ids),
                          metrics.centred_logit(clean, batch.target_ids), atol=1e-4)


def test_all_positions_flag_averages_kl_over_real_tokens():
    lm = tiny("llama")
    result = atlas(lm, PROMPTS, measure="all", layers=[1], n_resamples=50)
    batch = encode(lm, PROMPTS)
    clean = next_token_logits(lm, batch, positions="all")
    ablated = next_token_logits(lm, batch, Ablate("layer", 1), positions="all")
    want = metrics.kl_over_positions(clean, ablated, batch.real_mask()).numpy()
    assert np.allclose(result.per_example[:, 0], want, atol=1e-5)
    answer_only = atlas(lm, PROMPTS, layers=[1], n_resamples=50).per_example[:, 0]
    assert not np.allclose(answer_only, want)


# --------------------------------------------------------------------------------------------- hub, CIs, families


def _synthetic_atlas(per_example, families, seed=0) -> Atlas:
    n, L = per_example.shape[:2]
    return Atlas(model="synthetic", fingerprint="0", arch="none", n_layers=L, method="zero", component="layer",
                 positions="all", measure="answer", template="none", seed=seed,
                 example_ids=[f"e{i}" for i in range(n)], example_families=families, per_example=per_example,
                 n_resamples=500)


def test_hub_is_argmax_of_family_mean_with_a_separated_ci():
    """The hub is the argmax of the family-balanced mean and its gap CI excludes 0; the CI of a layer's mean comes
    from decisions.interval (catalogue v3: the stratified t-interval at >= 2 examples per family, which replaced the
    stratified bootstrap) and is centred on the family-balanced mean."""
    rng = np.random.default_rng(0)
    families = ["a"] * 6 + ["b"] * 6 + ["c"] * 6
    values = rng.normal(1.0, 0.05, size=(18, 8)).clip(min=0)
    values[:, 5] += 2.0
    values[12:, 2] += 4.0  # family c alone peaks at L2
    result = _synthetic_atlas(values, families)
    fam_means = [values[i:i + 6].mean(0) for i in (0, 6, 12)]
    assert np.allclose(result.mean_effect, np.mean(fam_means, 0))
    assert result.argmax_layer == int(np.argmax(result.mean_effect)) == 5
    assert result.hub == 5 and result.hub_depth == pytest.approx(5 / 7) and not result.tie
    assert result.gap.low > 0 and result.gap.estimate == pytest.approx(result.mean_effect[5] - np.sort(result.mean_effect)[-2])
    assert result.family_hubs == {"a": 5, "b": 5, "c": 2}
    assert all(result.family_gaps[f].low > 0 for f in "abc")
    from engine import decisions

    iv = decisions.interval(values[:, 5], families, n_resamples=500)
    assert iv.method == "stratified-t" and iv.estimate == pytest.approx(result.mean_effect[5])
    assert iv.low < result.mean_effect[5] < iv.high and iv.high - iv.low > 0


def test_a_tie_is_no_hub_never_the_first_index():
    values = np.tile(np.array([3.0, 3.0, 1.0, 0.5]), (8, 1)) + np.random.default_rng(1).normal(0, 0.1, (8, 4))
    result = _synthetic_atlas(values, ["a", "b"] * 4)
    assert result.hub is None and result.tie and result.hub_depth is None
    assert result.argmax_layer in (0, 1) and result.gap.low <= 0 <= result.gap.high
    exact = _synthetic_atlas(np.full((6, 5), 8.19), ["a", "b", "c"] * 2)
    assert exact.hub is None and exact.argmax_layer == 0  # what a bare argmax says over a tie


def test_residual_zeroing_is_flagged_information_erasing_and_tied():
    lm = tiny("llama")
    zeroed = atlas(lm, PROMPTS, component="resid", n_resamples=100)
    assert zeroed.information_erasing and zeroed.erasing_layers == [0, 1, 2]
    assert zeroed.hub is None and np.ptp(zeroed.mean_effect) < 1e-6
    contribution = atlas(lm, PROMPTS, component="layer", n_resamples=100)
    assert not contribution.information_erasing
    assert Atlas.from_json(json.loads(json.dumps(contribution.to_json()))).to_json() == contribution.to_json()


def test_unit_atlas_has_heads_and_modules_axes():
    lm = tiny("qwen2")
    heads = atlas(lm, PROMPTS[:3], component="head", n_resamples=50)
    assert heads.per_example.shape == (3, 3, 4) and heads.units == ["h0", "h1", "h2", "h3"]
    mods = atlas(lm, PROMPTS[:3], component="module", modules=["o", "down"], layers=[2], n_resamples=50)
    assert mods.per_example.shape == (3, 1, 2) and mods.argmax_unit in ("o", "down")
    with pytest.raises(AtlasError, match="component"):
        atlas(lm, PROMPTS, component="neuron")


def test_replication_resamples_the_suite_per_seed():
    lm = tiny("gemma3")
    pool = _examples(n_families=3, per_family=6)
    from engine.tasks import sample

    rep = replicate(lm, [42, 137, 256], sampler=lambda seed: sample(per_family=2, seed=seed, suite=pool),
                    n_resamples=100, template="none")
    assert rep.seeds == [42, 137, 256] and len(rep.atlases) == 3
    assert rep.prompt_overlap < 1.0  # seeds change the data, not only the random state
    assert len(rep.argmax_layers) == 3 and rep.argmax_std == pytest.approx(np.std(rep.argmax_layers))
    assert json.loads(json.dumps(rep.to_json()))["kind"] == "replication"


# --------------------------------------------------------------------------------------------- cells


def test_cells_merge_into_the_same_atlas_whatever_the_split():
    lm = tiny("qwen2")
    examples = _examples(n_families=3, per_family=3)
    options = dict(method="resample", component="layer", template="none", seed=3)
    whole = atlas(lm, examples, batch_size=4, n_resamples=100, **options)
    for plan in (dict(by_family=True), dict(layer_chunk=1), dict(by_family=True, layer_chunk=2, max_rows=2)):
        cells = plan_cells(examples, range(3), **plan)
        covered = sorted((r, l) for c in cells for r in c.rows for l in c.layers)
        assert covered == [(r, l) for r in range(9) for l in range(3)]
        results = [compute_cell(lm, examples, c, batch_size=4, **options) for c in cells]
        merged = merge_cells(lm, examples, [r.to_json() for r in results], n_resamples=100, **options)
        assert np.abs(merged.per_example - whole.per_example).max() <= 1e-5, plan
        assert merged.argmax_layer == whole.argmax_layer and merged.families == whole.families
    with pytest.raises(AtlasError, match="exactly once"):
        merge_cells(lm, examples, results[:-1], **options)


def test_jobs_are_plain_data_and_run_anywhere_the_model_loads():
    from engine.executors import LocalExecutor

    lm = models.load("tiny-llama")  # the registry's tiny model: what a worker process would load
    examples = _examples(n_families=2, per_family=2)
    job = Job.plan("tiny-llama", examples, component="mlp", template="none", n_resamples=100, by_family=True)
    assert job.options.layers == (0, 1) and len(job.cells) == 2  # n_layers from the registry, cells per family
    again = Job.from_json(json.loads(json.dumps(job.to_json())))
    assert again == job and hash(again) == hash(job)
    merged = merge_job(again, [run_cell(again, i) for i in range(len(again.cells))])
    direct = atlas(lm, examples, job.options)
    assert np.abs(merged.per_example - direct.per_example).max() <= 1e-5
    # an executor runs the same jobs; with its plan (all examples together) the atlas is the in-process one, bit for bit
    via = atlas(lm, examples, job.options, executor=LocalExecutor(layers_per_cell=1))
    assert via.to_json() | {"seconds": 0} == direct.to_json() | {"seconds": 0}
    # a model the workers cannot load by its key (here: 3 layers, the registry's tiny-llama has 2) is refused
    with pytest.raises(AtlasError, match="loads here as weights"):
        atlas(tiny("llama"), examples, template="none", executor=LocalExecutor())


def test_options_are_one_hashable_object_and_define_the_cache_key():
    lm = tiny("llama")
    options = AtlasOptions(method="mean", positions=[-2], heads=[0, 1], layers=[2, 0], n_resamples=50)
    assert options.positions == (-2,) and options.layers == (2, 0) and hash(options) == hash(AtlasOptions.of(
        method="mean", positions=(-2,), heads=(0, 1), layers=(2, 0), n_resamples=50))
    assert AtlasOptions.from_json(json.loads(json.dumps(options.to_json()))) == options
    with pytest.raises(AtlasError, match="component"):
        AtlasOptions(component="neuron")
    with pytest.raises(AtlasError, match="layers must lie"):
        options.resolved(2)
    # an options object and the same options as keywords are one atlas, and one cache key
    as_object = atlas(lm, PROMPTS[:3], options)
    as_keywords = atlas(lm, PROMPTS[:3], method="mean", positions=[-2], heads=[0, 1], layers=[2, 0], n_resamples=50)
    assert as_object.to_json() | {"seconds": 0} == as_keywords.to_json() | {"seconds": 0}
    assert as_object.positions == [-2]  # recorded in its JSON form
    key = cache_key(lm, PROMPTS[:3], options)
    assert key == cache_key(lm, PROMPTS[:3], method="mean", positions=[-2], heads=[0, 1], layers=[2, 0],
                            n_resamples=50)
    assert key == {"kind": "atlas", **model_identity(lm), "suite": suite_hash(PROMPTS[:3]), "n_examples": 3,
                   **options.to_json(),
                   "reference": None}
    # every option can change the numbers, so every option is in the key (batch size: the guard's prompt pairs)
    assert cache_key(lm, PROMPTS[:3]) == cache_key(lm, PROMPTS[:3], layers=[0, 1, 2])  # the layer axis is explicit
    for change in ({"batch_size": 1}, {"fast": False}, {"n_resamples": 51}, {"template": "none"}):
        assert cache_key(lm, PROMPTS[:3], options, **change) != key, change
    one_by_one = atlas(lm, PROMPTS[:4], batch_size=1, n_resamples=50)
    together = atlas(lm, PROMPTS[:4], n_resamples=50)
    assert one_by_one.erase_ratio != together.erase_ratio


def test_prompt_overlap_is_the_mean_pairwise_jaccard_of_example_ids():
    examples = _examples(n_families=1, per_family=4)
    assert prompt_overlap([examples, [ex.id for ex in examples]]) == 1.0  # examples or their ids
    assert prompt_overlap([examples[:2], examples[1:3], examples[2:]]) == pytest.approx((1 / 3 + 0 + 1 / 3) / 3)
    assert prompt_overlap([examples]) == 1.0 and prompt_overlap([[], []]) == 1.0


def test_the_process_model_cache_loads_once_and_releases():
    models.release("tiny-qwen2")
    first = models.shared("tiny-qwen2", dtype="fp32")
    assert models.shared("tiny-qwen2", dtype=torch.float32, quant=None) is first  # one load however it is spelled
    assert models.holds("tiny-qwen2", dtype="float32") and not models.holds("tiny-gemma3")
    other = models.shared("tiny-gemma3", max_models=1)  # the bound drops the least recently used entry ...
    assert not models.holds("tiny-qwen2", dtype="fp32") and first.model is not None  # ... without freeing it
    models.release("tiny-gemma3")
    assert other.model is None and not models.holds("tiny-gemma3")
    assert models.metadata("tiny-qwen2") == {"model": "tiny-qwen2", "arch": "qwen2", "n_layers": 2, "d_model": 64,
                                             "params": "tiny", "source": "tiny", "path": None}
    assert models.dtype_info("bfloat16") is models.dtype_info(torch.bfloat16) is models.DTYPES["bf16"]
    assert models.DTYPES["fp16"].bytes == 2 and models.DTYPES["float32"].torch is torch.float32


def test_metadata_of_a_local_directory_reads_its_config_not_its_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 5,
                                                      "hidden_size": 48}))
    meta = models.metadata(str(tmp_path))
    assert (meta["n_layers"], meta["d_model"], meta["arch"], meta["path"]) == (5, 48, "llama", str(tmp_path.resolve()))
    job = Job.plan(str(tmp_path), ["a prompt"], layer_chunk=2)
    assert [c.layers for c in job.cells] == [(0, 1), (2, 3), (4,)]


# --------------------------------------------------------------------------------------------- cache


def _count_and_return(counter: Path, value):
    with counter.open("a") as handle:
        handle.write("x\n")
    return value


def test_cache_computes_once_and_keys_on_content(tmp_path):
    counter = tmp_path / "count"
    key = {"kind": "t", "model": "m", "fingerprint": "abc", "suite": "s1", "method": "zero", "component": "layer"}
    first = cache_lib.cached(key, lambda: _count_and_return(counter, {"v": [1.0, 2.0]}), root=tmp_path)
    again = cache_lib.cached(key, lambda: _count_and_return(counter, {"v": [9.0]}), root=tmp_path)
    assert first == again == {"v": [1.0, 2.0]} and counter.read_text().count("x") == 1
    for change in ({"fingerprint": "abd"}, {"suite": "s2"}, {"method": "mean"}, {"component": "resid"}):
        assert cache_lib.digest({**key, **change}) != cache_lib.digest(key)
        assert cache_lib.entry_path({**key, **change}, tmp_path) != cache_lib.entry_path(key, tmp_path)
    assert cache_lib.full_key(key)["engine_version"]


def test_cache_key_follows_the_engine_version_and_code(tmp_path, monkeypatch):
    from engine import provenance

    key = {"kind": "t"}
    before = cache_lib.digest(key)
    monkeypatch.setattr(provenance, "ENGINE_VERSION", "999.0")
    assert cache_lib.digest(key) != before
    monkeypatch.undo()
    assert cache_lib.digest(key) == before
    monkeypatch.setattr(provenance, "code_fingerprint", lambda: "0" * 16)
    assert cache_lib.digest(key) != before


@pytest.mark.parametrize("damage", ["truncate", "edit", "garbage", "empty"])
def test_corrupt_entry_is_detected_and_recomputed(tmp_path, damage, capsys):
    key = {"kind": "t", "n": 1}
    cache_lib.cached(key, lambda: {"effects": [1.0, 2.0, 3.0]}, root=tmp_path)
    path = cache_lib.entry_path(key, tmp_path)
    text = path.read_text()
    path.write_text({"truncate": text[: len(text) // 2], "edit": text.replace("2.0", "2.5"),
                     "garbage": "\x00\x01not json", "empty": ""}[damage])
    assert cache_lib.lookup(key, tmp_path)[0] is False
    again = cache_lib.cached(key, lambda: {"effects": [1.0, 2.0, 3.0], "recomputed": True}, root=tmp_path)
    assert again["recomputed"] is True and "corrupt" in capsys.readouterr().err
    assert cache_lib.lookup(key, tmp_path) == (True, again)


RACER = """
import json, sys, time
from pathlib import Path
root, counter, go = sys.argv[1:4]
while not Path(go).exists():  # start together
    time.sleep(0.01)
from engine import cache

def slow():
    time.sleep(1.0)
    with open(counter, "a") as handle:
        handle.write("x\\n")
    return {"computed_by": "one process"}
print(json.dumps(cache.cached({"kind": "race"}, slow, root=Path(root))))
"""


def test_two_processes_racing_compute_once(tmp_path):
    """Two processes ask for the same missing entry at once: one computes, the other waits and reads it."""
    import subprocess
    import sys

    counter, go = tmp_path / "count", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / "cache"), str(counter), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1]) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _out, err in outputs]
    assert counter.read_text().count("x") == 1
    assert [json.loads(out) for out, _err in outputs] == [{"computed_by": "one process"}] * 2
    assert not list((tmp_path / "cache").rglob(".*.json.*"))  # no temporary file left behind


def test_atlas_cache_hit_skips_the_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(tmp_path))
    lm = tiny("gemma3")
    first = atlas(lm, PROMPTS[:3], cache=True, n_resamples=100)
    assert cache_lib.lookup(cache_key(lm, PROMPTS[:3], n_resamples=100))[0]
    import engine.atlas as atlas_module

    def boom(*args, **kwargs):
        raise AssertionError("the sweep ran although the result was cached")
    monkeypatch.setattr(atlas_module, "compute_cell", boom)
    again = atlas(lm, PROMPTS[:3], cache=True, n_resamples=100)
    assert again.to_json() == first.to_json()
    with pytest.raises(AssertionError, match="sweep ran"):
        atlas(lm, PROMPTS[:3], cache=True, n_resamples=100, method="noise")  # another key: computed


# --------------------------------------------------------------------------------------------- CLI


def test_cli_atlas_writes_json_and_heatmap(tmp_path):
    from typer.testing import CliRunner

    from engine.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": ex.prompt, "family": ex.family, "target": " x"})
                                 for ex in _examples(n_families=2, per_family=3)) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["atlas", "--model", "tiny-llama", "--prompts", str(prompts), "--out", str(out),
                                      "--template", "none", "--no-cache", "--families", "fam0,fam1"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "atlas.json").read_text())
    for key in ("model", "n_layers", "method", "component", "families", "effects", "mean_effect", "hub",
                "hub_depth", "n_examples", "seed", "seconds", "engine_version"):
        assert key in data, key
    assert data["model"] == "tiny-llama" and data["n_examples"] == 6 and data["families"] == ["fam0", "fam1"]
    assert all(len(v) == data["n_layers"] == 2 for v in data["effects"].values())
    assert (out / "atlas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean over families" in result.output and ("hub L" in result.output or "no separated hub" in result.output)
    bad = CliRunner().invoke(app, ["atlas", "--model", "tiny-llama", "--prompts", str(prompts), "--out", str(out),
                                   "--executor", "nowhere"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("families", [["a", "a"], ["a", "a", "a"], ["a", "a", "b", "b"], ["a"], ["a", "b", "c"]])
def test_erase_pairs_pair_every_prompt_with_an_unrelated_one_where_the_batch_has_one(families):
    """The erasure guard's pairs: a different family first, else another text (a short chunk of one family got
    none before: its guard silently did not run); never the prompt itself, never its own text."""
    from engine.atlas import erase_pairs

    class Chunk:
        texts = [f"prompt {i}" for i in range(len(families))]

        def __init__(self):
            self.families = families

        def __len__(self):
            return len(families)

    pairs = erase_pairs(Chunk())
    assert [k for k, _ in pairs] == (list(range(len(families))) if len(families) > 1 else [])
    assert all(j != k for k, j in pairs)
    mixed = len(set(families)) > 1
    assert all(families[j] != families[k] for k, j in pairs) is mixed or not pairs
