"""Architecture adapters: the only place in the engine that knows module attribute names.

An :class:`ArchAdapter` maps "layer l, its attention, its MLP, its o_proj, the final norm" to modules for one
Hugging Face ``model_type``. Adapters live in a registry keyed by that ``model_type``: supporting a new
architecture is one :func:`register_adapter` call (with non-default paths where its modules are named
differently).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .errors import ModelError


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
    def get(root: nn.Module, dotted: str) -> nn.Module:
        """The submodule of ``root`` at the dotted attribute path (``"model.layers"``)."""
        obj = root
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    @staticmethod
    def base(model: nn.Module) -> nn.Module:
        """The transformers model under any PEFT wrapper (PeftModel -> LoraModel -> CausalLM)."""
        get_base = getattr(model, "get_base_model", None)
        return get_base() if callable(get_base) else model

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(self.get(self.base(model), self.layers_path))

    def attn(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn_name)

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.mlp_name)

    def module(self, layer: nn.Module, name: str) -> nn.Module:
        if name not in self.module_names:
            raise KeyError(f"unknown module {name!r} for {self.name}; choose from {sorted(self.module_names)}")
        return self.get(layer, self.module_names[name])

    def attn_out_proj(self, layer: nn.Module) -> nn.Module:
        return self.module(layer, "o")

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.get(self.base(model), self.norm_path)

    def embed(self, model: nn.Module) -> nn.Module:
        return self.get(self.base(model), self.embed_path)

    def lm_head(self, model: nn.Module) -> nn.Module:
        return self.base(model).lm_head

    def rotary(self, model: nn.Module) -> nn.Module:
        return self.get(self.base(model), "model.rotary_emb")

    def n_heads(self, model: nn.Module) -> int:
        return int(self.base(model).config.num_attention_heads)

    def head_dim(self, model: nn.Module) -> int:
        config = self.base(model).config
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


ADAPTERS: dict[str, ArchAdapter] = {}


def register_adapter(adapter: ArchAdapter, *, replace: bool = False) -> ArchAdapter:
    """Register ``adapter`` for the Hugging Face ``model_type`` equal to its ``name``; returns it."""
    if adapter.name in ADAPTERS and not replace:
        raise ValueError(f"an ArchAdapter for {adapter.name!r} is already registered")
    ADAPTERS[adapter.name] = adapter
    return adapter


def unregister_adapter(model_type: str) -> ArchAdapter | None:
    """Remove (and return) the adapter registered for ``model_type``, if any."""
    return ADAPTERS.pop(model_type, None)


def adapter_for(model_type: str) -> ArchAdapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ModelError(
            f"architecture {model_type!r} is not supported (supported: {', '.join(sorted(ADAPTERS))})"
        ) from None


for _model_type in ("llama", "qwen2", "gemma3_text", "mistral"):
    register_adapter(ArchAdapter(_model_type))
del _model_type
