"""Unit tests of the LoRA engine (engine/lora) on tiny random-weight models and a shape-only Qwen2.5-0.5B.

Covered: parameter counting (PEFT vs the hand formula r*(in+out), and the seed's own figures), layer selection
per strategy, label masking and padding, determinism, attach/unload leaving the base pristine, adapter
save/load round trip, checkpoint reloading through the PEFT wrapper (block G3's bug class), the recovery
DataLoader on odd batch sizes and empty families (block G4's bug class), layer skipping, localisation,
lock-in and the content-addressed cache.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import lora, models
from engine.tasks import Example


def make_examples(families=("json_schema", "factual_recall"), per_family=5) -> list[Example]:
    """Small hand-written examples with prompts and targets of varying length (so batches need padding)."""
    out = []
    for family in families:
        for i in range(per_family):
            prompt = f"[{family[:4]}] item {i}: " + "x" * (i % 3) + " ->"
            out.append(Example(id=f"{family}-{i}", family=family, split="short", prompt=prompt,
                               target=" " + "ab" * (1 + i % 2) + str(i), scorer="exact"))
    return out


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_llama() -> models.LoadedModel:
    return models.tiny("llama", n_layers=4)


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return make_examples()


FAST = lora.TrainConfig(steps=6, batch_size=3, lr=5e-3, warmup_steps=2)


def logits_of(lm, examples):
    return lora.answer_logits(lm, examples)


# ------------------------------------------------------------------------------------------------ parameters


def test_parameter_count_matches_peft_and_hand_formula(tiny_llama):
    cfg = tiny_llama.model.config
    d, inter = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    per_module = {"q": d + d, "k": d + kv, "v": d + kv, "o": d + d, "gate": d + inter, "up": d + inter,
                  "down": inter + d}
    for layers, modules in [((1, 3), ("o", "up", "down")), (tuple(range(4)), lora.ALL_LINEAR), ((0,), ("k",))]:
        target = lora.LoraTarget(layers, modules, r=8)
        by_hand = len(layers) * sum(8 * per_module[m] for m in modules)
        with lora.attached(tiny_llama, target) as alm:
            counted = lora.count_parameters(alm, target)
            peft_trainable, peft_total = alm.model.get_nb_trainable_parameters()
        assert counted.trainable == peft_trainable == counted.formula == by_hand
        assert counted.total == peft_total
        assert counted.percent == pytest.approx(100 * by_hand / peft_total)
        assert counted.n_modules == len(layers) * len(modules)


def test_parameter_counts_reproduce_the_seeds_qwen05b_figures():
    """Shape-only Qwen2.5-0.5B (meta device): PEFT and the formula give the seed's 319,488 / 4,399,104 etc."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.requires_grad_(False)
    spec = models.ModelSpec(key="qwen2.5-0.5b-shape", source="tiny", arch="qwen2", n_layers=24, scale="", tier="test")
    lm = models.LoadedModel(model=model, tokenizer=None, spec=spec, n_layers=24, d_model=896, arch="qwen2",
                            dtype=torch.float32, device=torch.device("meta"), fingerprint="shape",
                            adapter=models.adapter_for("qwen2"))
    counts = {}
    for name, target in {"seed": lora.LoraTarget(lora.seed_layers(24), lora.MODULE_GROUPS["seed"]),
                         "all": lora.LoraTarget(tuple(range(24)), lora.ALL_LINEAR),
                         "o": lora.LoraTarget(tuple(range(24)), ("o",)),
                         "gate": lora.LoraTarget(tuple(range(24)), ("gate",))}.items():
        with lora.attached(lm, target) as alm:
            counts[name] = lora.count_parameters(alm, target)
    assert counts["seed"].trainable == 319_488 and round(counts["seed"].percent, 3) == 0.065
    assert counts["all"].trainable == 4_399_104 and round(counts["all"].percent, 2) == 0.88
    assert counts["o"].trainable == 344_064 and counts["gate"].trainable == 1_105_920
    assert counts["all"].trainable / counts["seed"].trainable == pytest.approx(13.77, abs=0.01)


# ------------------------------------------------------------------------------------------------ layer choice


def test_layer_selection_per_strategy():
    assert lora.seed_layers(24) == (2, 7, 9)
    assert lora.seed_layers(8) == (2, 7)  # 9 clipped to 7, duplicate removed
    assert lora.seed_layers(2) == (1,)
    importance = [0.1, 5.0, 0.3, 5.0, 2.0, 0.0]
    assert lora.select_layers("atlas", 6, k=3, importance=importance) == (1, 3, 4)
    assert lora.atlas_layers([1.0, 1.0, 1.0], 2) == (0, 1)  # ties go to the lower index, deterministically
    assert lora.least_important_layers(importance, 2) == (0, 5)
    assert lora.least_important_layers(importance, 2, exclude=[5]) == (0, 2)
    assert lora.select_layers("all", 4) == (0, 1, 2, 3)
    first, again = lora.select_layers("random", 30, k=3, seed=42), lora.random_layers(30, 3, 42)
    assert first == again and len(set(first)) == 3 and all(0 <= l < 30 for l in first)
    draws = lora.random_draws(30, 3, 6, seed=1)
    assert len(draws) == len(set(draws)) == 6
    assert len(lora.random_draws(4, 3, 10)) == math.comb(4, 3)  # no more distinct draws than exist
    with pytest.raises(lora.LoraError, match="importance"):
        lora.select_layers("atlas", 6, k=2)
    with pytest.raises(lora.LoraError, match="6 values"):
        lora.select_layers("atlas", 5, k=2, importance=importance)
    with pytest.raises(lora.LoraError, match="not finite"):
        lora.atlas_layers([1.0, float("nan")], 1)
    with pytest.raises(lora.LoraError, match="unknown layer strategy"):
        lora.select_layers("best", 6)


def test_random_matched_has_the_same_parameter_count_and_adapts_only_its_layers(tiny_llama):
    atlas = lora.LoraTarget(lora.atlas_layers([0.0, 3.0, 1.0, 2.0], 2), ("o", "up", "down"), label="atlas")
    rand = lora.LoraTarget(lora.random_layers(4, 2, seed=7), ("o", "up", "down"), label="random")
    counts = []
    for target in (atlas, rand):
        with lora.attached(tiny_llama, target) as alm:
            counts.append(lora.count_parameters(alm, target).trainable)
            by_layer = lora.lora_layers_by_layer(alm)
            assert sorted(by_layer) == list(target.layers)
            names = {name.rsplit(".", 1)[-1] for name, m in alm.model.named_modules() if hasattr(m, "lora_A")}
            assert names == {"o_proj", "up_proj", "down_proj"}
    assert counts[0] == counts[1]
    with pytest.raises(lora.LoraError, match="layer 9"):
        lora.lora_config(tiny_llama, lora.LoraTarget((9,), ("o",)))
    with pytest.raises(lora.LoraError, match="unknown module"):
        lora.lora_config(tiny_llama, lora.LoraTarget((1,), ("o_proj",)))


# ------------------------------------------------------------------------------------------------ data


def test_labels_are_masked_on_prompt_and_padding(tiny_llama, examples):
    tok = tiny_llama.tokenizer
    encoded = [lora.encode(tok, ex, append_eos=True) for ex in examples[:4]]
    batch = lora.collate(encoded, pad=0)
    for row, item in enumerate(encoded):
        n_target = len(tok(examples[row].target, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        assert item.n_target == n_target
        labelled = (batch.labels[row] != lora.IGNORE).nonzero().flatten().tolist()
        assert labelled == list(range(item.n_prompt, len(item.input_ids)))  # not the prompt, not the padding
        assert int(batch.predict_mask[row].sum()) == n_target
        assert int(batch.text_mask[row].sum()) == n_target - 1  # EOS is trained on but not part of exact match
        assert int(batch.attention_mask[row].sum()) == len(item.input_ids)
        assert batch.answer_pos[row] == item.n_prompt - 1
    assert torch.equal(batch.targets, batch.labels[batch.labels != lora.IGNORE])
    plain = lora.encode(tok, examples[0])  # default: no EOS, the loss is on the target text only
    assert plain.n_eos == 0 and plain.n_target == encoded[0].n_target - 1


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_batched_loss_equals_one_by_one(arch, examples):
    """Padding must not change any example's loss: a padded batch equals each example alone."""
    lm = models.tiny(arch, n_layers=2)
    together = lora.evaluate(lm, examples, batch_size=len(examples))
    alone = lora.evaluate(lm, examples, batch_size=1)
    for a, b in zip(together.scores, alone.scores):
        assert a.loss == pytest.approx(b.loss, abs=1e-5) and a.n_tokens == b.n_tokens
    completions_batched = lora.greedy_completions(lm, examples[:4], batch_size=4, max_new_tokens=4)
    completions_single = lora.greedy_completions(lm, examples[:4], batch_size=1, max_new_tokens=4)
    assert completions_batched == completions_single


def test_teacher_forced_exact_match_agrees_with_greedy_generation(tiny_llama, examples):
    """tf_exact (one forward pass) is True exactly when greedy decoding starts with the target."""
    completions = lora.greedy_completions(tiny_llama, examples, max_new_tokens=3)
    own = [Example(id=ex.id, family=ex.family, split=ex.split, prompt=ex.prompt, target=text, scorer="exact")
           for ex, text in zip(examples, completions) if text.strip() and text.isprintable()]
    other = [Example(id=ex.id, family=ex.family, split=ex.split, prompt=ex.prompt,
                     target=("Q" if text[:1] != "Q" else "Z") + text[1:], scorer="exact")
             for ex, text in zip(examples, completions) if text.strip() and text.isprintable()]
    assert len(own) >= 5  # the byte-level tokenizer round-trips printable completions exactly
    assert lora.evaluate(tiny_llama, own).tf_exact() == 1.0
    assert lora.evaluate(tiny_llama, other).tf_exact() == 0.0
    result = lora.evaluate(tiny_llama, examples[:6], generate=True)
    for score, ex in zip(result.scores, examples):
        assert score.tf_exact == score.completion.startswith(ex.target)
        assert score.correct is not None


def test_recovery_loader_handles_odd_batch_sizes(tiny_llama):
    examples = make_examples(per_family=7)[:7]  # 7 examples of one family
    loader = lora.make_loader(tiny_llama.tokenizer, examples, batch_size=3, seed=0)
    sizes, seen = [], []
    for batch in loader:
        sizes.append(len(batch))
        seen.extend(batch.example_ids)
        assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape
        assert bool((batch.labels[batch.attention_mask == 0] == lora.IGNORE).all())  # padding carries no loss
    assert sorted(sizes, reverse=True) == [3, 3, 1] and len(loader) == 3
    assert sorted(seen) == sorted(ex.id for ex in examples)  # every example exactly once per epoch
    # more steps than one epoch, batch size that does not divide the set: training cycles through epochs
    run = lora.train(tiny_llama, examples, lora.LoraTarget((3,), ("o",)),
                     lora.TrainConfig(steps=7, batch_size=2, warmup_steps=1))
    assert len(run.losses) == 7 and all(math.isfinite(x) for x in run.losses)
    single = lora.make_loader(tiny_llama.tokenizer, examples[:1], batch_size=8)
    assert [len(b) for b in single] == [1]


def test_recovery_loader_refuses_empty_data(tiny_llama, examples):
    with pytest.raises(lora.LoraDataError, match="'code_syntax' has no examples.*factual_recall"):
        lora.make_loader(tiny_llama.tokenizer, examples, batch_size=2, families=["json_schema", "code_syntax"])
    with pytest.raises(lora.LoraDataError, match="empty"):
        lora.make_loader(tiny_llama.tokenizer, [], batch_size=2)
    with pytest.raises(lora.LoraDataError, match="batch_size"):
        lora.make_loader(tiny_llama.tokenizer, examples, batch_size=0)
    no_target = Example(id="u1", family="custom", split="user", prompt="hello", target="", scorer="none")
    with pytest.raises(lora.LoraDataError, match="'u1'.*no target"):
        lora.make_loader(tiny_llama.tokenizer, [no_target], batch_size=1)
    chosen = lora.make_loader(tiny_llama.tokenizer, examples, batch_size=4, families=["json_schema"])
    assert {f for b in chosen for f in b.families} == {"json_schema"}


def test_max_len_truncates_the_prompt_from_the_left_and_keeps_the_target(examples):
    lm = models.tiny("gemma3", n_layers=2)  # adds BOS: it must survive truncation
    full = lora.encode(lm.tokenizer, examples[0])
    cut = lora.encode(lm.tokenizer, examples[0], max_len=10)
    assert len(cut.input_ids) == 10 and cut.truncated == len(full.input_ids) - 10
    assert cut.input_ids[0] == lm.tokenizer.bos_token_id
    assert cut.input_ids[-cut.n_target:] == full.input_ids[-full.n_target:]
    with pytest.raises(lora.LoraDataError, match="no room"):
        lora.encode(lm.tokenizer, examples[0], max_len=4)


# ------------------------------------------------------------------------------------------------ training


def test_training_is_deterministic_for_a_seed(tiny_llama, examples):
    target = lora.LoraTarget((1, 2), ("o", "up", "down"))
    first = lora.train(tiny_llama, examples, target, FAST)
    second = lora.train(tiny_llama, examples, target, FAST)
    other = lora.train(tiny_llama, examples, target, lora.TrainConfig(**{**FAST.to_dict(), "seed": 1}))
    assert first.losses == second.losses
    assert all(torch.equal(first.state[k], second.state[k]) for k in first.state)
    assert first.losses != other.losses
    assert len(first.losses) == FAST.steps and first.lrs[0] < first.lrs[FAST.warmup_steps]  # warm-up ramps up


def test_attach_and_train_leave_the_base_model_pristine(tiny_llama, examples):
    before = logits_of(tiny_llama, examples)
    run = lora.train(tiny_llama, examples, lora.LoraTarget((0, 1, 2, 3), lora.ALL_LINEAR), FAST)
    assert not lora.is_adapted(tiny_llama.model)
    assert not any(p.requires_grad for p in tiny_llama.model.parameters())
    assert torch.equal(logits_of(tiny_llama, examples), before)
    with lora.adapted(tiny_llama, run) as alm:
        assert alm.fingerprint != tiny_llama.fingerprint  # caches must not confuse adapted and base model
        assert not torch.allclose(logits_of(alm, examples), before)
        with pytest.raises(lora.LoraError, match="already carries"):
            with lora.attached(tiny_llama, run.target):
                pass
    assert torch.equal(logits_of(tiny_llama, examples), before)


def test_save_load_round_trip_gives_identical_logits(tiny_llama, examples, tmp_path):
    target = lora.LoraTarget((1, 3), ("q", "v", "o"))
    run = lora.train(tiny_llama, examples, target, FAST, out_dir=tmp_path)
    with lora.adapted(tiny_llama, run) as alm:
        in_memory = logits_of(alm, examples)
        alm.model.save_pretrained(str(tmp_path / "again"))
    for directory in (run.adapter_dir, tmp_path / "again"):
        with lora.from_saved(tiny_llama, directory) as alm:
            assert torch.equal(logits_of(alm, examples), in_memory)
            assert lora.count_parameters(alm, target).formula == run.params.formula
    with pytest.raises(lora.LoraError, match="not a PEFT adapter"):
        with lora.from_saved(tiny_llama, tmp_path):
            pass


def test_checkpoints_reload_through_the_peft_wrapper(examples, tmp_path):
    """Block G3's bug class: each checkpoint reloads on a clean base, layers reached via the ArchAdapter."""
    lm = models.tiny("qwen2", n_layers=3)
    config = lora.TrainConfig(steps=8, batch_size=4, lr=1e-2, warmup_steps=1, checkpoints=(0.1, 0.25, 0.5, 1.0))
    run = lora.train(lm, examples, lora.LoraTarget((0, 1, 2), lora.ALL_LINEAR), config, out_dir=tmp_path)
    assert sorted(run.checkpoints) == [0.1, 0.25, 0.5, 1.0]
    assert [p.name for _, p in sorted(run.checkpoints.items())] == ["step-00001", "step-00002", "step-00004",
                                                                     "step-00008"]
    states = []
    for fraction in sorted(run.checkpoints):
        with lora.from_saved(lm, run.checkpoints[fraction]) as alm:
            layers = alm.adapter.layers(alm.model)  # through PeftModel -> LoraModel -> CausalLM
            assert len(layers) == lm.n_layers and alm.n_layers == 3
            assert sorted(lora.lora_layers_by_layer(alm)) == [0, 1, 2]
            assert alm.adapter.final_norm(alm.model) is lm.adapter.final_norm(lm.model)
            states.append(lora.adapter_state(alm))
            with pytest.raises(AttributeError):  # the naive path the seed took does not reach the layers
                alm.model.model.layers
        assert not lora.is_adapted(lm.model)  # nothing stacks from one checkpoint to the next
    assert all(torch.equal(states[-1][k], run.state[k]) for k in run.state)
    assert not all(torch.equal(states[0][k], states[-1][k]) for k in run.state)


def test_train_cached_reuses_the_stored_run(tiny_llama, examples, tmp_path):
    target = lora.LoraTarget((2,), ("o",))
    config = lora.TrainConfig(steps=3, batch_size=4, warmup_steps=1, checkpoints=(0.5, 1.0))
    first = lora.train_cached(tiny_llama, examples, target, config, cache_dir=tmp_path)
    second = lora.train_cached(tiny_llama, examples, target, config, cache_dir=tmp_path)
    assert first.losses == second.losses and first.params == second.params
    assert all(torch.equal(first.state[k], second.state[k]) for k in first.state)
    assert sorted(second.checkpoints) == [0.5, 1.0] and all(p.is_dir() for p in second.checkpoints.values())
    assert len(list(tmp_path.glob(f"{tiny_llama.key}-*/run.json"))) == 1
    changed = lora.TrainConfig(**{**config.to_dict(), "lr": 1e-3})
    assert lora.cache_key(tiny_llama, examples, target, changed) != lora.cache_key(tiny_llama, examples, target, config)


# ------------------------------------------------------------------------------------------------ analyses


def test_depth_deciles():
    assert lora.depth_deciles(30) == [[3 * d, 3 * d + 1, 3 * d + 2] for d in range(10)]
    assert lora.depth_deciles(18)[9] == [16, 17]  # the final 10% of an 18-layer model
    assert sorted(l for group in lora.depth_deciles(18) for l in group) == list(range(18))


def test_localise_finds_effects_only_where_the_adapter_is(tiny_llama, examples):
    run = lora.train(tiny_llama, examples, lora.LoraTarget((1, 3), ("o", "down")), FAST)
    with lora.adapted(tiny_llama, run) as alm:
        loc = lora.localise(alm, examples)
        after = logits_of(alm, examples)
    assert loc.effect[0] == loc.effect[2] == 0.0 and loc.effect[1] > 0 and loc.effect[3] > 0
    assert sum(loc.decile_share) == pytest.approx(1.0)
    assert loc.total > 0 and loc.largest_decile in (3, 8)  # 4 layers: layer 1 is in decile 3, layer 3 in decile 8
    with lora.adapted(tiny_llama, run) as alm:  # the fast path (suffix re-run) equals one full forward per layer
        plain = lora.localise(alm, examples, fast=False)
    assert np.abs(np.asarray(loc.per_example) - np.asarray(plain.per_example)).max() <= 1e-5
    assert loc.total == pytest.approx(plain.total)
    # the per-layer switch is undone: the adapted model is unchanged after localisation
    with lora.adapted(tiny_llama, run) as alm:
        assert torch.equal(logits_of(alm, examples), after)


def skip_importance(lm: models.LoadedModel, examples) -> list[float]:
    """A simple layer importance for tests: KL(full || layer removed) at the answer position."""
    full = logits_of(lm, examples)
    values = []
    for layer in range(lm.n_layers):
        with lora.skipped(lm, [layer]):
            values.append(float(lora.kl_divergence(full, logits_of(lm, examples)).mean()))
    return values


def test_skipped_layers_are_identities_and_are_restored(examples):
    lm = models.tiny("gemma3", n_layers=3)
    before = logits_of(lm, examples)
    with lora.skipped(lm, [0, 1, 2]):
        hidden = lm.adapter.embed(lm.model)(torch.tensor([lm.tokenizer("hi")["input_ids"]]))  # Gemma scales inside
        expected = lm.model.lm_head(lm.adapter.final_norm(lm.model)(hidden))[0, -1]
        got = lm.model(input_ids=torch.tensor([lm.tokenizer("hi")["input_ids"]])).logits[0, -1]
        assert torch.allclose(got, expected, atol=1e-4)  # no layer left: logits = head(norm(embedding))
    with lora.skipped(lm, [1]):
        assert not torch.allclose(logits_of(lm, examples), before)
    assert torch.equal(logits_of(lm, examples), before)
    with pytest.raises(lora.LoraError, match="within 0..2"):
        with lora.skipped(lm, [3]):
            pass


def test_lock_in_compares_checkpoint_atlases_with_the_final_one(tiny_llama, examples, tmp_path):
    config = lora.TrainConfig(steps=8, batch_size=5, lr=2e-2, warmup_steps=1, checkpoints=(0.25, 0.5, 1.0))
    run = lora.train(tiny_llama, examples, lora.LoraTarget((0, 1, 2, 3), lora.ALL_LINEAR), config, out_dir=tmp_path)
    calls = []

    def importance(alm):
        calls.append(lora.is_adapted(alm.model))
        return skip_importance(alm, examples[:4])

    result = lora.lock_in(tiny_llama, run, importance, k=2, threshold=1.0)
    assert calls == [True, True, True, False]  # three checkpoints, then the base model
    assert result.fractions == [0.25, 0.5, 1.0] and result.steps == [2, 4, 8]
    assert result.overlap[-1] == result.jaccard[-1] == 1.0 and result.spearman[-1] == pytest.approx(1.0)
    assert all(len(top) == 2 for top in result.top)
    assert result.lock_in_fraction in result.fractions
    assert all(result.overlap[i] >= 1.0 for i in range(result.fractions.index(result.lock_in_fraction),
                                                        len(result.fractions)))
    assert lora.overlap_at_k([3, 2, 1, 0], [0, 2, 1, 3], 2) == (0.5, 1 / 3)


def test_recovered_fraction_and_skip_recover(tiny_llama, examples):
    assert lora.recovered_fraction(full=1.0, skipped_value=3.0, recovered=1.5) == pytest.approx(0.75)
    assert lora.recovered_fraction(full=1.0, skipped_value=1.0, recovered=0.5) is None  # nothing to recover
    config = lora.TrainConfig(steps=10, batch_size=5, lr=1e-2, warmup_steps=1)
    result = lora.skip_recover(tiny_llama, examples, examples, [1], modules=("o", "down"), config=config,
                               label="test", cache=False)
    assert result.skipped_layers == [1] and result.trainable > 0
    assert result.recovered_loss < result.skipped_loss  # the recovery finetune lowered the loss
    assert len(result.recovered_losses) == len(examples) == len(result.families)  # per example, for the decision
    assert float(sum(result.recovered_losses) / len(examples)) == pytest.approx(result.recovered_loss)
    if result.recovered_fraction is not None:
        assert result.recovered_fraction == pytest.approx(
            (result.skipped_loss - result.recovered_loss) / (result.skipped_loss - result.full_loss))
    assert not lora.is_adapted(tiny_llama.model)
    assert not any(isinstance(m, lora.SkippedLayer) for m in tiny_llama.model.modules())


# ------------------------------------------------------------------------------------------------ plans and draws


def test_random_draws_start_with_the_seed_draw_and_avoid_the_atlas_set():
    seed_draw = lora.random_layers(30, 3, 42)
    atlas = (27, 28, 29)
    draws = lora.random_draws(30, 3, 5, seed=0, first=[seed_draw], avoid=[atlas])
    assert draws[0] == seed_draw and atlas not in draws and len(set(draws)) == 5
    assert sorted(lora.random_draws(3, 2, 10, avoid=[(0, 1)])) == [(0, 2), (1, 2)]  # all that exist, but the avoided
    with pytest.raises(lora.LoraError, match="first draw"):
        lora.random_draws(30, 3, 2, first=[(1, 2)])


def test_plan_overrides_and_disjoint_held_out_examples():
    plan = lora.plan_for("cpu", {"steps": 5, "min_draws": 10, "cpu": {"n_eval": 2}})
    assert plan.steps == 5 and plan.n_eval == 2 and plan.tier == "cpu"
    assert lora.plan_for("gpu").steps == 100 and lora.plan_for("gpu").lr == 2e-4  # the seed's own setting
    config = plan.train_config()
    assert config.checkpoints == plan.checkpoints and 0.1 in config.checkpoints and config.max_len == plan.max_len
    try:
        train, held = lora.split_examples(plan)
    except Exception as exc:  # the suite fixtures are generated by engine.tasks.generate
        pytest.skip(f"task suite not available: {exc}")
    assert {ex.id for ex in train}.isdisjoint(ex.id for ex in held)
    for family in plan.families:
        assert sum(ex.family == family for ex in train) == plan.n_train
        assert sum(ex.family == family for ex in held) == plan.n_eval


def test_matched_ranks_match_parameter_counts_within_the_tolerance(tiny_llama):
    modules = ("o", "q", "k", "v", "gate", "up", "down")
    layers = tuple(range(tiny_llama.n_layers))
    ranks, counts = lora.matched_ranks(tiny_llama, modules, layers, r=8, tolerance=0.05)
    assert set(ranks) == set(modules) and max(counts.values()) <= 1.05 * min(counts.values())
    for m in modules:  # the hand formula is what PEFT counts (test_parameter_count_matches_peft_and_hand_formula)
        assert lora.expected_parameters(tiny_llama, lora.LoraTarget(layers, (m,), ranks[m]))[0] == counts[m]
    with pytest.raises(lora.LoraError, match="within"):
        lora.matched_ranks(tiny_llama, modules, layers, r=1, tolerance=0.0, max_r=1)


def test_padding_labels_unmasked_as_the_seed_trained(tiny_llama, examples):
    batch = lora.batches(tiny_llama.tokenizer, examples[:3], batch_size=3)[0]
    pad = lora.data.pad_id(tiny_llama.tokenizer)
    seed = lora.with_padding_labels(batch, pad, width=batch.input_ids.shape[1] + 4)
    assert seed.input_ids.shape[1] == batch.input_ids.shape[1] + 4
    assert torch.equal(seed.attention_mask[:, :batch.input_ids.shape[1]], batch.attention_mask)
    lengths = batch.attention_mask.sum(1)
    for row in range(3):  # the prompt stays masked; the target and every padding position carry a loss
        assert not seed.predict_mask[row, :batch.answer_pos[row]].any()
        assert seed.predict_mask[row, int(lengths[row]) - 1:-1].all() and not seed.predict_mask[row, -1]
    assert seed.n_target_tokens > batch.n_target_tokens and (seed.targets == pad).sum() > 0
    padded = lora.TrainConfig(steps=2, batch_size=3, lr=5e-3, warmup_steps=0, pad_labels=True, max_len=40)
    run = lora.train(tiny_llama, examples, lora.LoraTarget((0,), ("o",)), padded)
    assert len(run.losses) == 2 and all(math.isfinite(v) for v in run.losses)
    assert lora.seed_config(FAST).pad_labels and not FAST.pad_labels


def test_lock_in_keeps_per_prompt_overlaps(tiny_llama, examples, tmp_path):
    config = lora.TrainConfig(steps=4, batch_size=5, lr=2e-2, warmup_steps=1, checkpoints=(0.25, 1.0))
    run = lora.train(tiny_llama, examples, lora.LoraTarget((0, 1, 2, 3), ("o",)), config, out_dir=tmp_path)

    def per_prompt(alm):
        return [skip_importance(alm, [ex]) for ex in examples[:3]]  # [3 prompts, 4 layers]

    result = lora.lock_in(tiny_llama, run, per_prompt, k=2, threshold=1.0)
    assert len(result.prompt_overlap) == 2 and all(len(o) == 3 for o in result.prompt_overlap)
    assert result.prompt_overlap[-1] == [1.0, 1.0, 1.0]  # the final checkpoint agrees with itself on every prompt
    assert len(result.base_prompt_overlap) == 3 and all(0.0 <= o <= 1.0 for o in result.base_prompt_overlap)


def test_engine_atlas_runs_on_a_reloaded_checkpoint(examples, tmp_path):
    """LOCKIN's path: engine.atlas on a model loaded with PeftModel.from_pretrained (block G3's bug class)."""
    from engine.atlas import atlas

    lm = models.tiny("llama", n_layers=3)
    config = lora.TrainConfig(steps=4, batch_size=5, lr=5e-2, warmup_steps=1, checkpoints=(0.5, 1.0))
    run = lora.train(lm, examples, lora.LoraTarget((0, 1, 2), lora.ALL_LINEAR), config, out_dir=tmp_path)
    base = atlas(lm, examples[:4], method="zero", component="layer").layer_effect
    with lora.from_saved(lm, run.checkpoints[1.0]) as alm:
        adapted = atlas(alm, examples[:4], method="zero", component="layer")
    assert adapted.fingerprint != lm.fingerprint and len(adapted.layer_effect) == 3
    assert not torch.allclose(torch.tensor(adapted.layer_effect), torch.tensor(base))


def test_logits_fall_back_when_boolean_logits_to_keep_is_unsupported(tiny_llama, examples):
    """transformers < 5.2x indexes with logits_to_keep and fails on a boolean mask: the loss must not change."""
    from engine.lora import evaluation

    class OldStyle(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *, logits_to_keep=0, **kwargs):
            if isinstance(logits_to_keep, torch.Tensor):
                raise IndexError("too many indices for tensor of dimension 3")
            return self.inner(**kwargs)

    batch = lora.collate(lora.encode_all(tiny_llama.tokenizer, examples[:4]), pad=0)
    new = evaluation.batch_loss(tiny_llama.model, batch)
    old = evaluation.batch_loss(OldStyle(tiny_llama.model), batch)
    assert evaluation._MASK_LOGITS[OldStyle] is False and torch.allclose(new, old, atol=1e-6)


def test_every_lora_claim_runs_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    """The five procedures on a tiny model under the smoke plan: both protocols, findings with evidence (below the
    rules' minimum n, so every decided finding is INCONCLUSIVE) or UNTESTED for the blocks the seed never ran."""
    from engine.decisions import Evidence, Outcome
    from engine.studies import lora as L
    from engine.verdicts import load_catalogue

    monkeypatch.setenv("MI_ATLAS_CACHE", str(tmp_path))
    lm = models.tiny("llama", n_layers=10)  # every depth decile holds a layer (LORA-LATE)
    plan = lora.plan_for("cpu", {"plan": "smoke", "max_len": 400})  # the tiny tokenizer: ~1 token per character
    bench = lora.LoraBench(lm, plan)
    catalogue = load_catalogue()
    procedures = {"LORA-ATLAS": L.lora_atlas, "LORA-OPROJ": L.lora_oproj, "LORA-LATE": L.lora_late,
                  "LOCKIN": L.lockin, "SKIP-RECOVER": L.skip_recover}
    for claim_id, procedure in procedures.items():
        seed, rigorous = procedure(bench, catalogue[claim_id].params)
        for finding in (seed, rigorous):
            if finding.untested:
                assert claim_id in ("LOCKIN", "SKIP-RECOVER") and finding.protocol == "seed"
                continue
            assert isinstance(finding.holds, Evidence), claim_id
            if claim_id != "LORA-LATE":  # below their minimum runs / inside warm-up; LORA-LATE has no unit minimum
                assert finding.holds.outcome is Outcome.UNDECIDED or finding.undecided, (claim_id,
                                                                                          finding.holds.statement)


def test_each_training_seed_gets_random_draws_of_its_own(tiny_llama, examples):
    """#30 (catalogue v3: LORA-ATLAS's unit is the training run): the atlas-guided set is trained under every seed,
    each random-matched set under one seed only, no set shared by two seeds; losses() gives seed i its own draws."""
    from engine.lora.studies import targeting_study

    study = targeting_study(tiny_llama, examples[:6], examples[6:10], importance=[0.1, 0.9, 0.2, 0.3], config=FAST,
                            k=1, n_random=1, seeds=(0, 1), generate=False, cache=False, protocols=("rigorous",))
    assert [o.run.config.seed for o in study.outcomes["atlas"]] == [0, 1]
    assert study.random_names == ["random-0", "random-1"]
    runs = [study.outcomes[name] for name in study.random_names]
    assert [len(r) for r in runs] == [1, 1] and [r[0].run.config.seed for r in runs] == [0, 1]
    sets = [r[0].run.target.layers for r in runs]
    assert len(set(sets)) == 2 and (1,) not in sets  # distinct, never the atlas-guided set
    atlas, random, _ = study.losses("rigorous")
    assert atlas.shape == (2, 4) and random.shape == (2, 1, 4)
    assert random[1, 0].tolist() == runs[1][0].heldout.losses()
    with pytest.raises(lora.LoraError, match="fewer than its 4 training seeds"):
        targeting_study(tiny_llama, examples[:6], examples[6:10], importance=[0.1, 0.9, 0.2, 0.3], config=FAST,
                        k=3, n_random=1, seeds=(0, 1, 2, 3), generate=False, cache=False, protocols=("rigorous",))


def test_each_training_seed_recovers_random_skips_of_its_own(tiny_llama, examples):
    """#30 (catalogue v3: SKIP-RECOVER's unit is the skip + recovery run): the atlas skip is recovered under every
    seed, each random skip under one seed only, no skip shared by two seeds; losses() gives seed i its own skips."""
    from engine.lora.studies import skip_study

    study = skip_study(tiny_llama, examples[:6], examples[6:10], importance=[0.1, 0.9, 0.2, 0.3], config=FAST, k=1,
                       n_random=1, seeds=(0, 1), modules=("o", "down"), cache=False)
    assert study.seeds == [0, 1] and [a.skipped_layers for a in study.atlas] == [[0], [0]]
    assert study.atlas[0].recovered_losses != study.atlas[1].recovered_losses  # two seeds, two recovery runs
    skips = [rs[0].skipped_layers for rs in study.randoms]
    assert [len(rs) for rs in study.randoms] == [1, 1] and len({tuple(s) for s in skips}) == 2 and [0] not in skips
    atlas, random, families = study.losses()
    assert atlas.shape == (2, 4) and random.shape == (2, 1, 4) and len(families) == 4
    assert random[1, 0].tolist() == study.randoms[1][0].recovered_losses
    figures = study.figures()
    assert figures["training_seeds"] == [0, 1] and figures["n_random_draws"] == 1 and figures["n_random_skips"] == 2
    with pytest.raises(lora.LoraError, match="fewer than its 5 training seeds"):
        skip_study(tiny_llama, examples[:6], examples[6:10], importance=[0.1, 0.9, 0.2, 0.3], config=FAST, k=1,
                   n_random=1, seeds=(0, 1, 2, 3, 4), modules=("o",), cache=False)
