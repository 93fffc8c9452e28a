"""ABL-MEAN: the residual mean is near zero, mean ablation gives all-zero effects, zero ablation is valid."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from engine import metrics, stats
from engine.interventions import (
    Site,
    capture,
    clean_run,
    encode,
)
from engine.interventions import methods as ablation_methods
from engine.studies.atlas.common import (
    SEEDS,
    TEMPLATE,
    Sizes,
    by_length,
    first_examples,
    rigorous_atlas,
    seed_atlas,
    stratified_sample,
)
from engine.studies.findings import Finding, StudyError, contrast, require  # noqa: F401 (re-exported)


def residual_mean_ratios(lm, examples, batch_size: int = 16) -> dict[str, list[float]]:
    """Per layer, ||mean residual|| / mean ||residual|| over real tokens: all tokens (as a single pool), and per
    position class (first token, body, answer position) - the first token often carries a huge constant vector.
    """
    examples = by_length(lm, examples)
    batch = encode(lm, examples, template=TEMPLATE)
    sites = [Site("resid", l) for l in range(lm.n_layers)]
    sums = {k: np.zeros((lm.n_layers, lm.d_model)) for k in ("all", "first", "body", "answer")}
    norms = {k: np.zeros(lm.n_layers) for k in sums}
    counts = dict.fromkeys(sums, 0)
    for chunk in batch.chunks(batch_size):
        got = capture(lm, chunk, sites)
        cls = chunk.class_ids()
        masks = {"all": cls >= 0, "first": cls == 0, "body": cls == 1, "answer": cls == 2}
        for key, mask in masks.items():
            counts[key] += int(mask.sum())
            for l, s in enumerate(sites):
                v = got[s].values.double().cpu()[mask]
                sums[key][l] += v.sum(0).numpy()
                norms[key][l] += v.norm(dim=-1).sum().item()
    return {k: [float(np.linalg.norm(sums[k][l] / max(counts[k], 1)) / max(norms[k][l] / max(counts[k], 1), 1e-30))
                for l in range(lm.n_layers)] for k in sums}


def seed_mean_ablation_effects(lm, examples) -> tuple[list[float], int, int]:
    """The seed's "mean ablation" as it ran: the hook's mean branch received no means and returned the hidden
    states unchanged. Returns (mean KL per layer, layers where the hook fired, layers where it changed anything).
    """
    examples = by_length(lm, examples)
    batch = encode(lm, examples, template=TEMPLATE)
    run = clean_run(lm, batch)
    layers = lm.adapter.layers(lm.model)
    effects, fired, changed = [], 0, 0

    def seed_hook(means=None):
        state = {"fired": False, "changed": False}

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            state["fired"] = True
            if means is None:  # the seed's branch: nothing passed in -> return the input unchanged
                new = hidden
            else:
                new = means.to(hidden.dtype).expand_as(hidden)
            state["changed"] = not torch.equal(new, hidden)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook, state

    with torch.no_grad():
        for l in range(lm.n_layers):
            hook, state = seed_hook(None)
            handle = layers[l].register_forward_hook(hook)
            try:
                edited = run.rerun(start=l)  # the clean suffix from layer l, under the seed's own hook
            finally:
                handle.remove()
            fired += int(state["fired"])
            changed += int(state["changed"])
            effects.append(float(metrics.kl(run.logits, edited).mean()))
    return effects, fired, changed


def abl_parts(ratio: float, mean_max: float, rho_min: float | None, destructive: float | None,
               params: Mapping[str, Any]) -> dict[str, bool]:
    return {
        "near_zero_mean": ratio < params["near_zero_mean_ratio"],
        "mean_ablation_all_zero": mean_max <= params["zero_effect_tolerance"],
        "zero_ablation_valid": (rho_min is not None and rho_min >= params["rank_rho_threshold"]
                                and destructive is not None and destructive <= params["destructive_ratio"]),
    }


def _parts_text(parts: Mapping[str, bool]) -> str:
    held = [k for k, v in parts.items() if v]
    failed = [k for k, v in parts.items() if not v]
    return f"Parts that hold: {', '.join(held) or 'none'}; parts that do not: {', '.join(failed) or 'none'}."


def seed_protocol_mean_ablation(lm, sizes: Sizes, params: Mapping[str, Any]) -> Finding:
    """The seed: "mean" ablation returned its input (all effects exactly 0), zero ablation = residual zeroing,
    residual mean taken over all tokens."""
    sample = first_examples(sizes.seed_per_family)
    effects, fired, changed = seed_mean_ablation_effects(lm, sample[: sizes.noop_examples])
    zero = seed_atlas(lm, sizes)
    ratios = residual_mean_ratios(lm, sample, sizes.batch_size)
    ratio = float(np.median(ratios["all"]))
    zero_profile = np.asarray(zero.layer_effect)
    mean_max = float(np.max(np.abs(effects)))
    rho = stats.rank_rho(zero_profile, effects)
    parts = abl_parts(ratio, mean_max, rho, None, params)
    figures = {"mean_ablation_effect": mean_max, "mean_hook_fired_layers": fired,
               "mean_hook_changed_layers": changed, "residual_mean_ratio": ratio,
               "residual_mean_ratio_per_layer": ratios["all"], "zero_effects": zero_profile.tolist(),
               "rank_rho_zero_mean": rho, "parts": parts, "n_examples": zero.n_examples}
    notes = [f"Seed protocol: the 'mean' hook fired at {fired}/{lm.n_layers} layers and changed the activations at "
             f"{changed} (no means were passed: it returned its input), so every mean-ablation effect is at most "
             f"{mean_max:.3g} (float noise of re-running the same layers) and no rank order exists to compare; zero "
             f"ablation = residual zeroing (first {sizes.seed_per_family}/family, {zero.n_examples} prompts; no-op "
             f"check on {min(len(sample), sizes.noop_examples)} prompts); "
             f"residual mean over all tokens: median ||mean||/mean||x|| = {ratio:.3g}. " + _parts_text(parts)]
    holds = all(parts.values())
    return Finding("seed", figures, holds=holds, seeds=[SEEDS[0]], notes=notes, suite_hash=zero.suite_hash)


def rigorous_mean_ablation(lm, sizes: Sizes, params: Mapping[str, Any], seed: int = SEEDS[0]) -> Finding:
    """Real mean ablation (per layer and position class over the sample), resample and noise, against zero
    (layer-contribution) ablation on the same prompts; residual mean norm per position class; Spearman rank
    order of the layer profiles. Runs on the NL stratified sample (short prompts; the HUB-NL zero atlas is reused).
    """
    profiles = {m: np.asarray(rigorous_atlas(lm, sizes, seed, suite="nl", method=m).layer_effect)
                for m in ablation_methods.names()}  # every registered method (built-ins: zero, mean, resample, noise)
    sample = stratified_sample(seed, sizes.nl_per_family, suite="nl")
    ratios = residual_mean_ratios(lm, sample, sizes.batch_size)
    # the first token is one vector per prompt (often a near-constant attention sink): judged apart
    body_ratio = float(np.median(ratios["body"]))
    mean_max = float(profiles["mean"].max())
    rhos = {m: stats.rank_rho(profiles["zero"], profiles[m]) for m in profiles if m != "zero"}
    rho_min = None if rhos["mean"] is None or rhos["resample"] is None else min(rhos["mean"], rhos["resample"])
    destructive = float(profiles["zero"].sum() / profiles["mean"].sum()) if profiles["mean"].sum() > 0 else None
    parts = abl_parts(body_ratio, mean_max, rho_min, destructive, params)
    figures = {"mean_ablation_effect": mean_max, "residual_mean_ratio": body_ratio,
               "residual_mean_ratio_first": float(np.median(ratios["first"])),
               "residual_mean_ratio_answer": float(np.median(ratios["answer"])),
               "residual_mean_ratio_all": float(np.median(ratios["all"])),
               "residual_mean_ratio_per_layer": ratios["body"],
               "rank_rho_zero_mean": rhos["mean"], "rank_rho_zero_resample": rhos["resample"],
               "rank_rho_zero_noise": rhos["noise"], "zero_over_mean_effect": destructive,
               "effects": {m: p.tolist() for m, p in profiles.items()},
               "top_layer": {m: int(np.argmax(p)) for m, p in profiles.items()}, "parts": parts,
               "n_examples": len(sample)}
    notes = [f"Rigorous protocol: layer-contribution ablation by zero / mean (per position class over the sample) / "
             f"resample (another prompt's activation) / noise (Gaussian at the activation's std) on {len(sample)} NL "
             f"prompts ({sizes.nl_per_family}/family, seed {seed}). Residual ||mean||/mean||x|| (median over layers): "
             f"body {body_ratio:.3g}, first token {figures['residual_mean_ratio_first']:.3g}, all tokens pooled "
             f"{figures['residual_mean_ratio_all']:.3g}. Mean-ablation max effect {mean_max:.4g}; Spearman vs zero: "
             + ", ".join(f"{m} {('n/a' if r is None else f'{r:.2f}')}" for m, r in rhos.items())
             + (f"; zero/mean total effect {destructive:.3g}" if destructive is not None else "") + ". "
             + _parts_text(parts)]
    return Finding("rigorous", figures, holds=all(parts.values()), seeds=[seed], notes=notes)


def mean_ablation_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"the seed's mean ablation changed nothing (hook changed {seed.figures['mean_hook_changed_layers']} "
             f"layers), so its 'all-zero effects' follow from the no-op; real mean ablation gives up to "
             f"{rigorous.figures['mean_ablation_effect']:.4g} nats")


def abl_mean(lm, sizes: Sizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """ABL-MEAN: near-zero residual mean, all-zero mean-ablation effects, zero ablation valid (every part must
    hold; thresholds from ``params``). Checks that the seed's mean hook fired at every layer."""
    seed = seed_protocol_mean_ablation(lm, sizes, params)
    rigorous = rigorous_mean_ablation(lm, sizes, params)
    require(seed.figures["mean_hook_fired_layers"] == lm.n_layers, "the seed's mean hook must fire at every layer")
    mean_ablation_contrast(seed, rigorous)
    return seed, rigorous
