"""What computed a result: the engine version string, a fingerprint of the engine's code, package versions.

A static version string does not change when the code does, so every cache key also carries
:func:`code_fingerprint`: the SHA-256 of every ``engine/**/*.py`` file (path and bytes). Any edit of the engine
makes every earlier cached result unreachable; nothing is ever served from code that did not compute it.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Iterable

from engine import ENGINE_VERSION

ENGINE_ROOT = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """16 hex digits of the SHA-256 over the engine's Python sources (sorted paths, length-prefixed bytes)."""
    digest = hashlib.sha256()
    for path in sorted(ENGINE_ROOT.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        data = path.read_bytes()
        name = path.relative_to(ENGINE_ROOT).as_posix().encode()
        digest.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
              "amx_bf16", "amx_int8")  # the /proc/cpuinfo flags torch's CPU kernels dispatch on


def cpu_identity() -> dict[str, str | None]:
    """``{"cpu": model name, "simd": the SIMD flags of :data:`SIMD_FLAGS` it has, "cpu_capability": the level torch
    dispatches to}``: what a float figure's last bits and a half-precision forward's speed depend on across machines
    (reduction order and vector width; bf16 without AVX-512 BF16 / AMX is emulated), so a run's provenance, every
    pinned baseline run and every timings file say which CPU they came from. ``cpu_capability`` only when torch is
    already imported (None otherwise: a process that never loads torch does not pay for it)."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name") and name is None:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    capability = None
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            capability = str(torch.backends.cpu.get_cpu_capability())
        except (AttributeError, RuntimeError):
            capability = None
    return {"cpu": name or platform.processor() or None,
            "simd": " ".join(f for f in SIMD_FLAGS if f in flags) or None, "cpu_capability": capability}


def engine_identity() -> dict[str, str]:
    """``{"engine_version": ..., "engine_code": ...}``: part of every cache key and every run's provenance."""
    return {"engine_version": ENGINE_VERSION, "engine_code": code_fingerprint()}


def package_versions(names: Iterable[str], *, missing: str | None = None) -> dict[str, str | None]:
    """``{name: installed version}`` for each distribution in ``names`` (in order); ``missing`` for one that is
    not installed (a run's provenance records None, the quant study's cache key records "absent")."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = missing
    return out


#: The libraries whose kernels and defaults a computed number depends on: part of every cache key that holds
#: measured numbers (the LoRA adapter cache, the atlas and every ``engine.cache.measured`` entry).
COMPUTE_LIBRARIES = ("torch", "transformers", "peft")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """``{"torch": ..., "transformers": ..., "peft": ...}`` installed here ("absent" for one that is not)."""
    return {name: str(version) for name, version in package_versions(COMPUTE_LIBRARIES, missing="absent").items()}


def compute_identity(device) -> dict[str, str]:
    """What a number computed on ``device`` depends on besides the model, the inputs and the engine's code: the
    versions of :data:`COMPUTE_LIBRARIES` and the device type ("cpu", "cuda", "mps"). One helper for every cache
    key, so the LoRA key and the atlas key cannot drift apart."""
    kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
    return {**library_versions(), "device": kind}


def model_identity(lm) -> dict:
    """The model part of every cache key: key, fingerprint (its weights' identity), dtype, quantisation, and what
    the numbers are computed with (:func:`compute_identity`: torch / transformers / peft versions and the device
    type, as in the LoRA adapter cache's key)."""
    return {"model": lm.key, "fingerprint": lm.fingerprint, "dtype": str(lm.dtype), "quant": lm.quant,
            **compute_identity(lm.device)}
