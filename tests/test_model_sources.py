"""Weight sources are pluggable: a kind registered from outside the engine resolves, loads and reports through
the same public calls as the built-in ones, and an unknown kind is a clear error."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch

from engine import models
from engine.models import ModelError

BUILT_IN = {"hf", "local", "pypi-gguf", "tiny"}


class ToySource(models.WeightSource):
    """Weights 'fetched' by saving a seeded tiny model under ``root``; absent until pulled."""

    root: Path

    def resolve(self, spec, *, pull_if_missing=True, verify=False):
        directory = self.root / spec.key
        if (directory / "config.json").is_file():
            return directory
        if not pull_if_missing:
            raise ModelError(f"model {spec.key!r}: toy weights not built yet")
        return self.pull(spec)

    def pull(self, spec, *, force=False, progress=True, gguf_file=None):
        directory = self.root / spec.key
        lm = models.tiny(spec.arch, n_layers=spec.n_layers, seed=7)
        lm.model.save_pretrained(directory, safe_serialization=True)
        lm.tokenizer.save_pretrained(directory)
        return directory


@contextlib.contextmanager
def toy_source(root: Path):
    """Register ``ToySource`` as kind "toy" for the duration of the block, then unregister it."""
    models.register_source("toy")(ToySource)
    models.SOURCES["toy"].root = root
    try:
        yield models.SOURCES["toy"]
    finally:
        models.unregister_source("toy")


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The "toy" source plus a registry entry ``toy-llama`` using it; both are undone after the test."""
    spec = models.ModelSpec(key="toy-llama", source="toy", arch="llama", n_layers=2, scale="scale_tiny",
                            tier="test")
    monkeypatch.setitem(models.REGISTRY, spec.key, spec)
    with toy_source(tmp_path / "toy-weights") as source:
        yield spec, source


def test_every_registry_source_kind_has_a_registered_source():
    assert BUILT_IN <= set(models.SOURCES)
    assert {spec.source for spec in models.REGISTRY.values()} <= set(models.SOURCES)
    for spec in models.REGISTRY.values():
        assert models.source_for(spec).kind == spec.source


def test_a_registered_toy_source_resolves_reports_and_loads(toy):
    spec, source = toy
    assert models.source_for(spec) is source
    assert models.availability(spec.key) == (False, "model 'toy-llama': toy weights not built yet")
    assert not models.is_present(spec.key)
    row = next(r for r in models.describe() if r["key"] == spec.key)
    assert row["present"] is False and "not built yet" in row["where"]

    directory = models.pull(spec.key)
    assert (directory / "model.safetensors").is_file()
    assert models.availability(spec.key) == (True, "") and models.is_present(spec.key)
    assert models.resolve_weights(spec) == directory
    row = next(r for r in models.describe() if r["key"] == spec.key)
    assert row["present"] is True and row["where"] == str(directory) and row["size_mb"] is not None

    lm = models.load(spec.key, device="cpu")
    assert lm.spec is spec and lm.n_layers == 2 and lm.arch == "llama"
    assert lm.fingerprint == models.fingerprint(directory)
    reference = models.tiny("llama", n_layers=2, seed=7)
    ids = reference.tokenizer("toy weights", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(lm.model(ids).logits, reference.model(ids).logits, atol=1e-5, rtol=1e-5)


def test_a_toy_source_pins_the_registry_layer_count(toy, monkeypatch):
    spec, _ = toy
    models.pull(spec.key)  # two-layer weights
    wrong = dataclasses.replace(spec, n_layers=5)
    monkeypatch.setitem(models.REGISTRY, spec.key, wrong)
    with pytest.raises(ModelError, match="registry says 5 layers, the weights have 2"):
        models.load(spec.key, device="cpu")


def test_registering_a_kind_twice_is_refused(toy):
    with pytest.raises(ValueError, match="'toy' is already registered"):
        models.register_source("toy")(ToySource)


def test_the_toy_source_is_gone_after_unregistering(tmp_path):
    with toy_source(tmp_path):
        assert "toy" in models.SOURCES
    assert "toy" not in models.SOURCES and BUILT_IN <= set(models.SOURCES)


def test_an_unknown_source_kind_names_the_kind_and_the_registered_ones(monkeypatch):
    spec = models.ModelSpec(key="mystery", source="carrier-pigeon", arch="llama", n_layers=2,
                            scale="scale_tiny", tier="test")
    expected = r"model 'mystery': unknown weight source 'carrier-pigeon' \(registered: hf, local, pypi-gguf, tiny\)"
    with pytest.raises(ModelError, match=expected):
        models.source_for(spec)
    with pytest.raises(ModelError, match=expected):
        models.resolve_weights(spec)
    monkeypatch.setitem(models.REGISTRY, spec.key, spec)
    with pytest.raises(ModelError, match=expected):
        models.load(spec.key)
    ok, reason = models.availability(spec.key)
    assert not ok and "unknown weight source 'carrier-pigeon'" in reason
