"""Proof that the CI regression gate bites (issue #19): each test plants ONE bug in ONE engine/ function, runs a
real smoke claim on SmolLM2-135M with an empty results cache against the pinned smoke baseline, and asserts that
the gate fails with a table row naming a moved figure of that claim (an exception does not count: a claim test
that errors records nothing, and a "not measured" row is not a moved figure).

The bug is planted by a tiny pytest plugin in the inner process (``-p mutate``), chosen by ``MI_ATLAS_MUTATION``.
Each inner run gates against a copy of the pinned smoke baseline holding only the claim it measures, so the
record count check passes and only a moved figure can fail it. Skipped while no smoke baseline is pinned
(``mi-atlas baselines pin --plan smoke ...``) or the embedded model is not pulled. Marked ``slow``: one real
smoke claim each (about a minute or two on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine import models, results

ROOT = Path(__file__).resolve().parents[1]
# The pinned baselines (results/baselines); MI_ATLAS_GATE_BASELINES points elsewhere (e.g. a pin under test).
SMOKE_BASELINES = Path(os.environ.get("MI_ATLAS_GATE_BASELINES") or ROOT / "results" / results.BASELINES_DIR)
MODEL = "smollm2-135m"

MUTATE_PLUGIN = '''
"""Plants one engine bug, named by MI_ATLAS_MUTATION, before any claim runs."""
import dataclasses
import os

import numpy as np


def _steering_sign_flipped():
    from engine.steering import directions

    original = directions.added_vector
    directions.added_vector = lambda unit, scale, units, resid_norm: -original(unit, scale, units, resid_norm)


def _layer_off_by_one():
    from engine.interventions import hooks  # the lookup every edit goes through (sites.resolve)

    original = hooks.resolve

    def shifted(lm, site, who=None):
        last = len(lm.adapter.layers(lm.model)) - 1  # clamped: an edit still fires, one layer late
        return original(lm, dataclasses.replace(site, layer=min(site.layer + 1, last)), who)

    hooks.resolve = shifted


def _mean_reference_dropped():
    from engine.interventions.methods.mean import Mean

    Mean.replacement = lambda self, ctx, x, mask: x.new_zeros(x.shape)  # "mean" ablation without its reference


def _bootstrap_unstratified():
    from engine import decisions

    decisions._strata = lambda values, groups: (["all"], [np.asarray(values)])


MUTATIONS = {"steering_sign_flipped": _steering_sign_flipped, "layer_off_by_one": _layer_off_by_one,
             "mean_reference_dropped": _mean_reference_dropped, "bootstrap_unstratified": _bootstrap_unstratified}


def pytest_configure(config):
    MUTATIONS[os.environ["MI_ATLAS_MUTATION"]]()
'''

# mutation -> (claim, test file, -k expression, figure pattern the table must name): the cheapest smoke claim
# whose decision goes through the mutated function.
CASES = {
    "steering_sign_flipped": ("STEER-RANDOM", "claims/test_claims.py", "STEER-RANDOM and smollm2", r"."),
    "layer_off_by_one": ("SKIP-ALL", "claims/test_claims.py", "SKIP-ALL and smollm2", r"."),
    "mean_reference_dropped": ("ABL-MEAN", "claims/test_claims.py", "ABL-MEAN and smollm2", r"."),
    # catalogue v3: with one prompt per family the interval is the sign-flip test of the family means; pooled into
    # one stratum it becomes a t interval over prompts, so STEER-ALL's held-out gap gets another interval
    "bootstrap_unstratified": ("STEER-ALL", "claims/test_claims.py", "STEER-ALL and smollm2", r"."),
}


def claim_baseline(claim: str, out: Path) -> Path:
    """A copy of the pinned smoke baselines (every model file: the gate expects the whole declared record set, so
    the records the mutated run does not measure are reported missing beside the moved figures); skip when MODEL's
    file holds no record of ``claim``."""
    source = SMOKE_BASELINES / "smoke" / f"{MODEL}.json"
    if not source.is_file():
        pytest.skip(f"no smoke baseline pinned at {source}: pin one with `mi-atlas baselines pin --plan smoke "
                    "--reason ... RUN_DIR ...` (the mutation tests gate against it)")
    data = json.loads(source.read_text(encoding="utf-8"))
    if not any(k.split("/")[0] == claim for k in data["entries"]):
        pytest.skip(f"the smoke baseline {source} holds no record of {claim}")
    shutil.copytree(SMOKE_BASELINES / "smoke", out / "smoke")
    return out


def empty_caches(tmp: Path) -> dict[str, str]:
    """MI_ATLAS_CACHE with the converted models symlinked in (no pull), an empty results cache."""
    cache = tmp / "cache"
    cache.mkdir()
    real = models.cache_root()
    for name in ("models", "identity"):
        if (real / name).exists():
            (cache / name).symlink_to(real / name, target_is_directory=True)
    return {"MI_ATLAS_CACHE": str(cache), "MI_ATLAS_RESULTS_CACHE": str(tmp / "results-cache")}


def moved_rows(stdout: str, claim: str) -> list[list[str]]:
    """The gate table's rows of ``claim`` on MODEL that name a moved figure (not a record left unmeasured)."""
    rows = []
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 6 and cells[0] == claim and cells[1] == MODEL and cells[3] != "(record)" \
                and cells[2] in ("seed", "rigorous"):
            rows.append(cells)
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("mutation", list(CASES))
def test_the_gate_names_the_figure_a_planted_engine_bug_moves(mutation, tmp_path):
    claim, path, selection, figure = CASES[mutation]
    present, why = models.availability(MODEL)
    if not present:
        pytest.skip(f"{MODEL} not pulled: {why}")
    baselines = claim_baseline(claim, tmp_path / "baselines")
    (tmp_path / "mutate.py").write_text(MUTATE_PLUGIN, encoding="utf-8")
    env = {**os.environ, **empty_caches(tmp_path), "MI_ATLAS_MUTATION": mutation, "COLUMNS": "250",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest", path, "-k", selection, "-m", "cpu", "--plan", "smoke",
               "-p", "mutate", "-p", "no:cacheprovider", "-p", "no:xdist", "--claims-baseline-gate",
               f"--claims-results={tmp_path / 'results'}", f"--claims-baselines={baselines}"]
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    out = done.stdout + done.stderr
    summary = out.strip().splitlines()[-1]
    assert " error" not in summary, f"the mutated claim raised (an exception does not count):\n{out[-4000:]}"
    assert done.returncode == 1, out[-4000:]
    assert "--claims-baseline-gate: the session fails because of these changes" in out, out[-4000:]
    rows = moved_rows(done.stdout, claim)
    named = [r for r in rows if re.search(figure, r[3])]
    assert named, f"the gate's table names no moved figure of {claim} matching {figure!r}:\n{out[-4000:]}"
