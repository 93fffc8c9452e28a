"""POS-ANSWER: answer-token positions dominate BOS at every layer, under both protocols."""

from __future__ import annotations

import numpy as np

from engine import stats
from engine.atlas import Atlas
from engine.studies.atlas.common import Sizes, ci_pair, seed_atlas
from engine.studies.findings import Finding, StudyError, contrast, require  # noqa: F401 (re-exported)


def _position_profile(a: Atlas) -> tuple[np.ndarray, stats.Interval]:
    """Layer profile (mean over families) and the CI of its mean over layers (stratified bootstrap)."""
    per_ex = a.per_example.mean(1, keepdims=True)
    return np.asarray(a.layer_effect), stats.mean_ci(per_ex, a.example_families, 0, n_resamples=a.n_resamples,
                                                     seed=a.seed)


def _pos_finding(protocol: str, answer: Atlas, bos: Atlas, text: str, extra: dict | None = None,
                 extra_ci: dict | None = None) -> Finding:
    pa, ca = _position_profile(answer)
    pb, cb = _position_profile(bos)
    dominates = int(np.sum(pa > pb))
    figures = {"answer_effect": float(pa.mean()), "bos_effect": float(pb.mean()),
               "layers_answer_dominates": dominates, "n_layers": len(pa), "answer_profile": pa.tolist(),
               "bos_profile": pb.tolist(), "weakest_margin_layer": int(np.argmin(pa - pb)),
               "n_examples": answer.n_examples} | (extra or {})
    notes = [f"{text} Answer set effect {pa.mean():.4g} vs BOS set {pb.mean():.4g} (mean over layers); the answer "
             f"set is larger at {dominates}/{len(pa)} layers."]
    ci = {"answer_effect": ci_pair(ca), "bos_effect": ci_pair(cb)} | (extra_ci or {})
    return Finding(protocol, figures, holds=dominates == len(pa), ci=ci, seeds=[answer.seed], notes=notes,
                   suite_hash=answer.suite_hash)


def seed_protocol_positions(lm, sizes: Sizes) -> Finding:
    """The seed: zero the residual at "bos" (position 0) and at "answer" (the last three prompt positions, which
    include the measured one) at each layer; KL at the last position; first k per family."""
    answer = seed_atlas(lm, sizes, positions="last3")
    bos = seed_atlas(lm, sizes, positions="first")
    has_bos = lm.tokenizer.bos_token_id is not None and _adds_bos(lm)
    return _pos_finding("seed", answer, bos,
                        f"Seed protocol: residual zeroing at the last 3 prompt positions (incl. the measured one) vs "
                        f"position 0 ({'the BOS token' if has_bos else 'the first prompt token: no BOS here'}), "
                        f"first {sizes.seed_per_family}/family ({answer.n_examples} prompts).")


def rigorous_positions(lm, sizes: Sizes) -> Finding:
    """Equal-size sets, the measured position apart: the token before the answer position (1 token, the nearest
    answer-side token that is not measured) vs BOS (1 token; the first token where the tokenizer adds none),
    plus the measured position itself reported separately (large by construction). Same sample and the same
    residual zeroing as the seed protocol, so a disagreement is due to the position sets alone."""
    pre = seed_atlas(lm, sizes, positions=[-2])
    bos = seed_atlas(lm, sizes, positions="first")  # == the BOS token where the tokenizer adds one
    measured = seed_atlas(lm, sizes, positions="answer")
    pm, cm = _position_profile(measured)
    bos_text = "the BOS token" if _adds_bos(lm) else "the first token (this tokenizer adds no BOS)"
    return _pos_finding("rigorous", pre, bos,
                        f"Rigorous protocol: residual zeroing of one position each: the token before the measured "
                        f"position vs {bos_text}; "
                        f"the measured position alone: {pm.mean():.4g} (reported, not compared: it is the "
                        f"position whose output is measured). {_sample_text(sizes, measured)}",
                        extra={"measured_position_effect": float(pm.mean()),
                               "measured_position_profile": pm.tolist(), "bos_is_real_bos": _adds_bos(lm)},
                        extra_ci={"measured_position_effect": ci_pair(cm)})


def _sample_text(sizes: Sizes, a: Atlas) -> str:
    return f"First {sizes.seed_per_family}/family ({a.n_examples} prompts), the seed protocol's sample."


def _adds_bos(lm) -> bool:
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = lm.tokenizer("probe")["input_ids"]
    return bool(ids) and ids[0] == bos


def positions_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"the seed's 'answer' set has 3 positions and includes the measured one (effect of the measured "
             f"position alone: {rigorous.figures['measured_position_effect']:.4g}); with one non-measured "
             f"answer-side token against one BOS token the answer side is larger at "
             f"{rigorous.figures['layers_answer_dominates']}/{rigorous.figures['n_layers']} layers")


def pos_answer(lm, sizes: Sizes) -> tuple[Finding, Finding]:
    """POS-ANSWER: ablating the answer positions beats ablating BOS at every layer."""
    seed, rigorous = seed_protocol_positions(lm, sizes), rigorous_positions(lm, sizes)
    positions_contrast(seed, rigorous)
    return seed, rigorous
