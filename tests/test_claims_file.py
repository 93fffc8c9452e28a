"""A researcher's own claims file (issue "Claims as data, 2/2"): rows about local model directories the project
never saw, run by the rule templates with no Python written; verdicts as the data say, bad rows refused at
collection with one line.

The model directories are tiny random-weight Llamas with a planted hub (one layer's attention and MLP outputs
scaled x2, saved as safetensors): planted-effect calibration, the one use of random weights a verdict test may
make (the README's worked example runs on the same kind of directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import claims_file, models, templates

ROOT = Path(__file__).resolve().parents[1]


def planted_model_dir(where: Path, layer: int, factor: float = 2.0, n_layers: int = 4) -> Path:
    """A tiny Llama whose layer ``layer`` writes ``factor`` times more into the residual stream, saved as a local
    Hugging Face directory (safetensors, tokenizer)."""
    lm = models.tiny("llama", n_layers=n_layers, seed=0)
    block = lm.model.model.layers[layer]
    with torch.no_grad():
        block.self_attn.o_proj.weight.mul_(factor)
        block.mlp.down_proj.weight.mul_(factor)
    where.mkdir(parents=True)
    lm.model.save_pretrained(where, safe_serialization=True)
    lm.tokenizer.save_pretrained(where)
    return where


def row(claim_id: str, model: Path, template: str = "argmax_is", **fields) -> str:
    lines = [f'[[claim]]', f'id = "{claim_id}"', f'statement = "{claim_id}: a planted hub"',
             f'template = "{template}"', f'model = "{model}"',
             'prompts = { per_family = 10 }']
    lines += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    base = tmp_path_factory.mktemp("user-models")
    return {"l2": planted_model_dir(base / "planted-l2", 2), "l1": planted_model_dir(base / "planted-l1", 1)}


def run_claims(tmp_path: Path, text: str, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "my-claims.toml"
    path.write_text(text, encoding="utf-8")
    env = {**os.environ, "MI_ATLAS_RESULTS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "claims"), "--claims-file", str(path),
                           "--claims-results", str(tmp_path / "results"), "-p", "no:cacheprovider", "-q", *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def verdicts_of(tmp_path: Path) -> dict[tuple[str, str, str], dict]:
    run = sorted((tmp_path / "results" / "runs").iterdir())[-1]
    records = json.loads((run / "claims.json").read_text())["records"]
    return {(r["claim_id"], r["model"], r["protocol"]): r for r in records}


def test_a_planted_hub_is_confirmed_at_its_layer_and_failed_elsewhere_with_no_python(planted, tmp_path):
    text = (row("MY-HUB", planted["l2"], layer=2)
            + row("MY-HUB-WRONG-LAYER", planted["l2"], layer=1)
            + row("MY-HUB-OTHER-MODEL", planted["l1"], layer=2)
            + row("MY-HUB-STABLE", planted["l2"], template="argmax_stable"))
    result = run_claims(tmp_path, text)
    got = verdicts_of(tmp_path)
    assert {k[2] for k in got} == {"rigorous"}, "a user's claim is recorded under the rigorous protocol only"
    verdict = {k[0]: (r["verdict"], r["model"]) for k, r in got.items()}
    assert verdict == {"MY-HUB": ("CONFIRMED", "planted-l2"), "MY-HUB-WRONG-LAYER": ("FAILED", "planted-l2"),
                       "MY-HUB-OTHER-MODEL": ("FAILED", "planted-l1"), "MY-HUB-STABLE": ("CONFIRMED", "planted-l2")}, \
        result.stdout[-3000:]
    hub = got[("MY-HUB", "planted-l2", "rigorous")]
    assert hub["figures"]["argmax_layers"] == [2, 2, 2] and hub["plan"] == "default"
    looks = hub["figures"]["looks"]  # prompts.per_family = 10: looks at the default plan's 2, 5, then 10
    assert looks["stages_per_family"] == [2, 5, 10]
    assert hub["figures"]["n_examples"] == 12 * looks["history"][-1][0]  # stopped at its first decided look
    assert result.returncode == 1  # the FAILED verdicts fail their tests, as in the catalogue


def test_a_user_pins_baselines_for_their_own_claims_and_gates_on_them(planted, tmp_path):
    text = row("MY-HUB", planted["l2"], layer=2)
    first = run_claims(tmp_path, text, "--claims-update-baseline", "--claims-pin-reason", "my first pin")
    assert first.returncode == 0, first.stdout[-2000:]
    pinned = tmp_path / "results" / "baselines" / "default" / "planted-l2.json"
    assert pinned.is_file()
    again = run_claims(tmp_path, text, "--claims-baseline-gate")
    assert again.returncode == 0 and "0 moved, 0 missing" in again.stdout, again.stdout[-2000:]
    from engine.cli.baselines import check

    latest = sorted((tmp_path / "results" / "runs").iterdir())[-1]
    assert check(str(latest), plan="default", results_root=tmp_path / "results").passed


BAD = {
    "unknown template": ({"template": "argmax_iz"}, "template: unknown template 'argmax_iz'"),
    "mistyped parameter": ({"layer": "two"}, "layer = 'two': expected a layer index"),
    "a layer beyond the model": ({"layer": 7}, "layer = 7: beyond the model (planted-l2: layers 0-3)"),
    "an unknown parameter": ({"layr": 2}, "layr: not a parameter of template 'argmax_is'"),
    "an unreadable model directory": ({"model": "/nonexistent/my-llama"}, "model: /nonexistent/my-llama: neither a registry key"),
    "a bad prompts file": ({"prompts": {"file": "bad.jsonl"}}, "prompts.file:"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_row_is_one_line_naming_file_claim_and_field_and_nothing_runs(planted, tmp_path, case):
    fields, message = BAD[case]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "nonsense_field": 1}\n', encoding="utf-8")
    base = {"id": "MY-HUB", "statement": "s", "template": "argmax_is", "model": str(planted["l2"]), "layer": 2}
    text = "[[claim]]\n" + "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _table(v)}"
                                     for k, v in {**base, **fields}.items()) + "\n"
    path = tmp_path / "my-claims.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(claims_file.ClaimsFileError) as info:
        claims_file.load_claims_file(path)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{path}: claim MY-HUB: "), line
    if message:
        assert message in line, line
    result = run_claims(tmp_path, text)
    assert result.returncode == 4 and line in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "results" / "runs").exists()  # nothing ran


def _table(value: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"


def test_the_claims_file_runs_beside_the_catalogue_and_templates_validate_it(planted, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(row("MY-HUB", planted["l2"], layer=2), encoding="utf-8")
    user = claims_file.load_claims_file(path)
    templates.check(user)
    from engine.verdicts import load_catalogue

    both = claims_file.merged(load_catalogue(), user)
    assert "MY-HUB" in both and "HUB-SMOL" in both and both.protocols_of(both["MY-HUB"]) == ("rigorous",)
    assert both.targets(both["MY-HUB"], "default") == ["planted-l2"]


def test_mi_atlas_claims_takes_the_file_as_the_options_value_never_as_a_test_path(tmp_path):
    from engine.cli.claims import claims_dir, pytest_command

    (tmp_path / "my-claims.toml").write_text("", encoding="utf-8")  # an existing file: still the option's value
    command = pytest_command(["--claims-file", str(tmp_path / "my-claims.toml"), "--with-catalogue"])
    assert str(claims_dir()) in command and command[-3:] == ["--claims-file", str(tmp_path / "my-claims.toml"),
                                                              "--with-catalogue"]
