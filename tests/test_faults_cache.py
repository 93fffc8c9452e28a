"""Fault injection on the results cache and the registry: the attacks reproduced, not their keywords.

* a cached atlas is never served for other model bytes (a tensor scaled in place at equal size, mtime restored);
* the cache key follows the engine's code, not only its version string;
* an unwritable cache degrades to computing without storing (one warning), nothing is lost;
* a temp file left by a killed writer is removed by the next writer of that entry;
* merging another machine's registry never glues a torn line into the middle of this one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from engine import cache as cache_lib
from engine import models, provenance, results
from engine.atlas import atlas
from engine.tasks import Example


def _examples() -> list[Example]:
    return [Example(id=f"e{i}", family=f"fam{i % 2}", split="short", prompt=f"Item {i}: alpha beta {i}", target=" x",
                    scorer="exact")
            for i in range(4)]


def _save_tiny(directory: Path) -> Path:
    lm = models.tiny("llama", n_layers=2, seed=0)
    lm.model.save_pretrained(directory, safe_serialization=True)
    lm.tokenizer.save_pretrained(directory)
    return directory


def _scale_in_place(weights: Path, needle: str, factor: float) -> None:
    """Scale every tensor whose name contains ``needle``; same file size, mtime/atime restored (os.utime)."""
    before = weights.stat()
    tensors = load_file(weights)
    for name in tensors:
        if needle in name:
            tensors[name] = tensors[name] * factor
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == before.st_size, "the attack must keep the size"
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_cached_atlas_is_not_served_for_other_model_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_ATLAS_CACHE", str(tmp_path / "mi-cache"))
    monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(tmp_path / "results-cache"))
    directory = _save_tiny(tmp_path / "model")
    examples = _examples()
    first = atlas(models.load(str(directory)), examples, template="none", cache=True)

    (weights,) = directory.glob("*.safetensors")
    _scale_in_place(weights, "down_proj", 3.0)
    served = atlas(models.load(str(directory)), examples, template="none", cache=True)
    fresh = atlas(models.load(str(directory)), examples, template="none", cache=False)

    assert served.mean_effect.tolist() == fresh.mean_effect.tolist(), "the cache served an atlas of other bytes"
    assert fresh.mean_effect.tolist() != first.mean_effect.tolist(), "the planted change must move the atlas"


def test_the_cache_key_carries_the_engine_code_fingerprint(tmp_path, monkeypatch):
    code = tmp_path / "engine"
    code.mkdir()
    (code / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(provenance, "ENGINE_ROOT", code)
    provenance.code_fingerprint.cache_clear()
    try:
        before = cache_lib.digest({"kind": "t"})
        (code / "a.py").write_text("x = 2\n")  # same version string, other code
        provenance.code_fingerprint.cache_clear()
        assert cache_lib.digest({"kind": "t"}) != before
        assert cache_lib.full_key({"kind": "t"})["engine_code"] == provenance.code_fingerprint()
    finally:
        provenance.code_fingerprint.cache_clear()


def test_an_unwritable_cache_computes_without_storing_and_warns_once(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be\n")  # fails for root too, unlike chmod
    monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(cache_lib, "_WARNED", set())
    calls = []
    for value in (1, 2):
        out = cache_lib.cached({"kind": "t", "v": value}, lambda v=value: calls.append(v) or {"v": v})
        assert out == {"v": value}
    assert calls == [1, 2]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MI_ATLAS_RESULTS_CACHE" in err[0] and "--no-cache" in err[0]


def test_a_read_only_hit_is_still_served(tmp_path, monkeypatch):
    key = {"kind": "t"}
    cache_lib.cached(key, lambda: {"v": 1}, root=tmp_path)

    def fail_write(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_lib, "_write", fail_write)
    assert cache_lib.cached(key, lambda: {"v": "recomputed"}, root=tmp_path) == {"v": 1}


def test_a_killed_writers_temp_file_is_removed_by_the_next_writer(tmp_path):
    key = {"kind": "orphan"}
    path = cache_lib.entry_path(key, tmp_path)
    path.parent.mkdir(parents=True)
    orphan = path.parent / f".{path.name}.abc123"  # what mkstemp leaves when the writer is SIGKILLed
    orphan.write_text('{"key": {}, "payl')
    cache_lib.cached(key, lambda: {"v": 1}, root=tmp_path)
    assert not orphan.exists() and path.is_file()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_merging_a_registry_never_glues_a_torn_line(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    results.append_registry(here, {"claim_id": "A", "model": "m", "protocol": "seed", "verdict": "CONFIRMED", "tier": "cpu", "reason": "r"})
    there.mkdir()
    good = {"claim_id": "B", "model": "m", "protocol": "seed", "verdict": "FAILED", "tier": "cpu", "reason": "r"}
    (there / "registry.jsonl").write_text(json.dumps(good) + "\n" + '{"claim": "C", "mod')  # torn last line
    appended, duplicate, problems = results.merge_registry(here, there / "registry.jsonl")
    assert (appended, duplicate) == (1, 0) and len(problems) == 1 and "torn" in problems[0]
    lines = (here / "registry.jsonl").read_text().splitlines()
    assert [json.loads(line)["claim_id"] for line in lines] == ["A", "B"]
    assert results.merge_registry(here, there)[:2] == (0, 1), "a repeated merge appends nothing"
    results.append_registry(here, {"claim_id": "D", "model": "m", "protocol": "seed", "verdict": "FAILED", "tier": "cpu", "reason": "r"})
    assert [r["claim_id"] for r in results.read_registry(here)] == ["A", "B", "D"]


@pytest.mark.parametrize("bad", ["missing", "directory"])
def test_cli_merge_refuses_a_missing_registry_in_one_line(tmp_path, bad):
    from typer.testing import CliRunner

    from engine.cli import app

    source = tmp_path / "nothing.jsonl"
    if bad == "directory":
        source = tmp_path / "empty-dir"
        source.mkdir()
    result = CliRunner().invoke(app, ["merge", str(source), "--results", str(tmp_path / "res")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no such registry file" in result.output



@pytest.mark.parametrize("bad", ["file", "under-a-file"])
def test_cli_atlas_checks_out_before_the_sweep(tmp_path, monkeypatch, bad):
    from typer.testing import CliRunner

    from engine.cli import app

    import engine.atlas

    sweeps = []
    monkeypatch.setattr(engine.atlas, "atlas", lambda *a, **k: sweeps.append(a) or pytest.fail("swept first"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": ex.prompt, "family": ex.family, "target": " x"}) + "\n"
                               for ex in _examples()))
    blocker = tmp_path / "taken"
    blocker.write_text("a file\n")
    out = blocker if bad == "file" else blocker / "sub"
    result = CliRunner().invoke(app, ["atlas", "--model", "tiny-llama", "--prompts", str(prompts), "--out", str(out),
                                      "--no-cache"])
    assert result.exit_code == 2 and "Traceback" not in result.output and sweeps == []
    assert "--out" in result.output and "choose another --out" in result.output


def test_cli_merge_names_ten_skipped_lines_then_counts_the_rest(tmp_path):
    from typer.testing import CliRunner

    from engine.cli import app

    source = tmp_path / "other.jsonl"
    source.write_text("".join(json.dumps({"claim_id": f"X{i}"}) + "\n" for i in range(12)))
    result = CliRunner().invoke(app, ["merge", str(source), "--results", str(tmp_path / "res")])
    assert result.exit_code == 0 and "Traceback" not in result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 11 and warned[-1] == "warning: ... and 2 more line(s) skipped"
    assert "other.jsonl:10:" in warned[9] and "0 verdict line(s) appended" in result.output
    assert "12 skipped" in result.output
