"""A run's provenance: what a run writes under results/ never makes the next run's commit "+dirty" (issue: "Records
you can trust"); a change anywhere else does."""

from __future__ import annotations

import subprocess

from engine import results


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_results_written_by_a_run_do_not_make_the_commit_dirty(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@t")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "registry.jsonl").write_text("{}\n")
    (tmp_path / "engine.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    results.git_commit.cache_clear()
    clean = results.git_commit(tmp_path)
    assert clean and "+dirty" not in clean
    (tmp_path / "results" / "registry.jsonl").write_text("{}\n{}\n")  # a run appended its verdicts
    results.git_commit.cache_clear()
    assert results.git_commit(tmp_path) == clean
    (tmp_path / "engine.py").write_text("x = 2\n")  # code changed: dirty
    results.git_commit.cache_clear()
    assert results.git_commit(tmp_path) == clean + "+dirty"
    results.git_commit.cache_clear()
