"""Every cache checks what it serves (issue #25, item 2), on tiny random-weight models.

* the LoRA adapter cache: a stored run carries a manifest of its files' sha256s; bits flipped in the adapter's
  weights at the same size and mtime (the attack that flipped LORA-OPROJ's module ranking), an edited
  adapter_config.json, a missing or unreadable manifest (an older format): the entry is not served, it is
  retrained, with exactly one warning;
* the atlas / ``measured`` key carries the torch / transformers / peft versions and the device, through the same
  helper as the LoRA key;
* a deeply nested cache entry (RecursionError in the JSON reader) is a corrupt entry: recomputed, not a crash;
* an unusable cache location (``MI_ATLAS_CACHE=/dev/null``, a HOME that cannot hold ``.cache``): one line, and the
  work is done without storing it (a model that must be converted first: a one-line ModelError).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import cache as cache_lib
from engine import lora, models, provenance
from engine.atlas import cache_key as atlas_cache_key
from engine.atlas import model_identity
from engine.lora import training
from engine.tasks import Example

CONFIG = lora.TrainConfig(steps=3, batch_size=4, lr=5e-3, warmup_steps=1, checkpoints=(1.0,))
TARGET = lora.LoraTarget((1,), ("o", "down"))
MANIFEST = "manifest.json"  # beside run.json in every stored run


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def lm() -> models.LoadedModel:
    return models.tiny("llama", n_layers=2)


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return [Example(id=f"e{i}", family=f"fam{i % 2}", split="short", prompt=f"Item {i}: alpha beta {i} ->",
                    target=" x" + "y" * (i % 2), scorer="exact") for i in range(6)]


@pytest.fixture
def trainings(monkeypatch):
    """The number of times an adapter is actually trained (train_cached calls ``training.train``)."""
    calls = []
    real = training.train

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train", counted)
    return calls


def _cache_warnings(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    return out, [w for w in caught if issubclass(w.category, cache_lib.CacheWarning)]


def _entry(root: Path) -> Path:
    (entry,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return entry


def _adapter_files(entry: Path) -> dict[str, str]:
    """sha256 of every adapter file of a stored run (run.json and the manifest hold timings: left out)."""
    return {p.relative_to(entry).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in entry.rglob("*") if p.is_file() and p.name not in ("run.json", MANIFEST)}


def _keep_size_and_mtime(path: Path, edit) -> None:
    before = path.stat()
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns), "the attack keeps both"


def flip_exponent_bits(path: Path, every: int = 7) -> None:
    """Flip the top exponent bit of every ``every``-th float32 of a safetensors file (header untouched)."""
    def edit(data: bytearray) -> None:
        start = 8 + int.from_bytes(data[:8], "little")
        for offset in range(start, len(data) - 3, 4 * every):
            data[offset + 3] ^= 0x40  # little-endian float32: byte 3 holds the sign and the top exponent bits
    _keep_size_and_mtime(path, edit)


def edit_config(path: Path) -> None:
    def edit(data: bytearray) -> None:
        at = data.index(b'"r": 8')
        data[at + 5:at + 6] = b"9"  # same length, another rank
    _keep_size_and_mtime(path, edit)


# ------------------------------------------------------------------------------------------------ LoRA cache


@pytest.mark.parametrize("tamper", ["weights", "config", "checkpoint"])
def test_a_tampered_adapter_is_retrained_with_one_warning(lm, examples, tmp_path, trainings, tamper):
    first = lora.train_cached(lm, examples, TARGET, CONFIG, cache_dir=tmp_path)
    first.state = {k: v.clone() for k, v in first.state.items()}  # loaded tensors may map the file itself
    entry = _entry(tmp_path)
    weights = entry / "final" / "adapter_model.safetensors"
    good = _adapter_files(entry)
    if tamper == "weights":
        flip_exponent_bits(weights)
        tampered = load_file(weights)
        assert any(not torch.equal(tampered[k], first.state[k]) for k in first.state), "the flip must change weights"
    elif tamper == "config":
        edit_config(entry / "final" / "adapter_config.json")
    else:
        flip_exponent_bits(first.checkpoints[1.0] / "adapter_model.safetensors")
    assert trainings == [1]

    again, caught = _cache_warnings(lambda: lora.train_cached(lm, examples, TARGET, CONFIG, cache_dir=tmp_path))
    assert trainings == [1, 1], "the tampered entry was served"
    assert len(caught) == 1 and str(entry) in str(caught[0].message) and "retraining" in str(caught[0].message)
    assert all(torch.equal(again.state[k], first.state[k]) for k in first.state)
    assert _adapter_files(entry) == good and training.check_manifest(entry) is None

    served, caught = _cache_warnings(lambda: lora.train_cached(lm, examples, TARGET, CONFIG, cache_dir=tmp_path))
    assert trainings == [1, 1] and caught == [], "a verified entry is served silently"
    assert all(torch.equal(served.state[k], first.state[k]) for k in first.state)


@pytest.mark.parametrize("manifest", ["missing", "deeply nested", "other key", "unlisted file"])
def test_an_entry_without_a_valid_manifest_is_retrained(lm, examples, tmp_path, trainings, manifest):
    lora.train_cached(lm, examples, TARGET, CONFIG, cache_dir=tmp_path)
    entry = _entry(tmp_path)
    path = entry / MANIFEST
    if manifest == "missing":  # what an older mi-atlas stored
        path.unlink()
    elif manifest == "deeply nested":
        path.write_text("[" * 200_000 + "]" * 200_000)
    elif manifest == "other key":
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "key": "0" * 20}))
    else:
        (entry / "final" / "extra.bin").write_bytes(b"planted")
    _, caught = _cache_warnings(lambda: lora.train_cached(lm, examples, TARGET, CONFIG, cache_dir=tmp_path))
    assert trainings == [1, 1] and len(caught) == 1
    assert training.check_manifest(entry) is None and not (entry / "final" / "extra.bin").exists()


def test_load_run_refuses_an_entry_that_fails_its_manifest(lm, examples, tmp_path):
    lora.train_cached(lm, examples, TARGET, CONFIG, cache_dir=tmp_path)
    entry = _entry(tmp_path)
    assert training.check_manifest(entry) is None and lora.load_run(entry).losses
    flip_exponent_bits(entry / "final" / "adapter_model.safetensors")
    assert "adapter_model.safetensors" in training.check_manifest(entry)
    with pytest.raises(lora.LoraError, match="integrity"):
        lora.load_run(entry)


# ------------------------------------------------------------------------------------------------ cache keys


def test_atlas_and_lora_keys_carry_library_versions_and_device(lm, examples, monkeypatch):
    identity = model_identity(lm)
    assert identity["device"] == "cpu" and identity["torch"] == provenance.library_versions()["torch"]
    assert identity["transformers"] == provenance.library_versions()["transformers"]
    atlas_before = cache_lib.digest(atlas_cache_key(lm, examples))
    lora_before = lora.cache_key(lm, examples, TARGET, CONFIG)

    other_device = dataclasses.replace(lm, device=torch.device("meta"))
    assert cache_lib.digest(atlas_cache_key(other_device, examples)) != atlas_before
    assert lora.cache_key(other_device, examples, TARGET, CONFIG) != lora_before

    for library in ("torch", "transformers"):  # one helper feeds both keys
        versions = {**provenance.library_versions(), library: "0.0.0-other"}
        monkeypatch.setattr(provenance, "library_versions", lambda versions=versions: versions)
        assert cache_lib.digest(atlas_cache_key(lm, examples)) != atlas_before, library
        assert lora.cache_key(lm, examples, TARGET, CONFIG) != lora_before, library
        monkeypatch.undo()
    assert cache_lib.digest(atlas_cache_key(lm, examples)) == atlas_before


def test_measured_entries_are_keyed_on_the_device(lm, examples, tmp_path, monkeypatch):
    monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(tmp_path))
    calls = []
    for model in (lm, dataclasses.replace(lm, device=torch.device("meta")), lm):
        cache_lib.measured("probe", model, examples, lambda: calls.append(1) or {"v": len(calls)})
    assert calls == [1, 1]


# ------------------------------------------------------------------------------------------------ faults


def test_a_deeply_nested_cache_entry_is_recomputed_not_a_crash(tmp_path, capsys):
    key = {"kind": "nested"}
    path = cache_lib.entry_path(key, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text('{"key": ' + "[" * 200_000 + "]" * 200_000 + "}")
    assert cache_lib.lookup(key, tmp_path) == (False, None)
    calls = []
    assert cache_lib.cached(key, lambda: calls.append(1) or {"v": 1}, root=tmp_path) == {"v": 1}
    assert calls == [1] and "corrupt" in capsys.readouterr().err
    assert cache_lib.cached(key, lambda: calls.append(1) or {"v": 2}, root=tmp_path) == {"v": 1}


@pytest.fixture(params=["MI_ATLAS_CACHE=/dev/null", "HOME is a file"])
def unusable_cache(request, tmp_path, monkeypatch):
    for name in ("MI_ATLAS_CACHE", "MI_ATLAS_RESULTS_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    if request.param.startswith("MI_ATLAS_CACHE"):
        monkeypatch.setenv("MI_ATLAS_CACHE", "/dev/null")
    else:
        home = tmp_path / "home"
        home.write_text("not a directory: nothing can be created under it, not even by root\n")
        monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(training, "_UNWRITABLE", set(), raising=False)
    monkeypatch.setattr(cache_lib, "_WARNED", set())
    return request.param


def test_an_unusable_cache_trains_and_measures_without_storing(lm, examples, unusable_cache, trainings, capsys):
    for _ in range(2):
        run, caught = _cache_warnings(lambda: lora.train_cached(lm, examples, TARGET, CONFIG))
        assert run.losses and caught == []
        assert cache_lib.measured("probe", lm, examples, lambda: {"v": 1}) == {"v": 1}
    assert trainings == [1, 1]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mi-atlas")]
    assert len(err) == 2, err  # one line for the LoRA cache, one for the results cache
    assert any("LoRA adapter cache" in line and "MI_ATLAS_CACHE" in line for line in err)


def test_an_unusable_cache_refuses_a_model_pull_in_one_line(unusable_cache):
    with pytest.raises(models.ModelError, match="MI_ATLAS_CACHE") as refused:
        models.load("smollm2-135m")
    assert "\n" not in str(refused.value) and "cannot be written" in str(refused.value)
