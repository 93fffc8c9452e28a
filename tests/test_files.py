"""The engine's single helpers: the atomic file write, package versions, Spearman (and what each caller records)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from engine import cache as cache_lib
from engine import files, provenance, results, stats
from engine.models import integrity


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ write_atomic


def test_write_atomic_writes_exact_bytes_and_creates_the_directory(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    assert files.write_atomic(path, "caf\u00e9\n") == path
    assert path.read_bytes() == "caf\u00e9\n".encode("utf-8")
    files.write_atomic(path, b"\x00\x01\r\n")  # bytes as given, no newline translation
    assert path.read_bytes() == b"\x00\x01\r\n"
    assert _leftovers(path.parent) == []


def test_write_atomic_sets_the_mode_exactly(tmp_path):
    old = os.umask(0o077)  # a narrow umask does not narrow the public mode
    try:
        files.write_atomic(tmp_path / "public", "x")
        files.write_atomic(tmp_path / "private", "x", mode=files.PRIVATE, fsync=False)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "public") == 0o644
    assert _mode(tmp_path / "private") == 0o600


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    files.write_atomic(path, "old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError):
        files.write_atomic(path, "new")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []


def test_the_temp_name_is_what_the_cache_removes_as_an_orphan(tmp_path, monkeypatch):
    path = tmp_path / "entry.json"
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", spy)
    files.write_atomic(path, "{}")
    assert seen[0].startswith(files.temp_prefix(path)) == seen[0].startswith(".entry.json.") is True


def test_each_writer_keeps_its_permissions(tmp_path, monkeypatch):
    """results: 0o644 (meant to be read); the results cache and model stamps: owner-only, as mkstemp makes them."""
    results.write_atomic(tmp_path / "claims.json", "{}\n")
    assert _mode(tmp_path / "claims.json") == 0o644
    key = {"kind": "perm"}
    assert cache_lib.cached(key, lambda: {"v": 1}, root=tmp_path / "cache") == {"v": 1}
    entry = cache_lib.entry_path(key, tmp_path / "cache")
    assert _mode(entry) == 0o600 and _leftovers(entry.parent) == []
    assert json.loads(entry.read_text())["payload"] == {"v": 1}
    integrity.atomic_write_text(tmp_path / "stamp.json", json.dumps({"a": 1}, indent=1))
    assert _mode(tmp_path / "stamp.json") == 0o600
    assert (tmp_path / "stamp.json").read_text() == '{\n "a": 1\n}'


# ------------------------------------------------------------------------------------------------ package versions


def test_package_versions_records_each_callers_missing_value(monkeypatch):
    names = ("pytest", "mi-atlas-no-such-package")
    found = provenance.package_versions(names)
    assert list(found) == list(names) and isinstance(found["pytest"], str)
    assert found["mi-atlas-no-such-package"] is None
    assert provenance.package_versions(names, missing="absent")["mi-atlas-no-such-package"] == "absent"
    monkeypatch.setattr(results, "PACKAGES", names)
    assert results.provenance()["packages"] == found  # a run's provenance: None for a missing package


# ------------------------------------------------------------------------------------------------ Spearman


def test_spearman_is_scipys_where_defined():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=12), rng.normal(size=12)
    b[3] = b[5]  # a tie
    expected = spearmanr(a, b)
    assert stats.spearman(a, b) == (float(expected.statistic), float(expected.pvalue))
    assert stats.rank_rho(list(a), list(b)) == float(expected.statistic)
    assert stats.rank_rho(a, a) == pytest.approx(1.0)


@pytest.mark.parametrize("a,b", [([0.0] * 5, [1, 2, 3, 4, 5]), ([1, 2, 3, 4, 5], [2.0] * 5),
                                 ([0.0] * 5, [0.0] * 5), ([1, np.nan, 3, 4, 5], [1, 2, 3, 4, 5])])
def test_an_undefined_correlation_is_nan_and_recorded_as_each_caller_says(a, b):
    rho, p = stats.spearman(a, b)
    assert np.isnan(rho) and np.isnan(p)
    assert stats.rank_rho(a, b) is None  # the atlas studies (HUB-NL, ABL-MEAN): null
    assert stats.rank_rho(a, b, undefined=0.0) == 0.0  # LOCKIN: 0.0, as its committed seed runs record


def test_spearman_refuses_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        stats.spearman([1, 2, 3], [1, 2])


def test_a_runs_provenance_names_its_cpu_and_the_simd_level_torch_dispatches_to():
    """Float figures differ in their last bits between an AVX2 and an AVX-512 host: every run says which it was."""
    import torch

    found = results.provenance()
    assert found["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())
    assert isinstance(found["cpu"], str) and found["cpu"]


def test_an_eta_timed_on_another_cpu_says_so():
    """claims/progress.py: a timings file records its CPU; the ETA notes a timings file measured on another CPU
    (the quant studies took 2.7x+ as long on an AVX2 host as on the one that timed the full plan)."""
    from claims.progress import _other_cpu

    here = provenance.cpu_identity()
    assert _other_cpu(None) == "" and _other_cpu({**here}) == ""
    other = _other_cpu({"cpu": "Intel(R) Xeon(R) Platinum 8480+", "simd": "avx2 fma avx512f avx512_bf16 amx_bf16"})
    assert other.startswith("Intel(R) Xeon(R) Platinum 8480+ [avx2 fma avx512f avx512_bf16 amx_bf16]; this host")
    assert here["simd"] is None or set(here["simd"].split()) <= set(provenance.SIMD_FLAGS)
