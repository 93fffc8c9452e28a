"""``mi-atlas compact`` (``engine.results.compact_registry``): the tracked registry shrinks without losing a verdict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine import results

ROOT = Path(__file__).resolve().parents[1] / "results"
RUN = "20261205T082339Z-b241be0fece3"


def _copy(tmp_path: Path, run: str = RUN) -> Path:
    root = tmp_path / "results"
    shutil.copytree(ROOT / "runs" / run, root / "runs" / run)
    for record in results.load_run(root, run).records:  # the lines the run appended, as it appended them
        results.append_registry(root, record)
    return root


def test_lines_whose_run_file_holds_the_record_keep_their_index_and_point_at_it(tmp_path):
    root = _copy(tmp_path)
    full = results.read_registry(root)
    compacted, whole, before, after = results.compact_registry(root)
    assert (compacted, whole) == (len(full), 0) and after < before / 5
    slim = results.read_registry(root)
    assert [(s["claim_id"], s["model"], s["protocol"], s["verdict"]) for s in slim] == \
        [(f["claim_id"], f["model"], f["protocol"], f["verdict"]) for f in full]
    assert all(s["record"] == f"runs/{RUN}/claims.json" for s in slim)
    assert len(results.load_run(root, RUN).records) == len(full)  # the records are read from the run file
    assert results.compact_registry(root)[:2] == (0, len(full))  # again: nothing left to compact


def test_a_run_without_its_run_file_or_a_record_it_does_not_hold_stays_whole(tmp_path):
    root = _copy(tmp_path)
    lines = (root / "registry.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    changed = json.loads(lines[0]) | {"verdict": "FAILED" if json.loads(lines[0])["verdict"] != "FAILED" else "CONFIRMED"}
    (root / "registry.jsonl").write_text(json.dumps(changed, sort_keys=True) + "\n" + "".join(lines[1:]),
                                         encoding="utf-8")
    assert results.compact_registry(root)[:2] == (len(lines) - 1, 1)  # the edited line is not the run file's
    (root / "runs" / RUN / "claims.json").unlink()
    other = _copy(tmp_path / "b")
    (other / "runs" / RUN / "claims.json").unlink()
    assert results.compact_registry(other)[:2] == (0, len(lines))  # a killed run: rebuilt from its whole lines
    assert len(results.load_run(other, RUN).records) == len(lines)


def test_a_compacted_registry_merges_once_its_run_files_are_there(tmp_path):
    """Another machine's compacted lines (a committed registry is compacted) merge like whole ones: appended once,
    and never pointing at a run file the target lacks (the line names the run to copy first)."""
    there = _copy(tmp_path / "there")
    results.compact_registry(there)
    n = len(results.read_registry(there))
    here = tmp_path / "here" / "results"
    here.mkdir(parents=True)
    appended, duplicate, problems = results.merge_registry(here, there)
    assert (appended, duplicate, len(problems)) == (0, 0, n)
    assert f"run {RUN}" in problems[0] and "copy that run directory first" in problems[0]
    shutil.copytree(there / "runs" / RUN, here / "runs" / RUN)
    assert results.merge_registry(here, there) == (n, 0, [])
    assert results.merge_registry(here, there) == (0, n, [])  # repeated: nothing twice
    assert len(results.load_run(here, RUN).records) == n
    first = results.read_registry(there)[0]
    for bent, why in [({"record": "runs/elsewhere/claims.json"}, "not its run's"),
                      ({"run": f"../../there/results/runs/{RUN}",
                        "record": f"runs/../../there/results/runs/{RUN}/claims.json"}, "not a run directory's name"),
                      ({"verdict": "FAILED" if first["verdict"] != "FAILED" else "CONFIRMED"}, "does not hold")]:
        (tmp_path / "bent.jsonl").write_text(json.dumps(first | bent) + "\n", encoding="utf-8")
        assert why in results.merge_registry(here, tmp_path / "bent.jsonl")[2][0]


def test_a_whole_line_and_its_compacted_form_are_one_verdict_in_a_merge(tmp_path):
    """Merging the committed (compacted) registry back into the machine whose registry holds the same verdicts
    whole appends nothing, and the other way round."""
    whole = _copy(tmp_path / "whole")
    compacted = _copy(tmp_path / "compacted")
    results.compact_registry(compacted)
    n = len(results.read_registry(whole))
    assert results.merge_registry(whole, compacted) == (0, n, [])
    assert results.merge_registry(compacted, whole / "registry.jsonl") == (0, n, [])
    assert len(results.read_registry(whole)) == len(results.read_registry(compacted)) == n
