"""CUDA paths of the engine: bf16 and bitsandbytes loading on a GPU, on the real cpu-tier model.

These run only where CUDA is present (the lent GPU machine, a researcher's workstation); elsewhere each is
skipped with the reason. CI has no GPU, so these never gate CI; what they showed on a real GPU is recorded in
README.md ("CUDA paths, as seen on a GPU").
"""

from __future__ import annotations

import pytest
import torch

from engine import models

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (checked on the lent GPU machine)"),
]

PROMPT = "The capital of France is"


def _greedy(lm, prompt: str = PROMPT, n: int = 4) -> str:
    inputs = lm.tokenizer(prompt, return_tensors="pt").to(lm.model.device)
    with torch.no_grad():
        out = lm.model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return lm.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _next_token_logprobs(lm, prompt: str = PROMPT) -> torch.Tensor:
    inputs = lm.tokenizer(prompt, return_tensors="pt").to(lm.model.device)
    with torch.no_grad():
        logits = lm.model(**inputs).logits[0, -1].float()
    return torch.log_softmax(logits, -1).cpu()


@pytest.fixture(scope="module")
def reference_fp32_cpu():
    lm = models.load("smollm2-135m", device="cpu")
    try:
        yield _next_token_logprobs(lm)
    finally:
        models.free(lm)


def test_default_dtype_on_gpu_is_bf16_and_answers_paris(reference_fp32_cpu):
    lm = models.load("smollm2-135m", device="cuda")
    try:
        assert next(lm.model.parameters()).dtype == torch.bfloat16
        assert next(lm.model.parameters()).device.type == "cuda"
        assert _greedy(lm).strip().startswith("Paris")
        logp = _next_token_logprobs(lm)
        assert logp.argmax() == reference_fp32_cpu.argmax()
        kl = torch.sum(reference_fp32_cpu.exp() * (reference_fp32_cpu - logp)).item()
        print(f"KL(fp32 cpu || bf16 cuda) at the answer position = {kl:.2e} nats")
        assert kl < 0.05
    finally:
        models.free(lm)


@pytest.mark.parametrize("quant", ["nf4", "nf4-fp16", "int8"])
def test_bitsandbytes_on_gpu(quant, reference_fp32_cpu):
    pytest.importorskip("bitsandbytes")
    lm = models.load("smollm2-135m", device="cuda", quant=quant)
    try:
        linear_types = {type(m).__name__ for m in lm.model.modules()}
        assert ("Linear4bit" in linear_types) if quant.startswith("nf4") else ("Linear8bitLt" in linear_types)
        logp = _next_token_logprobs(lm)
        kl = torch.sum(reference_fp32_cpu.exp() * (reference_fp32_cpu - logp)).item()
        print(f"{quant}: KL(fp32 cpu || {quant} cuda) = {kl:.3f} nats; greedy: {_greedy(lm)!r}")
        assert torch.isfinite(logp).all()
    finally:
        models.free(lm)


def test_quantised_footprint_is_smaller_on_gpu():
    pytest.importorskip("bitsandbytes")
    sizes = {}
    for quant in (None, "int8", "nf4"):
        lm = models.load("smollm2-135m", device="cuda", quant=quant)
        sizes[quant or "bf16"] = lm.model.get_memory_footprint()
        models.free(lm)
    print("memory footprint (bytes):", sizes)
    assert sizes["nf4"] < sizes["int8"] < sizes["bf16"]
