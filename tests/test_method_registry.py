"""The ablation-method registry: a method registered from a test module (no engine file edited) runs through
``engine.atlas.atlas`` and the ``mi-atlas atlas`` CLI and is listed in its ``--help``; unknown methods give a
one-line error naming the registered ones.

The toy method ``half`` scales the activation (for component ``layer``: the layer's contribution) by 0.5, so
its edited residual is the midpoint of the no-op's and zero ablation's, and its effects lie strictly between
theirs (no-op: exactly 0).
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from engine import models
from engine.atlas import atlas
from engine.interventions import (
    METHODS, Ablate, InterventionError, clean_run, edit_residual, encode, kl, methods, next_token_logits,
)

HALF = "half"
BUILTINS = ("zero", "mean", "resample", "noise")
PROMPTS = ["The capital of France is", "2 + 2 =", "def f(x): return x", "hi", "Once upon a time there was"]


class Half(methods.Method):
    """Toy ablation: half the activation (half the layer's contribution for component 'layer')."""

    description = "half the activation"
    needs_batch = False

    def replacement(self, ctx, x, mask):
        return 0.5 * x


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def half():
    """``half`` registered for one test, and unregistered afterwards (also when the test fails)."""
    assert HALF not in METHODS
    methods.register_method(HALF, Half)
    try:
        yield methods.get_method(HALF)
    finally:
        methods.unregister_method(HALF)
    assert HALF not in METHODS and tuple(METHODS) == BUILTINS


@lru_cache(maxsize=None)
def tiny(arch: str = "llama", n_layers: int = 3):
    return models.tiny(arch, n_layers=n_layers)


def _cli(*args: str, columns: int = 250):
    from engine.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})


def _prompts_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "family": f"fam{i % 2}", "target": " x"})
                              for i, p in enumerate(PROMPTS)) + "\n")
    return path


# --------------------------------------------------------------------------------------------- registry


def test_builtins_are_registered_in_order_and_methods_is_a_live_view(half):
    assert methods.names()[:4] == BUILTINS and methods.names()[-1] == HALF
    assert HALF in METHODS and tuple(METHODS) == (*BUILTINS, HALF) and len(METHODS) == 5
    assert half.name == HALF and half.reference is None and not half.needs_reference
    assert [methods.get_method(m).reference for m in BUILTINS] == [None, "means", "activations", None]
    with pytest.raises(InterventionError, match="already registered"):
        methods.register_method(HALF, Half)
    with pytest.raises(InterventionError, match="reference must be"):
        methods.register_method("bad-kind", lambda ctx, x, mask: x, reference="medians")
    assert "bad-kind" not in METHODS


def test_the_toy_method_edits_the_midpoint_of_noop_and_zero(half):
    """For component 'layer' the edited residual is exactly input + 0.5 * (output - input): between the
    no-op (output) and zero ablation (input)."""
    lm = tiny()
    batch = encode(lm, PROMPTS)
    run = clean_run(lm, batch)
    real = batch.real_mask()[..., None]  # padding keeps the clean output bit for bit
    for layer in range(lm.n_layers):
        inp, out = run.resid[layer], run.resid[layer + 1]
        edited, trace = edit_residual(lm, run, Ablate("layer", layer, HALF))
        assert trace.fired == [True] and trace.changed == [True]
        assert torch.equal(edited, torch.where(real, inp + 0.5 * (out - inp), out))
        zeroed, _ = edit_residual(lm, run, Ablate("layer", layer, "zero"))
        assert torch.equal(zeroed, torch.where(real, inp, out))


# --------------------------------------------------------------------------------------------- atlas


@pytest.mark.parametrize("component", ["layer", "mlp"])
def test_a_registered_method_runs_through_the_atlas(half, component):
    lm = tiny()
    options = dict(component=component, n_resamples=50, batch_size=2)
    zero = atlas(lm, PROMPTS, method="zero", **options)
    halved = atlas(lm, PROMPTS, method=HALF, **options)
    assert halved.method == HALF and halved.per_example.shape == zero.per_example.shape
    # strictly between the no-op (KL exactly 0) and zero ablation, per example and layer
    assert (halved.per_example > 0).all(), halved.per_example
    assert (halved.per_example < zero.per_example).all(), (halved.per_example, zero.per_example)
    # the fast sweep equals the plain hook loop, and both equal a direct KL of the hooked forward
    plain = atlas(lm, PROMPTS, method=HALF, fast=False, **options)
    assert np.abs(plain.per_example - halved.per_example).max() <= 1e-4
    batch = encode(lm, PROMPTS)
    clean = next_token_logits(lm, batch)
    for layer in range(lm.n_layers):
        direct = kl(clean, next_token_logits(lm, batch, Ablate(component, layer, HALF))).numpy()
        assert np.abs(direct - halved.per_example[:, layer]).max() <= 1e-4


def test_an_unregistered_method_is_gone_from_the_atlas():
    with pytest.raises(InterventionError, match="unknown method 'half'"):
        atlas(tiny(), PROMPTS[:2], method=HALF, n_resamples=50)


# --------------------------------------------------------------------------------------------- CLI


def test_a_registered_method_runs_through_the_cli(half, tmp_path):
    prompts = _prompts_file(tmp_path)
    data = {}
    for method in ("zero", HALF):
        out = tmp_path / method
        result = _cli("atlas", "--model", "tiny-llama", "--prompts", str(prompts), "--out", str(out),
                      "--template", "none", "--no-cache", "--method", method)
        assert result.exit_code == 0, result.output
        assert f"layer/{method} ablation" in result.output
        data[method] = json.loads((out / "atlas.json").read_text())
        assert data[method]["method"] == method and data[method]["n_examples"] == len(PROMPTS)
    zero, halved = np.asarray(data["zero"]["per_example"]), np.asarray(data[HALF]["per_example"])
    assert zero.shape == halved.shape
    assert (halved > 0).all() and (halved < zero).all(), (halved, zero)


def test_cli_help_lists_the_registered_methods(tmp_path):
    before = _cli("atlas", "--help")
    assert before.exit_code == 0, before.output
    line = next(l for l in before.output.splitlines() if "--method" in l)
    assert all(m in line for m in BUILTINS) and HALF not in line
    methods.register_method(HALF, Half)  # after engine.cli was imported and the app built once
    try:
        during = _cli("atlas", "--help")
        assert during.exit_code == 0, during.output
        line = next(l for l in during.output.splitlines() if "--method" in l)
        assert "zero | mean | resample | noise | half" in line, line
    finally:
        methods.unregister_method(HALF)
    after = _cli("atlas", "--help")
    assert HALF not in next(l for l in after.output.splitlines() if "--method" in l)


# --------------------------------------------------------------------------------------------- unknown methods


def _assert_one_line_listing(message: str, names) -> None:
    assert "\n" not in message.strip(), message
    assert "unknown method 'bogus'" in message
    assert f"registered methods: {', '.join(names)}" in message, message


def test_an_unknown_method_is_a_one_line_error_listing_the_registered_methods(tmp_path):
    for build in (lambda: Ablate("layer", 0, method="bogus"), lambda: methods.get_method("bogus"),
                  lambda: atlas(tiny(), PROMPTS[:2], method="bogus", n_resamples=50)):
        with pytest.raises(InterventionError) as info:
            build()
        _assert_one_line_listing(str(info.value), BUILTINS)
    result = _cli("atlas", "--model", "tiny-llama", "--prompts", str(_prompts_file(tmp_path)),
                  "--out", str(tmp_path / "out"), "--no-cache", "--method", "bogus")
    assert result.exit_code == 2
    _assert_one_line_listing(result.output, BUILTINS)
    assert result.output.startswith("error:") and not (tmp_path / "out").exists()


def test_an_unknown_method_lists_methods_registered_from_outside(half):
    with pytest.raises(InterventionError) as info:
        Ablate("mlp", 1, method="bogus")
    _assert_one_line_listing(str(info.value), (*BUILTINS, HALF))
