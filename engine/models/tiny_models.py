"""Random-weight Llama / Qwen2 / Gemma3 models with an offline byte-level tokenizer, for unit tests only."""

from __future__ import annotations

import hashlib

import torch

from .adapters import adapter_for
from .errors import ModelError
from .loaded import LoadedModel, seed_everything
from .registry import REGISTRY, ModelSpec


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
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
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
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
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
