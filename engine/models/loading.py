"""Loading a model: ``load`` asks the spec's weight source for a directory (or an in-memory model) and
returns a :class:`~engine.models.loaded.LoadedModel` ready for interventions; dtypes and bitsandbytes
quantisation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import integrity
from .adapters import adapter_for
from .errors import ModelError
from .loaded import LoadedModel, default_device, default_dtype
from .registry import ModelSpec, spec_for
from .sources import source_for
from .trust import check_directory


@dataclass(frozen=True)
class DType:
    """One floating-point dtype a model can be loaded in: its canonical short name, torch dtype and bytes/parameter."""

    name: str
    torch: torch.dtype
    bytes: int
    aliases: tuple[str, ...] = ()


#: THE dtype table: every accepted name (canonical short name and aliases) -> its :class:`DType`.
DTYPES: dict[str, DType] = {name: entry for entry in (
    DType("fp32", torch.float32, 4, ("float32",)),
    DType("bf16", torch.bfloat16, 2, ("bfloat16",)),
    DType("fp16", torch.float16, 2, ("float16",)),
) for name in (entry.name, *entry.aliases)}
QUANT_MODES = ("nf4", "nf4-fp16", "int8")
QUANT_BYTES = {"nf4": 0.5, "nf4-fp16": 0.5, "int8": 1}  # stored bytes per parameter of each quantisation


def dtype_info(dtype) -> DType:
    """The :data:`DTYPES` entry of a dtype name (``"fp32"``, ``"bfloat16"``, ...) or a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        for entry in DTYPES.values():
            if entry.torch == dtype:
                return entry
    elif str(dtype) in DTYPES:
        return DTYPES[str(dtype)]
    raise ModelError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")


def _as_dtype(dtype) -> torch.dtype | None:
    """A ``torch.dtype`` from a dtype or one of the :data:`DTYPES` names (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return dtype_info(dtype).torch


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
         attn_implementation: str = "sdpa", pull_if_missing: bool = True, verify: bool = False,
         weights: bool = True) -> LoadedModel:
    """Load a registry model or a local HF directory, ready for interventions (eval mode, no grad needed).

    dtype defaults to fp32 on CPU and bf16 on CUDA; ``quant`` loads with bitsandbytes (runs on CPU too).
    ``weights=False``: everything but the weights (tokenizer, config, identity, layer count), e.g. for a driver
    whose executors load the model themselves; ``model`` is then None.
    """
    spec = spec_for(key_or_path)
    source = source_for(spec)
    built = source.build(spec)
    if built is not None:
        return built
    device = torch.device(device) if device is not None else default_device()
    dtype = _as_dtype(dtype) or default_dtype(device)
    directory = source.resolve(spec, pull_if_missing=pull_if_missing, verify=verify)
    return load_dir(spec, directory, dtype=dtype, device=device, quant=quant,
                    attn_implementation=attn_implementation, check_layers=source.pins_layer_count,
                    verify=verify and not source.verifies_identity, weights=weights,
                    way_out=source.way_out(spec, directory))


def load_dir(spec: ModelSpec, directory: Path, *, dtype, device, quant, attn_implementation,
             check_layers: bool = True, verify: bool = False, weights: bool = True, way_out: str = "") -> LoadedModel:
    """Load the transformers model and tokenizer in ``directory`` as ``spec`` (``check_layers``: the spec's
    ``n_layers`` must match the weights; ``verify``: re-hash every file even if its stamp matches).

    Before transformers sees the directory its config is checked (no ``auto_map``, a supported top-level
    ``model_type``) and its identity computed; transformers is called with ``trust_remote_code=False`` and
    ``use_safetensors=True`` (no pickled weights).
    """
    start = time.perf_counter()
    directory = Path(directory)
    check_directory(directory)
    model_identity = integrity.identity(directory, full=verify)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": dtype, "attn_implementation": attn_implementation, "trust_remote_code": False,
                    "use_safetensors": True}
    if quant:
        kwargs["quantization_config"] = quantization_config(quant, compute_dtype=dtype if dtype != torch.float32 else None)
        kwargs["device_map"] = {"": device.index if device.type == "cuda" and device.index is not None
                                else (0 if device.type == "cuda" else "cpu")}
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        if weights:
            model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
        else:
            config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except Exception as exc:  # transformers / safetensors raise many types for a bad directory
        raise ModelError(
            f"model {spec.key!r}: loading {directory} failed ({type(exc).__name__}: {_one_line(exc)}); "
            f"{way_out or _check_directory_hint(directory)}"
        ) from exc
    if not weights:
        adapter = adapter_for(config.model_type)
        n_layers = int(config.get_text_config().num_hidden_layers)
        if check_layers and n_layers != spec.n_layers:
            raise ModelError(f"model {spec.key!r}: the registry says {spec.n_layers} layers, the config has {n_layers}")
        return LoadedModel(model=None, tokenizer=tokenizer, spec=spec, n_layers=n_layers,
                           d_model=int(config.get_text_config().hidden_size), arch=config.model_type, dtype=dtype,
                           device=device, fingerprint=model_identity, adapter=adapter, quant=quant,
                           load_seconds=time.perf_counter() - start, config=config)
    if not quant:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    adapter = adapter_for(model.config.model_type)
    n_layers = len(adapter.layers(model))
    if check_layers and n_layers != spec.n_layers:
        raise ModelError(f"model {spec.key!r}: the registry says {spec.n_layers} layers, the weights have {n_layers}")
    return LoadedModel(
        model=model, tokenizer=tokenizer, spec=spec, n_layers=n_layers, d_model=int(model.config.hidden_size),
        arch=model.config.model_type, dtype=dtype, device=device, fingerprint=model_identity,
        adapter=adapter, quant=quant, load_seconds=time.perf_counter() - start, config=model.config,
    )


def fingerprint(directory: Path) -> str:
    """A weights directory's fingerprint: its model identity (:func:`engine.models.integrity.identity`, the sha256
    over its weights, config and tokenizer files, 64 hex digits)."""
    return integrity.identity(Path(directory))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_directory_hint(directory: Path) -> str:
    return (f"check that {directory} is a complete Hugging Face model directory (config.json, *.safetensors "
            "weights, tokenizer files) that transformers can load")
