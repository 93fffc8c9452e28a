"""Task families are registered: a toy family registered from this module (no engine file edited) is
generated, written, loaded and sampled through the public API, and registering it leaves the built-in
suite byte for byte what ``fixtures/manifest.json`` records."""

from __future__ import annotations

import random

import pytest

from engine.tasks import (FAMILIES, Family, SuiteError, get_family, is_registered, load_manifest, load_suite,
                          parse_jsonl, register_family, registered_families, sample, unregister_family)
from engine.tasks import generate as G
from engine.tasks.families import Item

TOY = "toy_counting"
TOY_COUNTS = {"short": 12, "long": 6, "nl": 5}


@pytest.fixture
def toy():
    """Register a toy family (count the letters of a word; stateful: it cycles through its words) and
    remove it afterwards, whatever the test does."""

    @register_family(TOY, scorer="numeric", stateful=True, counts=TOY_COUNTS)
    class ToyCounting(Family):
        WORDS = ("cat", "house", "river", "tree", "window", "lamp", "garden", "stone", "bird", "cloud")

        def _word(self, rng: random.Random, state: dict) -> str:
            queue = state.setdefault("queue", [])
            if not queue:
                queue.extend(rng.sample(self.WORDS, len(self.WORDS)))
            return queue.pop()

        def synthetic(self, rng, split, state):
            word = self._word(rng, state)
            shots = 2 if split == "short" else 4
            head = "".join(f"Word: {w}\nLetters: {len(w)}\n" for w in rng.sample(self.WORDS, shots))
            other = rng.choice([w for w in self.WORDS if len(w) != len(word)])
            # no scorer: the family's default ("numeric") applies
            return Item(head + f"Word: {word}\nLetters: ", str(len(word)),
                        corrupt=head + f"Word: {other}\nLetters: ", corrupt_target=str(len(other)))

        def natural(self, rng, state):
            word = self._word(rng, state)
            return Item(f"How many letters are in the word {word}?\nAnswer: ", str(len(word)), "numeric")

    yield get_family(TOY)
    unregister_family(TOY)
    assert not is_registered(TOY)


def test_the_builtin_families_are_registered_in_canonical_order():
    assert registered_families()[:len(FAMILIES)] == FAMILIES
    for name in FAMILIES:
        family = get_family(name)
        assert family.name == name and isinstance(family, Family)
    assert get_family("factual_recall").stateful and get_family("verbosity_control").stateful
    assert not get_family("arithmetic").stateful and get_family("arithmetic").scorer == "numeric"
    assert get_family("code_semantics").scorer is None  # numeric and exact items: each names its own


def test_registration_is_checked():
    with pytest.raises(ValueError, match="already registered"):
        register_family("arithmetic")(type("Again", (Family,), {}))
    with pytest.raises(ValueError, match="lower-case"):
        register_family("Bad Name")
    with pytest.raises(ValueError, match="scorer"):
        register_family("toy_bad_scorer", scorer="fuzzy")(type("Bad", (Family,), {}))
    with pytest.raises(TypeError):
        register_family("toy_not_a_family")(object)
    with pytest.raises(ValueError, match="built-in"):
        unregister_family("arithmetic")
    with pytest.raises(SuiteError, match="unknown task family 'toy_missing'"):
        get_family("toy_missing")
    assert not any(is_registered(n) for n in ("toy_bad_scorer", "toy_not_a_family"))


def test_a_registered_family_is_generated_deterministically(toy):
    assert toy.name == TOY and registered_families()[-1] == TOY
    suites = G.build_suites([TOY])
    assert list(suites) == [("synthetic", TOY, "short"), ("synthetic", TOY, "long"), ("nl", TOY, "nl")]
    assert [len(v) for v in suites.values()] == [12, 6, 5]
    assert suites == G.build_suites([TOY])  # same seed strings, same examples
    short = suites[("synthetic", TOY, "short")]
    assert [ex.id for ex in short[:2]] == [f"syn-{TOY}-short-0000", f"syn-{TOY}-short-0001"]
    assert {ex.scorer for ex in short} == {"numeric"}  # the family default filled in
    assert all(ex.corrupt is not None and ex.clean == ex.prompt and ex.corrupt_target != ex.target for ex in short)
    assert len({ex.prompt for ex in short}) == len(short)
    assert G.generate_examples("nl", TOY, "nl", 3) == suites[("nl", TOY, "nl")][:3]
    assert [len(v) for v in G.build_suites([TOY], counts={TOY: {"short": 4}}).values()] == [4]


def test_a_registered_family_is_written_loaded_and_sampled(toy, tmp_path, monkeypatch):
    manifest = G.write_fixtures(tmp_path, families=[TOY])
    assert [f["path"] for f in manifest["files"]] == [f"synthetic/{TOY}.short.jsonl", f"synthetic/{TOY}.long.jsonl",
                                                      f"nl/{TOY}.jsonl"]
    assert manifest["totals"] == {"synthetic": 18, "nl": 5}
    assert G.check_fixtures(tmp_path, families=[TOY]) == []
    # the strict suite loader accepts the family's files while it is registered
    parsed = parse_jsonl(tmp_path / f"synthetic/{TOY}.short.jsonl", suite=True)
    assert len(parsed) == 12 and parsed[0].family == TOY
    monkeypatch.setenv("MI_ATLAS_FIXTURES", str(tmp_path))
    loaded = load_suite("synthetic")
    assert [ex.family for ex in loaded] == [TOY] * 18
    drawn = sample([TOY], per_family=5, seed=3)
    assert len(drawn) == 5 and {ex.family for ex in drawn} == {TOY}
    assert drawn == sample(per_family=5, seed=3)  # the default family list: the families present
    assert [ex.id.split("-")[0] for ex in sample([TOY], per_family=2, seed=0, suite="nl")] == ["nl", "nl"]


def test_an_unregistered_family_is_refused_by_the_suite_loader(toy, tmp_path):
    G.write_fixtures(tmp_path, families=[TOY])
    unregister_family(TOY)
    try:
        with pytest.raises(SuiteError, match=f"'family' is '{TOY}'"):
            parse_jsonl(tmp_path / f"nl/{TOY}.jsonl", suite=True)
        with pytest.raises(SuiteError, match=f"unknown task family '{TOY}'"):
            G.build_suites([TOY])
    finally:
        register_family(TOY)(type(toy))  # the fixture unregisters it again


def test_registering_a_family_leaves_the_builtin_suite_unchanged(toy):
    assert G.build_suites.__defaults__[0] == FAMILIES
    assert G.check_fixtures() == []  # every built-in file regenerates to its committed sha256
    committed = [(f["suite"], f["family"], f["split"]) for f in load_manifest()["files"]]
    assert committed == ([("synthetic", f, split) for f in FAMILIES for split in ("short", "long")]
                         + [("nl", f, "nl") for f in FAMILIES])
