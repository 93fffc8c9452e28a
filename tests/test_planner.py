"""Measurements are computed once per session and a person can follow them (issue: measurement plans).

* The ledger (engine/progress.py) sees every cache request: computed once, then served from the cache.
* No measurement is computed twice across claims that share it: counted as the model's *forward passes* per
  measurement key (a forward hook on the model), not as planner calls.
* An interrupted plan resumes from the cache and ends with the same figures.
* The progress lines are visible in default pytest output (no ``-s``), and the time table is printed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from engine import cache, models, progress
from engine.studies import atlas as A

pytest_plugins = ["pytester"]

SIZES = A.Sizes(seed_per_family=1, rigorous_per_family=2, nl_per_family=2, noop_examples=2, skip_single_layers=1,
                n_resamples=200, batch_size=8)


@pytest.fixture
def results_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(tmp_path / "results-cache"))
    progress.reset()
    yield tmp_path / "results-cache"
    progress.reset()


@pytest.fixture(scope="module")
def lm():
    return models.tiny("qwen2", n_layers=3, seed=0)


class ForwardCounter:
    """Counts the model's forward passes per measurement being computed (None: outside any measurement)."""

    def __init__(self, lm):
        self.counts: Counter = Counter()
        self.handle = lm.model.register_forward_hook(self)

    def __call__(self, module, args, output):
        entry = progress.current()
        self.counts[entry.digest if entry is not None else None] += 1

    def close(self):
        self.handle.remove()


def test_the_ledger_notes_a_computation_once_and_then_cache_hits(results_cache):
    calls = []
    with progress.context("HUB-SMOL[tiny]"):
        first = cache.cached({"kind": "toy", "model": "tiny", "n_examples": 3}, lambda: calls.append(1) or [1, 2])
    with progress.context("HUB-SEEDS[tiny]"):
        again = cache.cached({"kind": "toy", "model": "tiny", "n_examples": 3}, lambda: calls.append(1) or [9])
    assert first == again == [1, 2] and len(calls) == 1
    entries = progress.ledger()
    assert [(e.source, e.context, e.what) for e in entries] == [
        ("computed", "HUB-SMOL[tiny]", "toy tiny n=3"), ("cached", "HUB-SEEDS[tiny]", "toy tiny n=3")]
    tab = progress.table()
    [m] = tab["measurements"]
    assert (m["computed"], m["cached"], m["claims"]) == (1, 1, ["HUB-SMOL[tiny]", "HUB-SEEDS[tiny]"])
    assert [c["claim"] for c in tab["claims"]] == ["HUB-SMOL[tiny]", "HUB-SEEDS[tiny]"]


def test_a_failed_computation_is_noted_as_failed_and_not_stored(results_cache):
    with pytest.raises(RuntimeError):
        cache.cached({"kind": "toy", "model": "tiny"}, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert [e.source for e in progress.ledger()] == ["failed"]
    assert cache.cached({"kind": "toy", "model": "tiny"}, lambda: 5) == 5
    assert [e.source for e in progress.ledger()] == ["failed", "computed"]


def test_claims_that_share_a_measurement_run_its_forward_passes_once(results_cache, lm):
    """HUB-SMOL's hub, HUB-SEEDS and HUB-BREADTH ask for the same atlases (the seed sweep, seed 42's stratified
    sample): the second and third claim add no forward pass to a measurement the first one computed."""
    counter = ForwardCounter(lm)
    try:
        with progress.context("HUB-SMOL[tiny]"):
            A.hub(lm, SIZES)
        after_first = Counter(counter.counts)
        with progress.context("HUB-SEEDS[tiny]"):
            A.hub_seeds(lm, SIZES)
        with progress.context("HUB-BREADTH[tiny]"):
            A.hub_breadth(lm, SIZES)
    finally:
        counter.close()
    entries = progress.ledger()
    computed = Counter(e.digest for e in entries if e.source == "computed")
    assert computed and max(computed.values()) == 1, f"computed twice: {computed}"
    shared = {e.digest for e in entries if e.source == "cached"}
    assert shared, "the claims share no measurement"
    for digest in shared & set(after_first):
        assert counter.counts[digest] == after_first[digest] > 0, f"{digest[:12]}: forward passes after its first"
    # every forward pass belongs to exactly one computed measurement: none is recomputed outside the cache
    assert set(counter.counts) - {None} <= set(computed)


def test_an_interrupted_plan_resumes_from_the_cache_with_the_same_figures(results_cache, lm, monkeypatch):
    """Seeds 42 and 137 are measured, then the session is interrupted before seed 256: the rerun reads the
    first two from the cache and ends with the figures of an uninterrupted run."""
    from engine.studies.atlas import common

    seeds, done, real = A.SEEDS, [], common.AtlasSpec.compute

    def interrupted(spec, lm_):
        if spec.sample == "stratified" and spec.seed == seeds[-1]:
            raise KeyboardInterrupt("plan interrupted")
        done.append(spec.seed)
        return real(spec, lm_)

    uninterrupted = A.hub_seeds(lm, SIZES)
    progress.reset()
    for entry in results_cache.rglob("*.json"):
        entry.unlink()  # an empty cache: the interrupted session starts from nothing
    with monkeypatch.context() as patch:
        patch.setattr(common.AtlasSpec, "compute", interrupted)  # every atlas a claim's specs measure
        with pytest.raises(KeyboardInterrupt):
            A.hub_seeds(lm, SIZES)
    assert done, "nothing was measured before the interruption"
    progress.reset()
    resumed = A.hub_seeds(lm, SIZES)
    sources = Counter(e.source for e in progress.ledger())
    assert sources["cached"] >= 1, f"the resumed plan recomputed everything: {sources}"
    for a, b in zip(uninterrupted, resumed):
        assert json.dumps(a.figures, sort_keys=True, default=str) == json.dumps(b.figures, sort_keys=True,
                                                                                 default=str)


def test_progress_lines_and_the_time_table_show_without_dash_s(pytester, tmp_path, monkeypatch):
    pytester.makeconftest('pytest_plugins = ["claims.plugin", "claims.xdist_groups", "claims.progress"]\n')
    pytester.makepyfile(test_measure="""
        from engine import cache, progress

        def test_one():
            with progress.context("TOY-CLAIM[tiny]"):  # what the plugin sets around a claim test
                cache.cached({"kind": "toy-sweep", "model": "tiny", "n_examples": 4}, lambda: [1])
                cache.cached({"kind": "toy-sweep", "model": "tiny", "n_examples": 4}, lambda: [1])

        def test_unit():
            cache.cached({"kind": "quiet", "model": "tiny"}, lambda: [2])
    """)
    env_cache = tmp_path / "rc"
    monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(env_cache))
    result = pytester.runpytest("-p", "no:cacheprovider", "--claims-results", str(tmp_path / "res"))
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "quiet" not in out.split("mi-atlas measurements")[0], "a unit test's measurement printed a line"
    assert "[measure] start  toy-sweep tiny n=4" in out
    assert "[measure] computed toy-sweep tiny n=4" in out
    assert "[measure] cached toy-sweep tiny n=4" in out
    assert "mi-atlas measurements" in out and "2 computed" in out and "1 cache hit(s)" in out
    assert not (tmp_path / "res" / "bench").exists(), "a session without claim tests wrote a plan's timings"


def test_under_xdist_the_workers_progress_lines_reach_the_terminal(pytester, tmp_path, monkeypatch):
    pytester.makeconftest('pytest_plugins = ["claims.plugin", "claims.xdist_groups", "claims.progress"]\n')
    pytester.makepyfile(test_measure="""
        import pytest
        from engine import cache, progress

        @pytest.mark.parametrize("model", ["a", "b"])
        def test_model(model):
            with progress.context(f"TOY-CLAIM[{model}]"):
                cache.cached({"kind": "toy-sweep", "model": model, "n_examples": 2}, lambda: [1])
    """)
    monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(tmp_path / "rc"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--claims-results",
                                           str(tmp_path / "res"))
    result.assert_outcomes(passed=2)
    err = result.stderr.str()
    assert "] [measure] computed toy-sweep a n=2" in err and "] [measure] computed toy-sweep b n=2" in err, err
    out = result.stdout.str()
    assert "2 measurement(s): 2 computed" in out, out


# ------------------------------------------------------------------------------------------------ declarations


def _last_smoke_ledger():
    """Per claim test of the committed smoke run's timings: the measurements (ledger descriptions) it read, and
    every measurement's claims."""
    from collections import defaultdict

    data = json.loads((Path(__file__).resolve().parents[1] / "results" / "bench" / "plan-smoke-timings.json")
                      .read_text(encoding="utf-8"))
    per_claim: dict[str, Counter] = defaultdict(Counter)
    for m in data["measurements"]:
        for claim in set(m["claims"]):
            per_claim[claim][m["what"].strip()] += 1
    return per_claim, data["measurements"]


def _split(label: str) -> tuple[str, list[str]]:
    return label.split("[")[0], label[label.index("[") + 1:-1].split("+")


def _declared(label: str):
    """What the row's template declares for this cpu claim test under the smoke plan (engine.templates)."""
    from engine import templates
    from engine.settings import RunSettings
    from engine.verdicts import load_catalogue

    claim_id, models_ = _split(label)
    ctx = templates.ClaimContext(load_catalogue()[claim_id], tuple(models_), "cpu", RunSettings(plan="smoke"))
    return templates.template_of(ctx.claim).declared(ctx)


def test_each_claims_declared_measurements_are_what_it_measured_in_the_last_smoke_run():
    """The templates' declarations (the specs they measure, engine/templates) against the ledger of a real run:
    for every declared claim test the multiset of measurements it read is exactly the declared one (a spec the
    run did not measure, or a measurement no spec names, fails here). Procedures that decide at run time are
    the LoRA claims, ABL-MEAN and STEER-TRANSFER."""
    per_claim, _ = _last_smoke_ledger()
    checked, dynamic = [], []
    for label, measured in sorted(per_claim.items()):
        got = _declared(label)
        if got.why:
            dynamic.append(label.split("[")[0])
            continue
        assert Counter(n.what.strip() for n in got.needs) == measured, label
        checked.append(label)
    assert len(checked) >= 24 and set(dynamic) <= {"LORA-ATLAS", "LORA-OPROJ", "LORA-LATE", "LOCKIN", "SKIP-RECOVER",
                                                   "ABL-MEAN", "STEER-TRANSFER"}


def test_the_plan_merges_shared_measurements_once_and_orders_them_by_model():
    """The collected cpu smoke claims: the plan's distinct measurements are as many as the run computed for the
    declared claims; most are read by several claims; grouped model by model."""
    from engine import planner

    per_claim, measurements = _last_smoke_ledger()
    tests = [(label, _declared(label)) for label in sorted(per_claim)]
    plan = planner.plan("smoke", tests)
    declared = {label for label, got in tests if not got.why}
    run_distinct = [m for m in measurements if set(m["claims"]) & declared]
    assert len(plan.users) == len(run_distinct)
    assert plan.requests > len(plan.users) and plan.shared >= 6
    models = [n.model for n in plan.measurements if n.model]
    assert models == sorted(models, key=models.index)  # each model's measurements together
    assert "decided at run time" in plan.summary() and "LORA-ATLAS" in plan.summary()


def test_groups_that_took_longest_are_handed_out_first(tmp_path):
    """xdist's loadgroup hands groups out in order of first appearance; the items are regrouped longest first by
    the plan's last timings (a long group left for the end would keep one worker busy while the other idles)."""
    from types import SimpleNamespace

    from claims.xdist_groups import longest_groups_first

    class Item:
        def __init__(self, claim, model, group):
            self.nodeid, self.marks = f"{claim}-{model}", {
                "claim": SimpleNamespace(args=(claim,), kwargs={"model": model}),
                "xdist_group": SimpleNamespace(args=(group,), kwargs={})}

        def get_closest_marker(self, name):
            return self.marks.get(name)

        def iter_markers(self, name):
            return [self.marks[name]] if name in self.marks else []

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "plan-default-timings.json").write_text(json.dumps({"claims": [
        {"claim": "A[m1]", "seconds": 10.0}, {"claim": "B[m1]", "seconds": 5.0}, {"claim": "C[m2]", "seconds": 100.0}]}))
    def config_at(root):
        return SimpleNamespace(getoption=lambda name, default=None: {"--claims-results": root}.get(name, default),
                               rootpath=root, stash={})

    config = config_at(tmp_path)
    items = [Item("A", "m1", "m1/atlas"), Item("B", "m1", "m1/atlas"), Item("C", "m2", "m2/quant"),
             Item("D", "m3", "m3/lora")]
    assert [i.nodeid for i in longest_groups_first(config, items)] == ["C-m2", "A-m1", "B-m1", "D-m3"]
    config_without = config_at(tmp_path / "x")
    assert longest_groups_first(config_without, items) == items  # no timings: the collection order
    # a plan never timed (the first `--plan full`) is ranked by the repository's default-plan timings
    root = tmp_path / "repo"
    (root / "results" / "bench").mkdir(parents=True)
    (root / "results" / "bench" / "plan-default-timings.json").write_text(
        (tmp_path / "bench" / "plan-default-timings.json").read_text())
    untimed = SimpleNamespace(getoption=lambda name, default=None: {"--claims-results": tmp_path / "fresh",
                                                                    "--plan": "full"}.get(name, default),
                              rootpath=root, stash={})
    assert [i.nodeid for i in longest_groups_first(untimed, items)] == ["C-m2", "A-m1", "B-m1", "D-m3"]


def test_a_plan_without_a_tiers_tables_does_not_crash_collection():
    """`pytest claims --plan smoke` without `-m cpu`: the smoke plan has no gpu-tier tables; the planner says so
    for those tests instead of an INTERNALERROR at collection."""
    from engine import planner as P
    from engine import templates
    from engine.settings import RunSettings
    from engine.verdicts import load_catalogue

    ctx = templates.ClaimContext(load_catalogue()["HUB-Q05"], ("qwen2.5-0.5b",), "gpu", RunSettings(plan="smoke"))
    got = P.plan("smoke", [("HUB-Q05[qwen2.5-0.5b]", templates.declared(ctx))])
    assert not got.users and "no sizes for this tier" in next(iter(got.dynamic.values()))
