"""What a model directory must be before transformers is allowed to read it: no code, a supported architecture.

mi-atlas never runs code shipped with a model: every transformers call passes ``trust_remote_code=False``, and
before any of them :func:`check_directory` reads ``config.json`` (and ``tokenizer_config.json``) itself and refuses

* an ``auto_map`` anywhere in either (the hook that makes transformers import ``configuration_*.py`` /
  ``modeling_*.py`` / ``tokenization_*.py`` from the directory), and
* a top-level ``model_type`` without a registered :class:`~engine.models.ArchAdapter` (a supported
  ``text_config`` inside an unsupported wrapper does not count: the top level decides what transformers builds).
"""

from __future__ import annotations

import json
from pathlib import Path

from .adapters import ADAPTERS
from .errors import ModelError


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read it ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object")
    return data


def _auto_maps(data: dict) -> list[str]:
    """Every ``auto_map`` entry in ``data`` or in its nested objects (sub-configs), as ``where: target`` strings."""
    found = []
    stack = [("", data)]
    while stack:
        where, obj = stack.pop()
        for key, value in obj.items():
            if key == "auto_map":
                targets = value.values() if isinstance(value, dict) else [value]
                found.extend(f"{where}{target}" for target in targets)
            elif isinstance(value, dict):
                stack.append((f"{where}{key}.", value))
    return found


def read_config(directory: Path) -> dict:
    """``directory``'s ``config.json`` as a dict, or a ModelError saying it is missing or unreadable."""
    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        raise ModelError(f"model directory {directory} has no config.json: is it a Hugging Face model directory?")
    return _read_json(config_file)


def check_directory(directory: Path) -> dict:
    """Refuse a directory whose config or tokenizer config asks for custom code or whose top-level architecture
    has no adapter; return its config."""
    directory = Path(directory)
    config = read_config(directory)
    custom = _auto_maps(config)
    tokenizer_config = directory / "tokenizer_config.json"
    tok_custom = _auto_maps(_read_json(tokenizer_config)) if tokenizer_config.is_file() else []
    if custom or tok_custom:
        which = "config.json" if custom else "tokenizer_config.json"
        raise ModelError(
            f"{directory}: refused: {which} has an `auto_map` ({', '.join(map(str, custom or tok_custom))}), i.e. code "
            "shipped with the model; mi-atlas never runs model code (trust_remote_code is always False)"
        )
    model_type = config.get("model_type")
    if model_type not in ADAPTERS:
        inner = config.get("text_config", {}).get("model_type") if isinstance(config.get("text_config"), dict) else None
        why = (f" (its text_config's {inner!r} does not count: the top-level model_type decides what is built)"
               if inner else "")
        raise ModelError(
            f"{directory}: architecture {model_type if model_type is not None else '(none)'!r} is not supported{why} "
            f"(supported: {', '.join(sorted(ADAPTERS))}). Add an ArchAdapter entry in engine/models/adapters.py."
        )
    return config
