"""ABL-MEAN: the residual mean is near zero, mean ablation gives all-zero effects, zero ablation is valid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from engine import decisions as D
from engine import metrics, stats
from engine.cache import measured as cached_measurement
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
    aligned,
    by_length,
    first_examples,
    rigorous_atlas,
    seed_atlas,
    sizes_for,
    stratified_sample,
)
from engine.studies.findings import Finding, StudyError, contrast, require  # noqa: F401 (re-exported)


def residual_mean_ratios(lm, examples, batch_size: int = 16) -> dict[str, Any]:
    """Per layer, ||mean residual|| / mean ||residual|| over real tokens: all tokens (as a single pool), and per
    position class (first token, body, answer position) - the first token often carries a huge constant vector.

    Also, per example (key ``"per_example"``, rows in token-length order, with ``"families"``): jackknife
    pseudo-values of the pooled body ratio (the median over layers of ||pooled body mean|| / pooled mean body-token
    norm, a ratio of means): n theta - (n - 1) theta_(-i), where theta_(-i) leaves prompt i out of both pools. Their
    mean is the jackknife estimate and their spread carries the uncertainty of the pooled mean itself (resampling
    the prompts that form it), so the rule's interval on them is the interval of the pooled ratio, not of
    per-prompt ratios around a mean held fixed. ``"body_ratio_pooled"``: theta on every prompt.
    """
    examples = by_length(lm, examples)
    return cached_measurement("residual-mean-ratios", lm, examples,
                              lambda: _residual_mean_ratios(lm, examples, batch_size), batch_size=batch_size,
                              template=TEMPLATE)


def _residual_mean_ratios(lm, examples, batch_size: int) -> dict[str, Any]:
    batch = encode(lm, examples, template=TEMPLATE)
    sites = [Site("resid", l) for l in range(lm.n_layers)]
    sums = {k: np.zeros((lm.n_layers, lm.d_model)) for k in ("all", "first", "body", "answer")}
    norms = {k: np.zeros(lm.n_layers) for k in sums}
    counts = dict.fromkeys(sums, 0)
    body_norm = np.zeros((len(examples), lm.n_layers))  # per example: mean body-token norm per layer
    ex_sum = np.zeros((len(examples), lm.n_layers, lm.d_model), dtype=np.float32)  # per example: body-token sum
    ex_norm = np.zeros((len(examples), lm.n_layers))  # per example: summed body-token norms
    row = 0
    for chunk in batch.chunks(batch_size):
        got = capture(lm, chunk, sites)
        cls = chunk.class_ids()
        masks = {"all": cls >= 0, "first": cls == 0, "body": cls == 1, "answer": cls == 2}
        size = cls.shape[0]
        for key, mask in masks.items():
            counts[key] += int(mask.sum())
            for l, s in enumerate(sites):
                v = got[s].values.double().cpu()
                sums[key][l] += v[mask].sum(0).numpy()
                token_norms = v.norm(dim=-1)
                norms[key][l] += token_norms[mask].sum().item()
                if key == "body":
                    m = mask.double()
                    body_norm[row:row + size, l] = ((token_norms * m).sum(-1) / m.sum(-1).clamp(min=1.0)).numpy()
                    ex_sum[row:row + size, l] = (v * m[..., None]).sum(1).numpy()
                    ex_norm[row:row + size, l] = (token_norms * m).sum(-1).numpy()
        row += size
    out: dict[str, Any] = {
        k: [float(np.linalg.norm(sums[k][l] / max(counts[k], 1)) / max(norms[k][l] / max(counts[k], 1), 1e-30))
            for l in range(lm.n_layers)] for k in sums}
    total_sum, total_norm = ex_sum.astype(np.float64).sum(0), ex_norm.sum(0)  # [L, d], [L]

    def theta(vec_sum: np.ndarray, norm_sum: np.ndarray) -> float:  # ||sum / count|| / (norms / count)
        return float(np.median(np.linalg.norm(vec_sum, axis=-1) / np.maximum(norm_sum, 1e-30)))

    full = theta(total_sum, total_norm)
    n = len(examples)
    if n > 1:
        loo = np.asarray([theta(total_sum - ex_sum[i], total_norm - ex_norm[i]) for i in range(n)])
        pseudo = n * full - (n - 1) * loo
    else:
        pseudo = np.asarray([full])
    out["per_example"] = pseudo.tolist()
    out["body_ratio_pooled"] = full
    out["families"] = [ex.family for ex in examples]
    return out


def seed_mean_ablation_effects(lm, examples) -> tuple[list[float], int, int]:
    """The seed's "mean ablation" as it ran: the hook's mean branch received no means and returned the hidden
    states unchanged. Returns (mean KL per layer, layers where the hook fired, layers where it changed anything).
    """
    examples = by_length(lm, examples)
    effects, fired, changed = cached_measurement("seed-mean-hook", lm, examples,
                                                 lambda: _seed_mean_ablation_effects(lm, examples), template=TEMPLATE)
    return effects, fired, changed


def _seed_mean_ablation_effects(lm, examples) -> tuple[list[float], int, int]:
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


def per_example_spearman(a: np.ndarray, b: np.ndarray) -> list[float | None]:
    """Per example (row), the Spearman rho of two layer profiles; None where it is undefined (a constant profile):
    an undefined statistic is a failed precondition of the part that reads it, never 0."""
    out = []
    for x, y in zip(np.asarray(a), np.asarray(b)):
        rho = stats.rank_rho(x, y)
        out.append(None if rho is None else float(rho))
    return out


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


THRESHOLD_PART = "a threshold part: decided by where its whole CI lies relative to the threshold (catalogue v3)"


def decide_abl_parts(ratios: Sequence[float], ratio_groups: Sequence[str], mean_effects: Sequence[float] | None,
                     rhos: Sequence[float] | None, groups: Sequence[str], params: Mapping[str, Any],
                     seed: int = SEEDS[0]) -> dict[str, D.Evidence]:
    """ABL-MEAN's three parts, each a threshold claim (:func:`engine.decisions.greater` with ``delta = 0``) on
    per-example values: for when the whole CI lies on the claimed side of the threshold, against when it lies
    wholly on the other side, else undecided (never against while the estimate and part of the CI satisfy it):

    * near_zero_mean: ``near_zero_mean_ratio - ratio`` > 0 (the ratio's CI upper below the threshold);
    * mean_ablation_all_zero: ``zero_effect_tolerance - mean-ablation KL`` > 0 at every layer (``mean_effects``
      [prompts, layers]: :func:`engine.decisions.for_every`, Holm; the mean of per-prompt maxima would exceed the
      maximum of the layers' means and bias the part towards FAILED); a 1-D ``mean_effects`` is a per-prompt figure;
    * zero_ablation_valid: ``Spearman(zero, mean) - rank_rho_threshold`` > 0 (the rho's CI lower above it); a
      prompt whose rho is undefined (a constant profile) makes the part a failed precondition, not a 0.

    A part whose values are None (a method that cannot measure it) is left out.
    """
    parts = {"near_zero_mean": D.greater([params["near_zero_mean_ratio"] - r for r in ratios], ratio_groups,
                                         delta=0.0, rationale=THRESHOLD_PART,
                                         label="near-zero threshold - residual mean ratio", seed=seed)}
    if mean_effects is not None:
        effects = np.asarray(mean_effects, dtype=np.float64)
        tol = params["zero_effect_tolerance"]
        if effects.ndim == 2:  # [prompts, layers]: every layer's mean effect below the tolerance (Holm)
            parts["mean_ablation_all_zero"] = D.for_every(
                {f"L{l}": (tol - effects[:, l], list(groups)) for l in range(effects.shape[1])}, delta=0.0,
                rationale=THRESHOLD_PART, label="zero-effect tolerance - mean-ablation KL, every layer", seed=seed)
        else:
            parts["mean_ablation_all_zero"] = D.greater(
                tol - effects, groups, delta=0.0, rationale=THRESHOLD_PART,
                label="zero-effect tolerance - max mean-ablation KL", seed=seed)
    if rhos is not None:
        undefined = sum(r is None for r in rhos)
        why = (f"Spearman(zero, mean) is undefined (a constant layer profile) for {undefined} of {len(rhos)} prompts: "
               "an undefined statistic is a failed precondition" if undefined else "")
        parts["zero_ablation_valid"] = D.greater(
            [(0.0 if r is None else r) - params["rank_rho_threshold"] for r in rhos], groups, delta=0.0,
            rationale=THRESHOLD_PART, label="Spearman(zero, mean) - threshold", seed=seed, precondition=why)
    return parts


def _parts_text(parts: Mapping[str, D.Evidence]) -> str:
    return " ".join(f"{name}: {ev.outcome.value} ({ev.statement})." for name, ev in parts.items())


NOOP = ("precondition failed: the seed's mean hook changed the activations at {changed}/{n} layers (no means were "
        "passed: it returned its input), so its all-zero effects are no evidence; parts not decided: "
        "mean_ablation_all_zero, zero_ablation_valid")


def seed_protocol_mean_ablation(lm, sizes: Sizes, params: Mapping[str, Any]) -> Finding:
    """The seed: "mean" ablation returned its input (all effects exactly 0), zero ablation = residual zeroing,
    residual mean taken over all tokens. A hook that changes nothing is a precondition failure: INCONCLUSIVE
    with the near-zero part (the one its method measures) recorded."""
    sample = first_examples(sizes.seed_per_family, sizes.families)
    effects, fired, changed = seed_mean_ablation_effects(lm, sample[: sizes.noop_examples])
    zero = seed_atlas(lm, sizes)
    ratios = residual_mean_ratios(lm, sample, sizes.batch_size)
    ratio = float(np.median(ratios["all"]))
    zero_profile = np.asarray(zero.layer_effect)
    mean_max = float(np.max(np.abs(effects)))
    parts = decide_abl_parts(ratios["per_example"], ratios["families"], None, None, [], params)
    undecided = NOOP.format(changed=changed, n=lm.n_layers) if changed == 0 else ""
    holds = parts["near_zero_mean"] if undecided else parts
    figures = {"mean_ablation_effect": mean_max, "mean_hook_fired_layers": fired,
               "mean_hook_changed_layers": changed, "residual_mean_ratio": ratio,
               "residual_mean_ratio_per_layer": ratios["all"], "zero_effects": zero_profile.tolist(),
               "rank_rho_zero_mean": stats.rank_rho(zero_profile, np.asarray(effects)[list(zero.layers)]),
               "parts": {k: e.outcome.value for k, e in parts.items()}, "n_examples": zero.n_examples,
               "precondition_failed": undecided or None}
    notes = [(undecided + ". ") if undecided else "", f"Seed protocol: the 'mean' hook fired at {fired}/{lm.n_layers} layers and changed the activations at "
             f"{changed} (no means were passed: it returned its input), so every mean-ablation effect is at most "
             f"{mean_max:.3g} (float noise of re-running the same layers); zero ablation = residual zeroing (first "
             f"{sizes.seed_per_family}/family, {zero.n_examples} prompts; no-op check on "
             f"{min(len(sample), sizes.noop_examples)} prompts); residual mean over all tokens: median "
             f"||mean||/mean||x|| = {ratio:.3g}. " + _parts_text(parts)]
    return Finding("seed", figures, holds=holds, seeds=[SEEDS[0]], notes=[n for n in notes if n],
                   suite_hash=zero.suite_hash, undecided=undecided)


def rigorous_mean_ablation(lm, sizes: Sizes, params: Mapping[str, Any], seed: int = SEEDS[0]) -> Finding:
    """Real mean ablation (per layer and position class over the sample), resample and noise, against zero
    (layer-contribution) ablation on the same prompts; residual mean norm per position class; per-prompt
    Spearman rank order of the layer profiles. Runs on the NL stratified sample (the HUB-NL zero atlas is reused).
    """
    atlases = {m: rigorous_atlas(lm, sizes, seed, suite="nl", method=m)
               for m in ablation_methods.names()}  # every registered method (built-ins: zero, mean, resample, noise)
    profiles = {m: np.asarray(a.layer_effect) for m, a in atlases.items()}
    sample = stratified_sample(seed, sizes.nl_per_family, sizes.families, suite="nl")
    ratios = residual_mean_ratios(lm, sample, sizes.batch_size)
    zero_x, mean_x, groups = aligned(atlases["zero"], atlases["mean"])
    _, resample_x, _ = aligned(atlases["zero"], atlases["resample"])
    rho_mean = per_example_spearman(zero_x, mean_x)
    parts = decide_abl_parts(ratios["per_example"], ratios["families"], mean_x, rho_mean,
                             groups, params, seed)
    body_ratio = float(np.median(ratios["body"]))
    mean_max = float(profiles["mean"].max())
    rhos = {m: stats.rank_rho(profiles["zero"], profiles[m]) for m in profiles if m != "zero"}
    destructive = float(profiles["zero"].sum() / profiles["mean"].sum()) if profiles["mean"].sum() > 0 else None
    figures = {"mean_ablation_effect": mean_max, "residual_mean_ratio": body_ratio,
               "residual_mean_ratio_first": float(np.median(ratios["first"])),
               "residual_mean_ratio_answer": float(np.median(ratios["answer"])),
               "residual_mean_ratio_all": float(np.median(ratios["all"])),
               "residual_mean_ratio_per_layer": ratios["body"],
               "rank_rho_zero_mean": rhos["mean"], "rank_rho_zero_resample": rhos["resample"],
               "rank_rho_zero_noise": rhos.get("noise"), "zero_over_mean_effect": destructive,
               "mean_prompt_rho_zero_mean": _mean_defined(rho_mean),
               "mean_prompt_rho_zero_resample": _mean_defined(per_example_spearman(zero_x, resample_x)),
               "effects": {m: p.tolist() for m, p in profiles.items()},
               "top_layer": {m: int(np.argmax(p)) for m, p in profiles.items()},
               "parts": {k: e.outcome.value for k, e in parts.items()}, "n_examples": len(sample)}
    notes = [f"Rigorous protocol: layer-contribution ablation by zero / mean (per position class over the sample) / "
             f"resample (another prompt's activation) / noise (Gaussian at the activation's std) on {len(sample)} NL "
             f"prompts ({sizes.nl_per_family}/family, seed {seed}). Residual ||mean||/mean||x|| (median over layers): "
             f"body {body_ratio:.3g}, first token {figures['residual_mean_ratio_first']:.3g}, all tokens pooled "
             f"{figures['residual_mean_ratio_all']:.3g}. Mean-ablation max effect {mean_max:.4g}; Spearman vs zero "
             "(mean profiles): " + ", ".join(f"{m} {('n/a' if r is None else f'{r:.2f}')}" for m, r in rhos.items())
             + (f"; zero/mean total effect {destructive:.3g}" if destructive is not None else "") + ". "
             + _parts_text(parts)]
    return Finding("rigorous", figures, holds=parts, seeds=[seed], notes=notes)


def mean_ablation_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"the seed's mean ablation changed nothing (hook changed {seed.figures['mean_hook_changed_layers']} "
             f"layers), so its 'all-zero effects' follow from the no-op; real mean ablation gives up to "
             f"{rigorous.figures['mean_ablation_effect']:.4g} nats")


def abl_mean(lm, sizes: Sizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """ABL-MEAN: near-zero residual mean, all-zero mean-ablation effects, zero ablation valid (three parts, each
    decided; thresholds from ``params``). Checks that the seed's mean hook fired at every layer."""
    seed = seed_protocol_mean_ablation(lm, sizes, params)
    rigorous = rigorous_mean_ablation(lm, sizes, params)
    require(seed.figures["mean_hook_fired_layers"] == lm.n_layers, "the seed's mean hook must fire at every layer")
    mean_ablation_contrast(seed, rigorous)
    return seed, rigorous


def abl_mean_claim(ctx, load_model) -> tuple[Finding, Finding]:
    """The ABL-MEAN row's procedure (the seed's no-op mean hook is a quirk no template models)."""
    return abl_mean(load_model(ctx.model), sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model), ctx.params)


abl_mean_claim.dynamic = "the seed's mean hook, the residual mean ratios and every ablation method's NL sweep"
