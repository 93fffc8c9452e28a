"""Interventions: every component/method does what it says, fires, is removed, and is batch-independent.

Most checks compare a hook-based edit with an independent construction of the same model change (zeroing
weights), so a hook that silently does nothing, or the wrong thing, fails.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from engine import metrics, models
from engine.interventions import (
    Ablate, AddVector, InterventionError, Reference, Site, capture, clean_run, edit_residual, encode, intervene,
    kl, next_token_logits, patch, run_from,
)

ARCHS = ("llama", "qwen2", "gemma3")
PROMPTS = ["The capital of France is", "2 + 2 =", "def f(x): return x", "hi", "Once upon a time there was"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    torch.manual_seed(0)
    return models.tiny(request.param, n_layers=3)


@pytest.fixture(scope="module")
def tiny_llama():
    return models.tiny("llama", n_layers=3)


class _InputOf:
    """Records the residual entering a decoder layer (a pre-hook: it sees edits made by earlier layers' hooks)."""

    def __init__(self, lm, layer: int):
        self.module = lm.adapter.layers(lm.model)[layer]
        self.value = None

    def __enter__(self):
        def pre(module, args, kwargs):
            self.value = (args[0] if args else kwargs["hidden_states"]).clone()
        self.handle = self.module.register_forward_pre_hook(pre, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _no_hooks(lm) -> bool:
    for module in lm.model.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return False
    return True


# --------------------------------------------------------------------------------------------- batching


def test_encode_left_pads_and_positions_follow_the_mask(tiny):
    batch = encode(tiny, PROMPTS)
    lengths = batch.attention_mask.sum(1)
    assert (batch.start == batch.seq_len - lengths).all()
    assert (batch.answer_pos == batch.seq_len - 1).all()
    for i in range(len(batch)):
        real = batch.position_ids[i, batch.start[i]:]
        assert real.tolist() == list(range(int(lengths[i])))
    if tiny.arch == "gemma3_text":  # the tiny gemma tokenizer adds BOS
        assert batch.has_bos and (batch.input_ids[torch.arange(len(batch)), batch.bos_pos] == 1).all()
    else:
        assert not batch.has_bos


@pytest.mark.parametrize("edit", [None, Ablate("layer", 1), Ablate("attn", 0, positions="answer"),
                                  Ablate("head", 2, head=1, method="noise"), Ablate("resid", 1, positions="last3")])
def test_batched_equals_one_by_one(tiny, edit):
    edits = () if edit is None else (edit,)
    batched = next_token_logits(tiny, encode(tiny, PROMPTS), *edits)
    single = torch.cat([next_token_logits(tiny, encode(tiny, [p]), *edits) for p in PROMPTS])
    # noise is seeded by the example's index in the list given to encode: one by one means index 0
    if edit is not None and edit.method == "noise":
        batched = torch.cat([next_token_logits(tiny, encode(tiny, PROMPTS).select([i]), *edits)
                             for i in range(len(PROMPTS))])
        single = next_token_logits(tiny, encode(tiny, PROMPTS), *edits)
    assert torch.allclose(batched, single, atol=1e-4, rtol=0)


def test_batched_equals_one_by_one_real_smollm(smollm):
    """Effects (KL, nats) agree to 1e-4; raw logits (magnitude ~20-30) to 1e-3: fp32 round-off through 30 layers
    differs with the padded shape (SDPA with and without a padding mask), by about 1e-6 relative."""
    prompts = PROMPTS[:4]
    batch = encode(smollm, prompts)
    singles = [encode(smollm, [p]) for p in prompts]
    clean_b = next_token_logits(smollm, batch)
    clean_s = torch.cat([next_token_logits(smollm, s) for s in singles])
    for edit in ((), (Ablate("layer", 3),), (Ablate("mlp", 10, positions="answer"),)):
        batched = next_token_logits(smollm, batch, *edit)
        single = torch.cat([next_token_logits(smollm, s, *edit) for s in singles])
        assert torch.isfinite(batched).all()
        assert (batched - single).abs().max().item() <= 1e-3
        assert (kl(clean_b, batched) - kl(clean_s, single)).abs().max().item() <= 1e-4


def test_all_positions_logits_ignore_padding(tiny):
    batch = encode(tiny, PROMPTS)
    full = next_token_logits(tiny, batch, positions="all")
    assert full.shape[:2] == batch.input_ids.shape
    for i, p in enumerate(PROMPTS):
        alone = next_token_logits(tiny, encode(tiny, [p]), positions="all")[0]
        assert torch.allclose(full[i, batch.start[i]:], alone, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------- semantics


def _zeroed_copy(lm, names_and_slices):
    """A deep copy of lm whose listed weight slices are zero (the independent way to ablate)."""
    twin = copy.copy(lm)
    twin.model = copy.deepcopy(lm.model)
    with torch.no_grad():
        for getter, cols in names_and_slices:
            module = getter(twin)
            if cols is None:
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            else:
                module.weight[:, cols].zero_()
    return twin


def test_zero_ablations_match_zeroed_weights(tiny):
    batch = encode(tiny, PROMPTS)
    layers = lambda lm: tiny.adapter.layers(lm.model)  # noqa: E731
    hd = tiny.adapter.head_dim(tiny.model)
    cases = [
        (Ablate("head", 1, head=2), [(lambda lm: tiny.adapter.attn_out_proj(layers(lm)[1]), slice(2 * hd, 3 * hd))]),
        (Ablate("attn", 2), [(lambda lm: tiny.adapter.attn_out_proj(layers(lm)[2]), None)]),
        (Ablate("mlp", 0), [(lambda lm: tiny.adapter.module(layers(lm)[0], "down"), None)]),
        (Ablate("module", 1, module="v"), [(lambda lm: tiny.adapter.module(layers(lm)[1], "v"), None)]),
        # a layer contributes attention + MLP outputs (through Gemma's post-norms, which map 0 to 0)
        (Ablate("layer", 1), [(lambda lm: tiny.adapter.attn_out_proj(layers(lm)[1]), None),
                              (lambda lm: tiny.adapter.module(layers(lm)[1], "down"), None)]),
    ]
    clean = next_token_logits(tiny, batch)
    for edit, zeroed in cases:
        hooked = next_token_logits(tiny, batch, edit)
        reference = next_token_logits(_zeroed_copy(tiny, zeroed), batch)
        assert torch.allclose(hooked, reference, atol=1e-5, rtol=0), edit
        assert (hooked - clean).abs().max() > 1e-4, f"{edit} changed nothing"
    assert _no_hooks(tiny)


def test_layer_zero_makes_output_equal_input(tiny):
    batch = encode(tiny, PROMPTS)
    run = clean_run(tiny, batch)
    new, trace = edit_residual(tiny, run, Ablate("layer", 1))
    real = batch.real_mask()  # padding positions are never edited
    assert torch.equal(new[real], run.resid[1][real]) and trace.changed == [True]
    # and through the hook: the residual entering layer 2 equals the one entering layer 1
    with _InputOf(tiny, 2) as seen:
        next_token_logits(tiny, batch, Ablate("layer", 1))
    assert torch.equal(seen.value[real], run.resid[1][real])


def test_residual_zeroing_ties_in_bias_free_models_but_not_qwen2():
    for arch, expect_tie in (("llama", True), ("gemma3", True), ("qwen2", False)):
        lm = models.tiny(arch, n_layers=3)
        batch = encode(lm, PROMPTS)
        clean = next_token_logits(lm, batch)
        effects = torch.stack([kl(clean, next_token_logits(lm, batch, Ablate("resid", l))) for l in range(3)])
        spread = (effects.max(0).values - effects.min(0).values).max().item()
        assert (spread == 0.0) == expect_tie, (arch, effects)


def test_positions_restrict_the_edit(tiny_llama):
    batch = encode(tiny_llama, PROMPTS)
    site = Site("resid", 1)
    clean = capture(tiny_llama, batch, [site])[site].values
    for positions in ("answer", "last3", "first", "body", [0, -1], [[0]] * len(PROMPTS)):
        mask = batch.position_mask(positions)
        with _InputOf(tiny_llama, 2) as seen:
            next_token_logits(tiny_llama, batch, Ablate("resid", 1, positions=positions))
        after = seen.value
        assert (after[mask] == 0).all()
        assert torch.equal(after[~mask], clean[~mask])
    lengths = [len(tiny_llama.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert batch.position_mask("last3").sum(1).tolist() == [min(3, n) for n in lengths]
    assert batch.position_mask("body").sum(1).tolist() == [max(0, n - 2) for n in lengths]
    with pytest.raises(InterventionError, match="no BOS"):
        batch.position_mask("bos")


def test_position_aliases_name_the_same_classes(tiny_llama):
    batch = encode(tiny_llama, PROMPTS)
    assert torch.equal(batch.position_mask("prompt"), batch.position_mask("body"))
    assert torch.equal(batch.position_mask("last"), batch.position_mask("answer"))
    assert torch.equal(batch.position_mask("all"), batch.real_mask())
    assert Ablate("resid", 1, positions="all").positions is None  # "all" needs no batch
    a = next_token_logits(tiny_llama, batch, Ablate("mlp", 1, positions="last"))
    assert torch.equal(a, next_token_logits(tiny_llama, batch, Ablate("mlp", 1, positions="answer")))


def test_mean_ablation_uses_reference_means_per_class(tiny_llama):
    batch = encode(tiny_llama, PROMPTS)
    ref_batch = encode(tiny_llama, ["A reference prompt", "Another one here", "x = 1"])
    site = Site("mlp", 1)
    ref_vals = capture(tiny_llama, ref_batch, [site])[site].values
    ans_mean = ref_vals[torch.arange(3), ref_batch.answer_pos].mean(0)
    seen = {}
    mlp = tiny_llama.adapter.mlp(tiny_llama.adapter.layers(tiny_llama.model)[1])

    def grab(module, args, output):
        seen["x"] = output.clone()
    with pytest.raises(InterventionError, match="reference"):
        next_token_logits(tiny_llama, batch, Ablate("mlp", 1, method="mean", positions="answer"))
    handle = mlp.register_forward_hook(grab)  # registered first: sees the unedited output
    try:
        with intervene(tiny_llama, Ablate("mlp", 1, method="mean", positions="answer"), batch=batch,
                       reference=Reference(ref_batch)) as trace:
            edited = {}
            h2 = mlp.register_forward_hook(lambda m, a, o: edited.setdefault("x", o.clone()))
            try:
                tiny_llama.model(**batch.model_inputs())
            finally:
                h2.remove()
    finally:
        handle.remove()
    assert trace.fired == [True] and trace.changed == [True]
    rows = torch.arange(len(batch))
    assert torch.allclose(edited["x"][rows, batch.answer_pos], ans_mean.expand(len(batch), -1), atol=1e-6)
    mask = batch.position_mask("answer")
    assert torch.equal(edited["x"][~mask], seen["x"][~mask])


def test_resample_takes_the_next_example_and_noise_is_seeded(tiny_llama):
    batch = encode(tiny_llama, PROMPTS)
    site = Site("resid", 0)
    clean = capture(tiny_llama, batch, [site])[site].values
    rows = torch.arange(len(batch))
    with _InputOf(tiny_llama, 1) as seen:
        next_token_logits(tiny_llama, batch, Ablate("resid", 0, method="resample", positions="answer"))
        got = seen.value[rows, batch.answer_pos]
        want = clean[(rows + 1) % len(batch), batch.answer_pos[(rows + 1) % len(batch)]]
        assert torch.equal(got, want)
        noise = Ablate("resid", 0, method="noise", positions="answer", seed=3)
        next_token_logits(tiny_llama, batch, noise)
        first = seen.value[rows, batch.answer_pos]
        sub = batch.select([2, 0])
        next_token_logits(tiny_llama, sub, noise)
        again = seen.value[torch.arange(2), sub.answer_pos]
    assert torch.equal(again, first[[2, 0]])  # per example, whatever the batch
    sigma = clean[rows, batch.answer_pos].std(1, unbiased=False)
    ratio = (first.std(1) / sigma).mean().item()
    assert 0.7 < ratio < 1.3


def test_add_vector_adds_and_records_no_change_at_scale_zero(tiny_llama):
    batch = encode(tiny_llama, PROMPTS)
    site = Site("resid", 1)
    clean = capture(tiny_llama, batch, [site])[site].values
    vec = torch.randn(tiny_llama.d_model)
    with _InputOf(tiny_llama, 2) as seen:
        with intervene(tiny_llama, AddVector(1, vec, scale=2.0), batch=batch) as trace:
            tiny_llama.model(**batch.model_inputs())
        mask = batch.real_mask()
        assert torch.allclose(seen.value[mask], clean[mask] + 2.0 * vec, atol=1e-5)
        assert trace.fired == [True] and trace.changed == [True]
        with intervene(tiny_llama, AddVector(1, vec, scale=0.0), batch=batch) as trace:
            tiny_llama.model(**batch.model_inputs())
        assert trace.fired == [True] and trace.changed == [False]
        with pytest.raises(InterventionError, match="unchanged"):
            trace.check(require_change=True)


# --------------------------------------------------------------------------------------------- safety


def test_hooks_removed_on_exception_and_unfired_edit_raises(tiny_llama):
    batch = encode(tiny_llama, PROMPTS)
    clean = next_token_logits(tiny_llama, batch)
    with pytest.raises(ValueError, match="boom"):
        with intervene(tiny_llama, Ablate("layer", 0), Ablate("head", 1, head=0), batch=batch):
            tiny_llama.model(**batch.model_inputs())
            raise ValueError("boom")
    assert _no_hooks(tiny_llama)
    assert torch.equal(next_token_logits(tiny_llama, batch), clean)
    with pytest.raises(InterventionError, match="never fired"):
        with intervene(tiny_llama, Ablate("mlp", 2), batch=batch):
            pass  # no forward pass ran
    assert _no_hooks(tiny_llama)
    with pytest.raises(InterventionError, match="out of range"):
        next_token_logits(tiny_llama, batch, Ablate("layer", 7))
    assert _no_hooks(tiny_llama)
    with pytest.raises(InterventionError, match="unknown method"):
        Ablate("layer", 0, method="zeros")


def test_patch_restores_clean_output_and_crosses_models(tiny):
    clean_b = encode(tiny, ["The capital of France is"])
    corrupt_b = encode(tiny, ["The capital of Spain is"])
    clean = next_token_logits(tiny, clean_b)
    corrupt = next_token_logits(tiny, corrupt_b)
    assert (clean - corrupt).abs().max() > 1e-4
    last = tiny.n_layers - 1
    patched = patch(tiny, clean_b, corrupt_b, "resid", last)
    assert torch.allclose(patched, clean, atol=1e-5)
    partial = patch(tiny, clean_b, corrupt_b, "resid", 0, positions="answer")
    assert not torch.allclose(partial, clean, atol=1e-5)
    twin = copy.copy(tiny)
    twin.model = copy.deepcopy(tiny.model)
    twin.fingerprint = "twin"
    across = patch(tiny, clean_b, corrupt_b, "resid", last, source_lm=twin)
    assert torch.allclose(across, clean, atol=1e-5)
    other = models.tiny("llama", n_layers=2, seed=5)  # another model of the same width (64)
    mixed = patch(tiny, clean_b, corrupt_b, "mlp", 0, source_lm=other)
    assert torch.isfinite(mixed).all() and not torch.allclose(mixed, corrupt, atol=1e-6)
    narrow = copy.copy(other)
    narrow.model = copy.deepcopy(other.model)
    with torch.no_grad():  # a source whose residual is 32 wide cannot be patched into a 64-wide model
        captured = capture(narrow, clean_b, [Site("resid", 0)])[Site("resid", 0)]
    from engine.interventions import Patch
    bad = Patch("resid", 0, type(captured)(captured.site, captured.values[..., :32], captured.batch))
    with pytest.raises(InterventionError, match="width"):
        next_token_logits(tiny, corrupt_b, bad)
    assert _no_hooks(tiny)


def test_fast_suffix_matches_full_forward_for_every_component(tiny):
    batch = encode(tiny, PROMPTS)
    run = clean_run(tiny, batch)
    assert torch.allclose(run.logits, next_token_logits(tiny, batch), atol=1e-5, rtol=0)
    ref = Reference(batch)
    for edit in (Ablate("layer", 1, "mean"), Ablate("resid", 2, "resample"), Ablate("attn", 0, "noise"),
                 Ablate("mlp", 1, positions="body"), Ablate("head", 2, head=3, method="mean"),
                 Ablate("module", 0, module="gate", method="resample", positions="last3")):
        plain = next_token_logits(tiny, batch, edit, reference=ref)
        if edit.component in ("layer", "resid"):
            hidden, _ = edit_residual(tiny, run, edit, reference=ref)
            fast = run_from(tiny, run, edit.layer + 1, hidden)
        else:
            fast = run_from(tiny, run, edit.layer, run.resid[edit.layer], edit, reference=ref)
        assert (plain - fast).abs().max().item() <= 1e-4, edit
        assert (kl(run.logits, plain) - kl(run.logits, fast)).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------------------------- metrics


def test_metrics_against_scipy():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 50, generator=gen), torch.randn(4, 50, generator=gen)
    pa, pb = torch.softmax(a, -1).numpy(), torch.softmax(b, -1).numpy()
    want = np.array([entropy(pa[i], pb[i]) for i in range(4)])
    assert np.allclose(metrics.kl(a, b).numpy(), want, atol=1e-5)
    assert torch.allclose(metrics.kl(a, a), torch.zeros(4), atol=1e-6)
    m = 0.5 * (pa + pb)
    want_js = np.array([0.5 * entropy(pa[i], m[i]) + 0.5 * entropy(pb[i], m[i]) for i in range(4)])
    assert np.allclose(metrics.js(a, b).numpy(), want_js, atol=1e-5)
    ids = torch.tensor([0, 3, -1, 7])
    lp = metrics.target_logprob(a, ids)
    assert torch.isnan(lp[2]) and abs(lp[1].item() - np.log(pa[1, 3])) < 1e-5
    assert metrics.topk_overlap(a, a, k=5).tolist() == [1.0] * 4
    ranks_a, ranks_b = set(a[0].topk(5).indices.tolist()), set(b[0].topk(5).indices.tolist())
    assert metrics.topk_overlap(a, b, k=5)[0].item() == pytest.approx(len(ranks_a & ranks_b) / 5)
    summary = metrics.effect_summary(a, b, ids)
    assert torch.equal(summary["kl"], metrics.kl(a, b)) and torch.isnan(summary["prob_change"][2])
    assert abs(summary["prob_change"][1].item() - (pb[1, 3] - pa[1, 3])) < 1e-5
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    x, y = torch.randn(2, 3, 50, generator=gen), torch.randn(2, 3, 50, generator=gen)
    per = metrics.kl(x, y)
    got = metrics.kl_over_positions(x, y, mask)
    assert torch.allclose(got, torch.stack([per[0, :2].mean(), per[1, 1:].mean()]), atol=1e-6)
