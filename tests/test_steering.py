"""Steering on tiny random-weight models: identity at s = 0, signed scales, hooks always removed, random
controls of the requested norm, exact transfer maps on synthetic linear data, and the seed protocol's flaws
reproduced on purpose.

Everything here is fast (tiny models, a few prompts); nothing here gives a claim verdict.
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from engine import interventions as iv
from engine import models
from engine import steering as st
from engine.studies import steer as steer_studies
from engine.tasks import Example

ARCHS = ("llama", "gemma3")
N_LAYERS = 3


def _examples(family: str, prompts: list[str], target: str = " x") -> list[Example]:
    return [Example(f"{family}/{i}", family, "short", p, target, "exact") for i, p in enumerate(prompts)]


POS = _examples("alpha", ["The cat sat on the", "A dog ran to the", "My bird flew over", "Her fish swam in"], "a")
NEG = _examples("beta", ["1 + 2 =", "7 * 3 =", "9 - 4 =", "5 + 5 ="], "9")
EVAL = _examples("gamma", ["x = 3; y =", "def f(a):", "Once upon", "[1, 2,", "hello there"], "z")


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    return models.tiny(request.param, n_layers=N_LAYERS, seed=0)


@pytest.fixture(scope="module")
def tiny_directions(tiny):
    return st.diff_of_means(tiny, st.Contrast("c", tuple(POS), tuple(NEG)))


@pytest.fixture(scope="module")
def tiny_llama():
    return models.tiny("llama", n_layers=N_LAYERS, seed=0)


@pytest.fixture(scope="module")
def directions(tiny_llama):
    return st.diff_of_means(tiny_llama, st.Contrast("alpha-vs-beta", tuple(POS), tuple(NEG)))


def _no_hooks(lm) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks) for m in lm.model.modules())


# --------------------------------------------------------------------------------------------- directions


def test_diff_of_means_is_the_difference_of_mean_answer_residuals(tiny):
    contrast = st.Contrast("c", tuple(POS), tuple(NEG))
    d = st.diff_of_means(tiny, contrast)
    assert d.layers == list(range(N_LAYERS)) and d.vectors.shape == (N_LAYERS, tiny.d_model)
    for layer in range(N_LAYERS):  # independent construction: capture the layer output, pool by hand
        site = iv.Site("resid", layer)
        means = []
        for exs in (POS, NEG):
            batch = iv.encode(tiny, exs)
            vals = iv.capture(tiny, batch, [site])[site].values
            means.append(vals[torch.arange(len(batch)), batch.answer_pos].double().mean(0))
        torch.testing.assert_close(d.vectors[layer].double(), means[0] - means[1], rtol=1e-4, atol=1e-5)
        assert d.resid_norm[layer] > 0


def test_contrast_sets_must_be_non_empty():
    with pytest.raises(st.SteeringError, match="both sets"):
        st.Contrast("empty", tuple(POS), ())
    with pytest.raises(st.SteeringError, match="no examples of family"):
        st.family_contrast(POS + NEG, "delta")


def test_relative_and_absolute_units(directions):
    unit = directions.unit(1)
    assert float(unit.norm()) == pytest.approx(1.0, abs=1e-5)
    absolute = directions.vector(1, -4.0, "absolute")
    assert float(absolute.norm()) == pytest.approx(4.0, rel=1e-5)
    assert float(absolute @ unit) < 0  # the sign of s is kept (the seed dropped it)
    relative = directions.vector(1, 0.5, "relative")
    assert float(relative.norm()) == pytest.approx(0.5 * float(directions.resid_norm[1]), rel=1e-5)
    with pytest.raises(st.SteeringError, match="units"):
        directions.vector(1, 1.0, "percent")
    with pytest.raises(st.SteeringError, match="no direction for layer"):
        directions.vector(7, 1.0)


# --------------------------------------------------------------------------------------------- steering


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer=hst.sampled_from([0, 1, 2, "all"]),
       prompts=hst.lists(hst.text(alphabet="abcdefgh ijk=+0123456789", min_size=1, max_size=24), min_size=1,
                         max_size=4))
def test_zero_scale_is_the_identity(tiny, tiny_directions, layer, prompts):
    """s = 0 leaves the logits equal to an unhooked forward (the edit still fires)."""
    exs = _examples("h", prompts)
    prepared = st.prepare(tiny, exs)
    plain = iv.next_token_logits(tiny, prepared.batch)
    d = tiny_directions
    result = st.steer_direction(prepared, d, layer, 0.0)
    edited = iv.run_from(tiny, prepared.run, 0, prepared.run.resid[0],
                         *([iv.AddVector(l, d.vector(l, 0.0), 1.0) for l in range(N_LAYERS)] if layer == "all"
                           else [iv.AddVector(layer, d.vector(layer, 0.0), 1.0)]))
    torch.testing.assert_close(edited, plain, rtol=1e-5, atol=1e-5)
    assert result.kl.abs().max() < 1e-6
    assert result.dlogp.abs().max() < 1e-5
    assert _no_hooks(tiny)


def test_fast_path_equals_a_full_hooked_forward(tiny, tiny_directions):
    d = tiny_directions
    prepared = st.prepare(tiny, EVAL)
    for layer in range(N_LAYERS):
        vec = d.vector(layer, 1.5)
        fast = st.steer(prepared, vec, layer)
        full = iv.next_token_logits(tiny, prepared.batch, iv.AddVector(layer, vec, 1.0))
        torch.testing.assert_close(fast.kl, iv.kl(prepared.clean_logits, full), rtol=1e-3, atol=1e-5)
        assert fast.mean_kl > 0


def test_negative_scales_suppress_what_positive_scales_promote(directions, tiny_llama):
    """Signed steering is (to first order) odd in s: the effect of -s is minus the effect of +s."""
    prepared = st.prepare(tiny_llama, EVAL)
    plus = st.steer_direction(prepared, directions, 1, 0.05).dlogp
    minus = st.steer_direction(prepared, directions, 1, -0.05).dlogp
    assert (plus * minus <= 0).all()
    torch.testing.assert_close(plus, -minus, rtol=0.2, atol=1e-3)


def test_all_layers_adds_one_vector_per_layer(directions, tiny_llama):
    prepared = st.prepare(tiny_llama, EVAL)
    vecs = {l: directions.vector(l, 0.5) for l in directions.layers}
    all_layers = st.steer(prepared, vecs, "all")
    full = iv.next_token_logits(tiny_llama, prepared.batch, *[iv.AddVector(l, v, 1.0) for l, v in vecs.items()])
    torch.testing.assert_close(all_layers.kl, iv.kl(prepared.clean_logits, full), rtol=1e-3, atol=1e-5)
    with pytest.raises(st.SteeringError, match="dict"):
        st.steer(prepared, vecs[0], "all")


def test_hook_is_removed_after_an_exception(tiny_llama, directions):
    prepared = st.prepare(tiny_llama, EVAL)
    with pytest.raises(iv.InterventionError, match="dims"):  # wrong width: raises inside the hook
        st.steer(prepared, torch.ones(tiny_llama.d_model + 1), 1)
    assert _no_hooks(tiny_llama)

    layer = tiny_llama.adapter.layers(tiny_llama.model)[2]
    original = layer.forward

    def broken(*args, **kwargs):
        raise RuntimeError("boom in layer 2")

    layer.forward = broken
    try:
        with pytest.raises(RuntimeError, match="boom"):
            st.steer_direction(prepared, directions, 1, 1.0)
        with pytest.raises(RuntimeError, match="boom"):
            st.steer_direction(prepared, directions, "all", 1.0)
    finally:
        layer.forward = original
    assert _no_hooks(tiny_llama)
    after = st.steer_direction(prepared, directions, 1, 0.0)  # the model is intact afterwards
    assert after.kl.abs().max() < 1e-6


def test_out_of_range_layer_is_an_error(tiny_llama, directions):
    prepared = st.prepare(tiny_llama, EVAL)
    with pytest.raises(st.SteeringError, match="out of range"):
        st.steer(prepared, directions.vector(0, 1.0), N_LAYERS)


def test_sweep_grid_and_heatmap(tmp_path, tiny_llama, directions):
    prepared = st.prepare(tiny_llama, EVAL)
    sw = st.sweep(prepared, directions, scales=(-1.0, 0.0, 1.0), progress=False)
    assert sw.effect.shape == (N_LAYERS, 3) and np.isfinite(sw.effect).all()
    assert np.abs(sw.kl[:, 1]).max() < 1e-6  # the s = 0 column
    layer, scale, effect = sw.best(+1)
    assert scale == 1.0 and effect == sw.effect.max(axis=0)[2]
    for metric in ("effect", "kl"):
        path = sw.heatmap(tmp_path / f"{metric}.png", metric)
        assert path.stat().st_size > 1000


# --------------------------------------------------------------------------------------------- random control


@settings(max_examples=30, deadline=None)
@given(d=hst.integers(1, 700), n=hst.integers(1, 40), norm=hst.floats(1e-3, 1e3), seed=hst.integers(0, 2**31))
def test_random_directions_have_the_requested_norm(d, n, norm, seed):
    r = st.random_directions(d, n, norm, seed)
    assert r.shape == (n, d) and r.dtype == torch.float32
    torch.testing.assert_close(r.double().norm(dim=-1), torch.full((n,), norm, dtype=torch.float64), rtol=1e-5,
                               atol=0)
    torch.testing.assert_close(st.random_directions(d, n, norm, seed), r)  # seeded


def test_random_directions_differ_across_seeds_and_are_isotropic():
    a, b = st.random_directions(64, 8, 1.0, 0), st.random_directions(64, 8, 1.0, 1)
    assert not torch.allclose(a, b)
    many = st.random_directions(16, 4000, 1.0, 3)
    assert float(many.mean(0).norm()) < 0.1  # no preferred direction


def test_random_control_compares_at_equal_norm(tiny_llama, directions):
    prepared = st.prepare(tiny_llama, EVAL)
    rc = st.random_control(prepared, directions, 1, 1.0, n_random=12, seed=5)
    assert len(rc.random_effects) == 12 and rc.vector_norm == pytest.approx(float(directions.vector(1, 1.0).norm()))
    assert rc.threshold == pytest.approx(np.percentile(rc.random_effects, 95))
    assert rc.beats == (rc.direction_effect > rc.threshold)
    assert set(rc.to_dict()) >= {"direction_effect", "random_threshold", "rank", "beats"}


# --------------------------------------------------------------------------------------------- transfer


@pytest.mark.parametrize("d_x,d_y", [(8, 8), (12, 5), (5, 12)])
def test_linear_map_is_exact_on_a_linear_relation(d_x, d_y):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(d_x, d_y, generator=gen, dtype=torch.float64)
    bias = torch.randn(d_y, generator=gen, dtype=torch.float64)
    x = torch.randn(4 * d_x + 3, d_x, generator=gen, dtype=torch.float64)
    fitted = st.fit_linear_map(x, x @ w + bias)
    torch.testing.assert_close(fitted.weight, w, rtol=1e-8, atol=1e-8)
    assert fitted.r2 == pytest.approx(1.0, abs=1e-10)
    v = torch.randn(d_x, generator=gen, dtype=torch.float64)
    # a direction (difference of activations) maps through the linear part: the bias cancels
    torch.testing.assert_close(fitted.map_direction(v).double(), (v @ w), rtol=1e-5, atol=1e-5)
    x2 = torch.randn(7, d_x, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(fitted(x2), x2 @ w + bias, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(fitted(x2[0:1]) - fitted(x2[1:2]), ((x2[0] - x2[1]) @ w)[None], rtol=1e-8, atol=1e-8)


def test_linear_map_rejects_mismatched_pairs():
    with pytest.raises(st.SteeringError, match="same n"):
        st.fit_linear_map(torch.zeros(5, 3), torch.zeros(4, 3))


def test_relative_layer():
    assert st.relative_layer(2, 24, 30) == 3 and st.relative_layer(23, 24, 18) == 17
    assert st.relative_layer(0, 30, 18) == 0 and st.relative_layer(29, 30, 18) == 17


def test_transfer_frees_the_source_before_loading_the_target():
    """Tiny source and target of the same width (identity map); the loader records which models are alive."""
    alive: list[weakref.ref] = []

    def loader(key):
        live = sum(r() is not None for r in alive)
        assert live == 0, f"{live} model(s) still alive when loading {key}"
        lm = models.tiny("llama" if key == "src" else "gemma3", n_layers=N_LAYERS, seed=1)
        alive.append(weakref.ref(lm.model))
        return lm

    pairing = _examples("pair", [f"item {i} is" for i in range(6)])
    result = st.transfer("src", "tgt", fit_examples=POS + NEG, pairing_examples=pairing, eval_examples=EVAL,
                         contrast_fn=lambda exs: st.family_contrast(exs, "alpha"), source_layer=1, scale=1.0,
                         n_random=8, loader=loader)
    assert result.method == "identity" and result.memory.source_released
    assert result.target_layer == 1 and len(result.random.random_effects) == 8
    assert np.isfinite(result.mapped.effect) and -1 <= result.cosine_to_native <= 1
    d = result.to_dict()
    assert d["peak_rss_mb"] > 0 and d["both_models_mb"] > 0


def test_transfer_refuses_overlapping_prompts():
    with pytest.raises(st.SteeringError, match="overlap"):
        st.transfer("a", "b", fit_examples=POS + NEG, pairing_examples=POS, eval_examples=EVAL,
                    contrast_fn=lambda exs: st.family_contrast(exs, "alpha"), source_layer=0,
                    loader=lambda key: pytest.fail("must not load"))


# --------------------------------------------------------------------------------------------- seed protocol


def test_seed_protocol_drops_the_sign_of_s(tiny_llama):
    """The seed normalised its vector to |s|: s = -4 and s = +4 give the same KL (reproduced on purpose)."""
    minus = st.seed_protocol_steer(tiny_llama, EVAL, 1, -4.0)
    plus = st.seed_protocol_steer(tiny_llama, EVAL, 1, 4.0)
    assert minus.kls == plus.kls and all(k >= 0 for k in minus.kls)
    assert minus.mean_kl > 0


def test_seed_reference_keeps_the_sign_and_edits_the_last_position_only(tiny_llama):
    contrast = st.Contrast("c", tuple(POS), tuple(NEG))
    minus = st.seed_reference_steer(tiny_llama, contrast, EVAL, 2, -4.0)
    plus = st.seed_reference_steer(tiny_llama, contrast, EVAL, 2, 4.0)
    assert minus.kls != plus.kls
    assert minus.protocol == "seed-reference"


def test_seed_protocol_sweep_matches_the_single_layer_procedure(tiny_llama):
    sw = st.seed_protocol_sweep(tiny_llama, EVAL, [0, 2], -4.0)
    single = st.seed_protocol_steer(tiny_llama, EVAL, 2, -4.0)
    np.testing.assert_allclose(sw[2], single.kls, rtol=1e-3, atol=1e-6)


def test_off_target_directions_are_the_other_families_at_the_directions_norm(tiny_llama):
    """Off-target control: one direction per other family (that family minus the remaining ones, the target
    family left out), rescaled to the given norm, steered on the same prepared prompts."""
    examples = POS + NEG + _examples("delta", ["Zebra one", "Zebra two"])
    prepared = st.prepare(tiny_llama, EVAL)
    effects = st.off_target_effects(prepared, examples, "alpha", 1, 3.0)
    families = {ex.family for ex in examples} - {"alpha"}
    assert set(effects) == families and all(np.isfinite(v) for v in effects.values())
    # the same vector steered by hand gives the same effect
    res = st.pooled_residuals(tiny_llama, examples, [1])[:, 0].double()
    fams = np.asarray([ex.family for ex in examples])
    f = min(families)
    v = res[torch.as_tensor(fams == f)].mean(0) - res[torch.as_tensor((fams != f) & (fams != "alpha"))].mean(0)
    by_hand = st.steer(prepared, (v / v.norm() * 3.0).float(), 1).effect
    assert effects[f] == pytest.approx(by_hand, rel=1e-5, abs=1e-6)


def test_steering_studies_keep_no_bootstrap_of_their_own():
    """One bootstrap (engine.decisions): the block's own resampling helpers are gone."""
    assert not hasattr(steer_studies, "bootstrap_ci")
