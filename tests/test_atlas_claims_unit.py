"""Unit tests of the atlas claims' measurement procedures (engine/studies/atlas.py), on tiny random models.

These check the *procedures* (samples, ties, restriction, the seed's no-op mean ablation, skip configurations,
verdict inputs); no claim verdict is ever computed on random weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from claims.plugin import record_both
from engine import models
from engine.atlas import atlas, prompt_overlap
from engine.studies import atlas as A
from engine.tasks import Example
from engine.verdicts import ClaimRevisedWarning, Recorder, Target, Verdict, load_catalogue

FAMILIES = ("alpha", "beta", "gamma")
WORDS = ("cat", "dog", "sun", "sea", "red", "big", "old", "new", "top", "map", "pen", "cup")


def pool(per_family: int = 6) -> list[Example]:
    out = []
    for f, family in enumerate(FAMILIES):
        for i in range(per_family):
            word = WORDS[(3 * f + i) % len(WORDS)]
            out.append(Example(id=f"{family}-{i}", family=family, split="short",
                               prompt=f"{family} {i}: {word} {word[::-1]} =", target=" x", scorer="exact"))
    return out


@pytest.fixture(scope="module")
def llama():
    return models.tiny("llama", n_layers=3, seed=0)


@pytest.fixture(scope="module")
def qwen():
    return models.tiny("qwen2", n_layers=3, seed=0)


def small_atlas(lm, examples, component, **kw):
    return atlas(lm, examples, component=component, template=A.TEMPLATE, n_resamples=200, seed=42, **kw)


# ------------------------------------------------------------------------------------------------ samples


def test_seed_protocol_sample_is_the_first_k_per_family_whatever_the_seed():
    examples = A.first_examples(2, suite=pool())
    assert [e.id for e in examples] == ["alpha-0", "alpha-1", "beta-0", "beta-1", "gamma-0", "gamma-1"]
    assert prompt_overlap([examples, A.first_examples(2, suite=pool())]) == 1.0


def test_rigorous_samples_differ_between_seeds_and_are_stratified():
    samples = [A.stratified_sample(s, 2, suite=pool()) for s in A.SEEDS]
    for s in samples:
        assert sorted(e.family for e in s) == sorted(FAMILIES * 2)
    assert prompt_overlap(samples) < 1.0
    assert prompt_overlap([samples[0], A.stratified_sample(A.SEEDS[0], 2, suite=pool())]) == 1.0


def test_first_examples_refuses_a_family_that_is_too_small():
    with pytest.raises(ValueError, match="family"):
        A.first_examples(7, suite=pool(6))


def test_examples_are_sorted_by_token_length(llama):
    ordered = A.by_length(llama, pool())
    lengths = [len(llama.tokenizer(e.prompt)["input_ids"]) for e in ordered]
    assert lengths == sorted(lengths) and sorted(e.id for e in ordered) == sorted(e.id for e in pool())


# ------------------------------------------------------------------------------------------------ ties and hubs


def test_residual_zeroing_in_a_bias_free_model_is_an_exact_tie(llama):
    """The seed's ablation: a zeroed residual stays zero (RMSNorm(0) = 0, no biases), so every layer gives the
    same KL; a bare argmax returns L0. Catalogue v3: the tie is where the erasure guard fired, so the method cannot
    separate layers on this architecture: a failed precondition (undecided), never "no single argmax"."""
    a = small_atlas(llama, pool(2), "resid")
    evidence = A.argmax_evidence(a)
    assert A.exact_tie(a) and a.argmax_layer == 0
    assert evidence.outcome.value == "undecided" and A.argmax_of(evidence) is None
    assert "cannot separate layers" in evidence.undecided and evidence.params["precondition"]
    assert evidence.details["tied_units"] == list(range(llama.n_layers)) and "exact tie" in evidence.statement
    assert a.information_erasing
    assert np.ptp(a.per_example, axis=1).max() < 1e-5  # the same KL at every layer, per prompt


def test_contribution_ablation_and_biased_models_do_not_tie(llama, qwen):
    assert not A.exact_tie(small_atlas(llama, pool(2), "layer"))
    assert not A.exact_tie(small_atlas(qwen, pool(2), "resid"))  # q/k/v biases rebuild a prompt-free output


def test_zero_ablation_does_not_depend_on_the_seed_so_reseeding_reuses_the_sweep(llama):
    a = small_atlas(llama, pool(2), "resid")
    b = atlas(llama, pool(2), component="resid", template=A.TEMPLATE, n_resamples=200, seed=137)
    assert np.array_equal(a.per_example, b.per_example)
    again = A.reseeded(a, 137)
    assert again.seed == 137 and np.array_equal(again.per_example, a.per_example)


def test_restricting_an_atlas_equals_sweeping_the_sub_suite(llama):
    full = small_atlas(llama, pool(2), "layer")
    sub = A.restrict(full, ["beta", "gamma"])
    direct = small_atlas(llama, [e for e in pool(2) if e.family in ("beta", "gamma")], "layer")
    assert sub.families == ["beta", "gamma"]
    np.testing.assert_allclose(sub.per_example, direct.per_example, rtol=1e-4, atol=1e-7)
    assert sub.argmax_layer == direct.argmax_layer
    with pytest.raises(ValueError):
        A.restrict(full, ["nope"])


def test_family_agreement_never_counts_an_exact_tie(llama):
    tie = small_atlas(llama, pool(2), "resid")
    agreement, agree, _ = A.hubs.family_agreement(tie, tie)
    assert agreement == 0.0 and agree == []
    real = small_atlas(llama, pool(2), "layer")
    assert A.hubs.family_agreement(real, real)[0] == 1.0


# ------------------------------------------------------------------------------------------------ ABL-MEAN


def test_the_seeds_mean_ablation_fires_everywhere_and_changes_nothing(llama):
    effects, fired, changed = A.ablation.seed_mean_ablation_effects(llama, pool(1))
    assert fired == llama.n_layers and changed == 0
    assert max(effects) < 1e-6


def test_residual_mean_ratios_are_per_layer_and_bounded(llama):
    ratios = A.ablation.residual_mean_ratios(llama, pool(2))
    assert set(ratios) == {"all", "first", "body", "answer", "per_example", "families", "body_ratio_pooled"}
    for key in ("all", "first", "body", "answer"):
        assert len(ratios[key]) == llama.n_layers
        assert all(0.0 <= v <= 1.0 + 1e-9 for v in ratios[key])
    # the pooled ratio of means (the counts cancel: ||sum|| / summed norms per layer, median over layers) ...
    assert np.isclose(ratios["body_ratio_pooled"], np.median(ratios["body"]))
    # ... and its jackknife pseudo-values, one per prompt, whose mean is the jackknife estimate of it
    assert len(ratios["per_example"]) == len(ratios["families"]) == len(pool(2))
    assert abs(np.mean(ratios["per_example"]) - ratios["body_ratio_pooled"]) < 0.5


# ------------------------------------------------------------------------------------------------ SKIP-ALL


def test_skip_configurations_cover_singles_thirds_and_every_other_layer():
    configs = A.skip_configs(30, singles=5)
    assert [c for c in configs if c.startswith("skip_L")] == ["skip_L0", "skip_L7", "skip_L14", "skip_L22", "skip_L29"]
    assert configs["skip_early_third"] == list(range(10)) and configs["skip_late_third"] == list(range(20, 30))
    assert configs["skip_mid_third"] == list(range(10, 20)) and configs["skip_mid_5"] == [13, 14, 15, 16, 17]
    assert configs["skip_every_other"] == list(range(1, 30, 2))
    assert len([c for c in A.skip_configs(4) if c.startswith("skip_L")]) == 4


def test_skipping_by_residual_zeroing_loses_more_than_removing_the_layer(llama):
    configs = A.skip_configs(llama.n_layers, singles=2)
    zeroed, groups, zeroed_ratio = A.skip_overlaps(llama, pool(1), configs, "resid")
    skipped, _, skipped_ratio = A.skip_overlaps(llama, pool(1), configs, "layer")
    assert set(zeroed) == set(configs) and sorted(groups) == sorted(FAMILIES)
    assert all(len(v) == len(groups) and all(0.0 <= x <= 1.0 for x in v) for v in zeroed.values())
    assert sum(map(sum, skipped.values())) > sum(map(sum, zeroed.values()))
    # the erasure guard: zeroing the residual of a bias-free model answers every prompt alike (catalogue v3:
    # information-erasing); removing a layer's contribution does not while some layer is left (with none left the
    # output depends only on the last token, which these prompts share: erasing too, and flagged)
    from engine.atlas import ERASE_RATIO

    assert set(zeroed_ratio) == set(configs) and all(r < ERASE_RATIO for r in zeroed_ratio.values()), zeroed_ratio
    some_left = [name for name, layers in configs.items() if len(set(layers)) < llama.n_layers]
    assert some_left and all(skipped_ratio[name] > ERASE_RATIO for name in some_left), sorted(skipped_ratio.items())
    assert all(skipped_ratio[name] < ERASE_RATIO for name in configs if name not in some_left)


# ------------------------------------------------------------------------------------------------ findings


def test_finding_record_drops_unbounded_intervals_and_contrast_explains_disagreement():
    seed = A.Finding("seed", {"x": 1}, holds=True, ci={"gap": (0.0, 1.0), "wide": (float("-inf"), float("inf"))})
    rigorous = A.Finding("rigorous", {"x": 2}, holds=False)
    A.contrast(seed, rigorous, "because of step S")
    record = seed.record()
    assert record["ci"] == {"gap": (0.0, 1.0)}
    assert "step S" in record["notes"] and "step S" in rigorous.record()["notes"]
    agreeing = A.Finding("seed", {}, holds=True)
    A.contrast(agreeing, A.Finding("rigorous", {}, holds=True), "never shown")
    assert agreeing.notes == []
    revised = A.Finding("seed", {}, holds=True, revised=True, reason="identical hubs").record()
    assert revised["revised"] and revised["reason"] == "identical hubs"


# ------------------------------------------------------------------------------------------------ recording


class _Skip(Exception):
    pass


class _SkippingRecorder(Recorder):
    """Like the claims plugin's recorder: ``untested`` also stops the test."""

    def untested(self, reason, protocols=None):
        super().untested(reason, protocols)
        raise _Skip(reason)


def _recorder(cls=Recorder, claim_id="STEER-TRANSFER", model="smollm2-135m+gemma3-270m"):
    return cls(Target(load_catalogue()[claim_id], model, "cpu"))


def test_record_both_records_seed_then_rigorous_and_an_untested_protocol_without_stopping():
    claim = _recorder(_SkippingRecorder)
    seed = A.Finding.not_run("seed", "the seed never ran it")
    rigorous = A.Finding("rigorous", {"x": 1.0}, holds=True, ci={"x": (0.5, 1.5)}, seeds=[0], notes=["a", "b"],
                         expectation="x above 0")
    record_both(claim, seed, rigorous)
    assert [(r.protocol, r.verdict) for r in claim.records] == [("seed", Verdict.UNTESTED),
                                                                 ("rigorous", Verdict.CONFIRMED)]
    assert claim.records[0].reason == "the seed never ran it"
    r = claim.records[1]
    assert (r.figures, r.ci, r.seeds, r.notes, r.expectation) == ({"x": 1.0}, {"x": [0.5, 1.5]}, [0], "a b",
                                                                  "x above 0")


def test_record_both_skips_the_test_after_recording_when_a_finding_says_so():
    claim = _recorder(_SkippingRecorder, "QUANT-SPEED", "smollm2-135m")
    with pytest.raises(_Skip, match="rigorous reason"):
        record_both(claim, A.Finding.not_run("seed", "seed reason"),
                    A.Finding.not_run("rigorous", "rigorous reason", skip_test=True))
    assert [(r.protocol, r.verdict, r.reason) for r in claim.records] == [
        ("seed", Verdict.UNTESTED, "seed reason"), ("rigorous", Verdict.UNTESTED, "rigorous reason")]
    both = _recorder(_SkippingRecorder, "QUANT-KL", "smollm2-135m")  # both untested, but the test goes on
    record_both(both, A.Finding.not_run("seed", "a"), A.Finding.not_run("rigorous", "b"))
    assert [r.verdict for r in both.records] == [Verdict.UNTESTED, Verdict.UNTESTED]
    with pytest.raises(ValueError, match="findings of 'rigorous' and 'seed'"):
        record_both(_recorder(), A.Finding("rigorous", {}, True), A.Finding("seed", {}, True))


def test_a_finding_record_carries_a_documented_revision_and_the_expectation():
    claim = _recorder(claim_id="HUB-BREADTH", model="smollm2-135m")
    with pytest.warns(ClaimRevisedWarning):
        record_both(claim, A.Finding("seed", {"h": 1}, holds=True, revised=True, reason="same hub"),
                    A.Finding("rigorous", {"h": 1}, holds=False))
    assert [r.verdict for r in claim.records] == [Verdict.REVISED, Verdict.FAILED]
    assert "same hub" in claim.records[0].reason and claim.records[0].expectation == claim.claim.rule

# The rules' outcomes (HUB-*, OWN-ATLAS, POS-ANSWER, ABL-MEAN, SKIP-ALL) and the planted hub: tests/test_atlas_rules.py
