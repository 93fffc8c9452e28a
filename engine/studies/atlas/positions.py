"""POS-ANSWER: answer-token positions dominate BOS at every layer, under both protocols.

Rule (catalogue v2): at every layer (Holm) the paired CI of the per-example effect difference answer - BOS > 0:
CONFIRMED; at some layer below ``delta``: FAILED (:func:`engine.decisions.for_every`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from engine import decisions as D
from engine.atlas import Atlas
from engine.studies.atlas.common import (
    SEEDS,
    AtlasSpec,
    Sizes,
    accuracy_figures,
    aligned,
    logit_profile,
    reported_spec,
    rigorous_spec,
    seed_spec,
)
from engine.studies.findings import Finding, StudyError, contrast, require  # noqa: F401 (re-exported)
from engine.studies.specs import measure_on


def decide_positions(protocol: str, answer: Atlas, bos: Atlas, params: Mapping[str, Any], text: str,
                     extra: dict | None = None) -> Finding:
    """for_every over the layers of the paired per-example differences answer - BOS (same prompts)."""
    pa, pb, groups = aligned(answer, bos)
    diffs = D.paired(pa, pb)
    members = {f"L{layer}": (diffs[:, i], groups) for i, layer in enumerate(answer.layers)}
    holds = D.for_every(members, delta=params["delta"], rationale=params["delta_rationale"],
                        label="answer - BOS effect at every layer", n_resamples=answer.n_resamples, seed=answer.seed)
    ea, eb = np.asarray(answer.layer_effect), np.asarray(bos.layer_effect)
    margins = holds.estimate
    figures = {"answer_effect": float(ea.mean()), "bos_effect": float(eb.mean()),
               "layers_answer_dominates": int(sum(holds.details["holm_for"].values())),
               "layers_answer_larger": int(np.sum(ea > eb)), "n_layers": len(ea), "answer_profile": ea.tolist(),
               "bos_profile": eb.tolist(), "margins": margins,
               "weakest_margin_layer": min(margins, key=margins.get), "n_examples": answer.n_examples,
               "template": answer.template, "robustness": _robustness(answer, bos, ea, eb)} | (extra or {})
    notes = [(f"{text} Answer set effect {ea.mean():.4g} vs BOS set {eb.mean():.4g} (mean over layers); the answer "
             f"set is larger at {figures['layers_answer_larger']}/{len(ea)} layers, CI-separated (Holm) at "
             f"{figures['layers_answer_dominates']}. {holds.statement}.")]
    return Finding(protocol, figures, holds=holds, seeds=[answer.seed], notes=notes, suite_hash=answer.suite_hash)


def _robustness(answer: Atlas, bos: Atlas, ea: np.ndarray, eb: np.ndarray) -> dict[str, Any]:
    """Beside KL: the same comparison on the centred answer-logit drop (logit-linear), and the family accuracy."""
    la, lb = logit_profile(answer), logit_profile(bos)
    out: dict[str, Any] = {"template": answer.template, **accuracy_figures(answer)}
    if la is None or lb is None:
        out["logit_metric"] = {"undecided": "not measured (atlas without logit data)"}
        return out
    out["logit_metric"] = {"metric": "centred_answer_logit_drop", "answer_effect": float(la.mean()),
                           "bos_effect": float(lb.mean()), "layers_answer_larger": int(np.sum(la > lb)),
                           "agrees_with_kl": bool((la.mean() > lb.mean()) == (ea.mean() > eb.mean()))}
    return out


def positions_specs(model: str, sizes: Sizes, seed: int = SEEDS[0]) -> dict[str, AtlasSpec]:
    """POS-ANSWER's sweeps: the seed's position classes on its first k per family; the rigorous one-token sets on
    seed ``seed``'s sample; the measured position alone (reported)."""
    return {"seed answer": seed_spec(model, sizes, positions="last3"),
            "seed bos": seed_spec(model, sizes, positions="first"),
            "answer": rigorous_spec(model, sizes, seed, component="resid", positions=(-2,)),
            "bos": rigorous_spec(model, sizes, seed, component="resid", positions="first"),
            "measured": reported_spec(model, sizes, component="resid", positions="answer")}


def seed_protocol_positions(answer: Atlas, bos: Atlas, sizes: Sizes, params: Mapping[str, Any],
                            has_bos: bool) -> Finding:
    """The seed: zero the residual at "bos" (position 0) and at "answer" (the last three prompt positions, which
    include the measured one) at each layer; KL at the last position; first k per family."""
    return decide_positions("seed", answer, bos, params,
                            f"Seed protocol: residual zeroing at the last 3 prompt positions (incl. the measured one) "
                            f"vs position 0 ({'the BOS token' if has_bos else 'the first prompt token: no BOS here'}),"
                            f" first {sizes.seed_per_family}/family ({answer.n_examples} prompts).")


def rigorous_positions(pre: Atlas, bos: Atlas, measured: Atlas, sizes: Sizes, params: Mapping[str, Any],
                       has_bos: bool, seed: int = SEEDS[0]) -> Finding:
    """Equal-size sets, the measured position apart: the token before the answer position (1 token, the nearest
    answer-side token that is not measured) vs BOS (1 token; the first token where the tokenizer adds none), on
    the seed's stratified sample, residual zeroing at those positions (as the seed, so a disagreement is due to
    the position sets and the sample); the measured position itself reported separately (large by construction).
    """
    pm = np.asarray(measured.layer_effect)  # a figure beside the decision
    bos_text = "the BOS token" if has_bos else "the first token (this tokenizer adds no BOS)"
    return decide_positions("rigorous", pre, bos, params,
                            f"Rigorous protocol: residual zeroing of one position each on the stratified sample "
                            f"({sizes.rigorous_per_family}/family, seed {seed}): the token before the measured "
                            f"position vs {bos_text}; the measured position alone ({measured.n_examples} prompts): {pm.mean():.4g} (reported, not "
                            f"compared: it is the position whose output is measured).",
                            extra={"measured_position_effect": float(pm.mean()), "measured_position_n": measured.n_examples,
                                   "measured_position_profile": pm.tolist(), "bos_is_real_bos": has_bos})


def adds_bos(lm) -> bool:
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = lm.tokenizer("probe")["input_ids"]
    return bool(ids) and ids[0] == bos


def positions_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"the seed's 'answer' set has 3 positions and includes the measured one (effect of the measured "
             f"position alone: {rigorous.figures['measured_position_effect']:.4g}); with one non-measured "
             f"answer-side token against one BOS token the answer side is CI-larger at "
             f"{rigorous.figures['layers_answer_dominates']}/{rigorous.figures['n_layers']} layers")


def positions_findings(m: Mapping[str, Any], model: str, sizes: Sizes,
                       params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """POS-ANSWER on :func:`positions_specs`' measurements: ablating the answer positions beats ablating BOS at
    every layer."""
    has_bos = adds_bos(m.load_model(model))
    seed = seed_protocol_positions(m["seed answer"], m["seed bos"], sizes, params, has_bos)
    rigorous = rigorous_positions(m["answer"], m["bos"], m["measured"], sizes, params, has_bos)
    positions_contrast(seed, rigorous)
    return seed, rigorous


def pos_answer(lm, sizes: Sizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """:func:`positions_findings` on a model in hand (unit tests; a catalogue row runs through its template)."""
    return positions_findings(measure_on(lm, positions_specs(lm.key, sizes)), lm.key, sizes, params)
