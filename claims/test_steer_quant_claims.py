"""Claims of the steer and quant blocks: steering at all layers, random-vector controls (C4), cross-scale
transfer (G1), NF4 amplification of steering KL, and the quantisation slowdown.

Each test measures its claim under both protocols (the seed-protocols document of the project brief) and records one verdict
per protocol:

* ``seed``: the seed's own steering (the prompt's own mean activation at the layer, norm ``|s|`` so the sign of
  ``s`` is lost, added at every position, abs(KL) with an fp16 softmax), and for QUANT-KL its mismatched ratio
  (that procedure on NF4 with fp16 compute, divided by a separate fp32 run at a late layer with a 5-pair
  difference-of-means vector added at the last position only);
* ``rigorous``: signed difference-of-means directions from a contrast set of the suite (one family vs the rest),
  scales relative to the residual norm, layer/scale chosen on select prompts and measured on held-out ones, bootstrap
  CIs; QUANT-KL runs one procedure on fp32, bf16, fp16, NF4 (bf16 compute), NF4 (fp16 compute) and int8.

The measurements live in ``engine.steering`` / ``engine.quant`` (``steer_study``, ``transfer_study``,
``quant_study``) and are cached by content (``engine.cache``): STEER-ALL and STEER-RANDOM share one study per
model, QUANT-KL and QUANT-SPEED one set of loads per model. Sizes per tier: ``steering.SIZES`` and
``engine.studies.quant.QUANT_SIZES`` (stated in each record's notes). Thresholds come from ``engine/data/claims.toml``.

Tolerances: the seed gives figures only for its gpu-tier models. QUANT-KL's 476x is compared within 50% (a ratio of
two KLs over a handful of prompts moves by that much between prompt samples); QUANT-SPEED's slowdowns within 10 and
15 percentage points (GPU timings of one run); the steer claims are decided by their rules alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from claims.plugin import claim_params
from engine import cache, models, quant
from engine import steering as st
from engine.studies import quant as quant_studies
from engine.studies import steer as steer_studies
from engine.verdicts import Recorder


def results_dir(request, *parts: str) -> Path:
    option = request.config.getoption("--claims-results")
    root = Path(option).expanduser().resolve() if option else request.config.rootpath / "results"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def steer_study(claim, load_model, key: str) -> dict:
    """The cached STEER-ALL / STEER-RANDOM study of ``key`` on this tier."""
    sizes = steer_studies.sizes_for(claim.tier)
    guess = claim.seed_figures.get("hub_guess_layer") if claim.tier == "gpu" else None
    parts = {"kind": "steer-study", "model": key, "weights": quant.weights_fingerprint(key), "sizes": asdict(sizes),
             "guess": guess}
    return cache.cached(parts, lambda: steer_studies.steer_study(load_model(key), sizes, guess_layer=guess))


def quant_study(claim, key: str) -> dict:
    sizes, steer_sizes = quant_studies.quant_sizes_for(claim.tier), steer_studies.sizes_for(claim.tier)
    parts = {"kind": "quant-study", "model": key, "weights": quant.weights_fingerprint(key), "sizes": asdict(sizes),
             "steer_sizes": asdict(steer_sizes), "device": str(models.default_device()),
             "versions": quant.backend_versions()}
    return cache.cached(parts, lambda: {**quant_studies.quant_study(key, sizes, steer_sizes),
                                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def r4(x):
    """4 significant digits; a ratio that could not be formed (a precision that failed here) is None."""
    return None if x is None or not np.isfinite(x) else float(f"{x:.4g}")


# ------------------------------------------------------------------------------------------------- STEER-ALL


@pytest.mark.parametrize("model", claim_params("STEER-ALL"))
def test_steering_is_tested_at_all_layers(claim, model, load_model, request):
    """Phase 1 missed L21/L26 at 1.5B by steering only at the hub L2: sweep every layer and compare the best layer
    with the hub-only guess (the layer at the seed's hub depth, L2 of 24)."""
    study = steer_study(claim, load_model, model)
    n_layers, guess = study["n_layers"], study["hub_guess_layer"]
    rig, seed = study["rigorous"], study["seed"]
    sweep = st.Sweep.from_dict(rig["sweep"])
    heatmaps = [str(sweep.heatmap(results_dir(request, "steer") / f"steer-{model}-{m}.png", m)) for m in ("effect", "kl")]
    complete = sweep.layers == list(range(n_layers)) and bool(np.isfinite(sweep.effect).all())
    same = rig["best_layer"] == guess or rig["gap_ci"][0] <= 0
    claim.record(
        protocol="rigorous",
        figures={"best_layer": rig["best_layer"], "best_scale": rig["best_scale"], "hub_guess_layer": guess,
                 "best_depth": r4(rig["best_layer"] / (n_layers - 1)), "best_effect": r4(rig["best_test_effect"]),
                 "guess_effect": r4(rig["guess_test_effect"]), "gap": r4(rig["gap"]),
                 "effect_by_layer": [r4(x) for x in sweep.layer_effects(rig["best_scale"])],
                 "all_layers_effect": r4(rig["all_layers_effect"]), "layers_swept": len(sweep.layers),
                 "targets": study["targets"]},
        holds=complete, ci={"gap": rig["gap_ci"]}, seeds=[steer_studies.sizes_for(claim.tier).seed],
        revised=complete and same,
        reason=(f"the best steering layer (L{rig['best_layer']}) is not separated from the hub-only guess "
                f"L{guess} on held-out prompts (gap CI {rig['gap_ci'][0]:.3g}..{rig['gap_ci'][1]:.3g}); the full "
                "sweep is shown" if same else ""),
        notes=(f"{study['sizes']}; best (layer, scale) chosen on the select prompts, gap = Δlog P(targets) at "
               f"the best layer minus at the guess layer on the test prompts; heatmaps: {', '.join(heatmaps)}"),
    )
    seed_complete = len(seed["kl_by_layer"]) == n_layers and bool(np.isfinite(seed["kl_by_layer"]).all())
    seed_same = seed["best_layer"] == guess
    claim.record(
        protocol="seed",
        figures={"best_layer": seed["best_layer"], "hub_guess_layer": guess, "best_kl": r4(seed["best_kl"]),
                 "guess_kl": r4(seed["guess_kl"]), "kl_by_layer": [r4(x) for x in seed["kl_by_layer"]]},
        holds=seed_complete, revised=seed_complete and seed_same,
        reason=f"the seed procedure's largest KL is at the hub-guess layer L{guess} itself" if seed_same else "",
        notes=(f"seed procedure (own mean activation, norm |s|={abs(seed['scale'])}, sign dropped, all positions, "
               "abs KL fp16) at every layer; 'best' = largest KL, which is not a target effect"),
    )


# ------------------------------------------------------------------------------------------------- STEER-RANDOM


@pytest.mark.parametrize("model", claim_params("STEER-RANDOM"))
def test_direction_beats_random_vectors_of_equal_norm(claim, model, load_model):
    """Block C4: the difference-of-means direction's target effect exceeds the 95th percentile of the effects of
    random vectors with the same norm, at the same layer and scale."""
    study = steer_study(claim, load_model, model)
    p = float(claim.params.get("random_percentile", 95))
    rig, seed = study["rigorous"], study["seed"]
    rand = np.asarray(rig["random_effects"])
    threshold = float(np.percentile(rand, p))
    effect = rig["best_test_effect"]
    claim.record(
        protocol="rigorous",
        figures={"direction_effect": r4(effect), f"random_p{p:g}": r4(threshold), "random_mean": r4(rand.mean()),
                 "random_max": r4(rand.max()), "rank": r4(float((rand < effect).mean())), "n_random": len(rand),
                 "layer": rig["best_layer"], "scale": rig["best_scale"], "vector_norm": r4(rig["vector_norm"]),
                 "vector_to_resid": r4(rig["vector_norm"] / rig["resid_norm"]), "targets": study["targets"]},
        holds=bool(effect > threshold), ci={"direction_effect": rig["direction_ci"]},
        seeds=[steer_studies.sizes_for(claim.tier).seed],
        notes=(f"{study['sizes']}; effect = mean Δlog P(target tokens) on held-out prompts of other families; "
               "layer and scale chosen on separate select prompts"),
    )
    srand = np.asarray(seed["random_kl"])
    sthreshold = float(np.percentile(srand, p))
    claim.record(
        protocol="seed",
        figures={"own_vector_kl": r4(seed["own_kl"]), f"random_p{p:g}_kl": r4(sthreshold),
                 "random_mean_kl": r4(srand.mean()), "n_random": len(srand), "layer": study["hub_guess_layer"],
                 "norm": abs(seed["scale"])},
        holds=bool(seed["own_kl"] > sthreshold), seeds=[steer_studies.sizes_for(claim.tier).seed],
        notes=("the seed never ran C4; this is its steering procedure (the prompt's own mean activation, norm |s|) "
               "against random vectors of norm |s| at its hub layer, metric abs KL (its only metric)"),
    )


# ------------------------------------------------------------------------------------------------- STEER-TRANSFER


@pytest.mark.parametrize("model", claim_params("STEER-TRANSFER"))
def test_steering_direction_transfers_across_scales(claim, model, load_model):
    """Block G1: a direction of the smaller model, mapped into the larger one (least squares on paired activations
    of the same prompts when the widths differ), still steers there; the models are loaded one at a time."""
    source, target = claim.models[0], claim.models[-1]
    sizes = steer_studies.sizes_for(claim.tier)
    src = steer_study(claim, load_model, source)["rigorous"]
    parts = {"kind": "steer-transfer", "source": source, "target": target, "sizes": asdict(sizes),
             "weights": [quant.weights_fingerprint(source), quant.weights_fingerprint(target)],
             "layer": src["best_layer"], "scale": src["best_scale"]}
    t = cache.cached(parts, lambda: steer_studies.transfer_study(source, target, sizes, src["best_layer"], src["best_scale"]))
    positive = t["mapped_ci"][0] > 0
    memory_ok = bool(t["source_released"])
    claim.record(
        protocol="rigorous",
        figures={"mapped_effect": r4(t["mapped_effect"]), "native_effect": r4(t["native_effect"]),
                 "random_p95": r4(t["random_threshold"]), "mapped_beats_random": t["mapped_beats_random"],
                 "cosine_to_native": r4(t["cosine_to_native"]), "method": t["method"], "fit_r2": r4(t["fit_r2"]),
                 "heldout_r2": r4(t["heldout_r2"]), "n_pairs": t["n_pairs"], "source_layer": t["source_layer"],
                 "target_layer": t["target_layer"], "widths": [t["width_source"], t["width_target"]],
                 "peak_rss_mb": t["peak_rss_mb"], "peak_rss_delta_mb": t["peak_rss_delta_mb"],
                 "source_mb": t["source_mb"], "target_mb": t["target_mb"], "both_models_mb": t["both_models_mb"],
                 "source_released_before_target_load": memory_ok, "peak_is_reset": t["peak_is_reset"]},
        holds=positive and memory_ok, ci={"mapped_effect": t["mapped_ci"], "native_effect": t["native_ci"]},
        seeds=[sizes.seed],
        notes=(f"{t['sizes']}; direction = the source's best layer/scale from its STEER-ALL sweep, mapped to the "
               "same relative depth; effect = Δlog P(the family's answer tokens) on held-out prompts of other "
               "families; the source model is freed (checked by weak reference) before the target is loaded; "
               "peak RSS is the process's (other models of the session included), the delta is over the transfer"),
    )
    Recorder.untested(claim, "the seed never ran block G1 (its two-model load ran out of memory), so there is no "
                             "seed procedure to reproduce", ["seed"])


# ------------------------------------------------------------------------------------------------- QUANT-KL


@pytest.mark.parametrize("model", claim_params("QUANT-KL"))
def test_nf4_amplifies_steering_kl(claim, model):
    """NF4 gives KL = 10.0 at s = -4.0 vs bf16 KL = 0.021 (476x). Rigorous: one procedure at every precision, so
    the report says which factor (quantisation, compute dtype, half precision) carries any amplification."""
    study = quant_study(claim, model)
    kl = study["kl"]
    rows = kl["precisions"]
    scale = float(claim.params.get("steering_scale", -4.0))
    assert kl["scale"] == scale, f"the study ran at s={kl['scale']}, the catalogue says {scale}"
    common = {"layer": kl["layer"], "scale": kl["scale"], "vector_to_resid": r4(kl["vector_to_resid"]),
              "errors": {n: r["error"] for n, r in rows.items() if not r["ok"]}}

    def ok(name):
        return rows.get(name, {}).get("ok", False)

    if ok("nf4-bf16") and ok("bf16"):
        amp = kl["ratios"]["nf4-bf16/bf16"]["rigorous"]
        ci = kl["ratio_ci"].get("nf4-bf16/bf16", [amp, amp])
        claim.record(
            protocol="rigorous",
            figures={"amplification": r4(amp), "kl_nf4": r4(rows["nf4-bf16"]["kl"]), "kl_bf16": r4(rows["bf16"]["kl"]),
                     "kl_by_precision": {n: r4(r["kl"]) for n, r in rows.items() if r["ok"]},
                     "noise_kl_vs_fp32": {n: r4(r["noise_kl"]) for n, r in rows.items() if r["ok"]},
                     "attribution": {k: r4(v) for k, v in kl["attribution"].items()}, **common},
            holds=bool(ci[0] > 1), ci={"amplification": ci},
            notes=(f"{study['sizes']}; amplification = mean KL(NF4 bf16-compute) / mean KL(bf16), same direction "
                   "(difference of means on fp32), layer, positions and prompts; KL(unsteered || steered) within "
                   "each precision (fp32 softmax); the rule holds only if the paired-bootstrap CI is above 1"),
        )
    else:
        Recorder.untested(claim, f"NF4 (bf16 compute) or bf16 could not run here: {common['errors']}", ["rigorous"])
    if ok("nf4-fp16") and kl["seed_reference_kl"]:
        amp = kl["seed_amplification"]
        claim.record(
            protocol="seed",
            figures={"amplification": r4(amp), "kl_nf4": r4(rows["nf4-fp16"]["seed_kl"]),
                     "kl_bf16": r4(kl["seed_reference_kl"]), "reference_layer": kl["seed_reference_layer"],
                     "seed_kl_by_precision": {n: r4(r["seed_kl"]) for n, r in rows.items() if r["ok"]}, **common},
            holds=bool(amp > 1),
            notes=("the seed's ratio as it was made: its steering procedure on NF4 (fp16 compute) divided by a "
                   "separate fp32 run (5-pair difference-of-means vector at a late layer, last position only); "
                   "'kl_bf16' is that fp32 reference, as in the seed"),
        )
    else:
        Recorder.untested(claim, f"NF4 (fp16 compute) could not run here: {common['errors']}", ["seed"])


# ------------------------------------------------------------------------------------------------- QUANT-SPEED


@pytest.mark.parametrize("model", claim_params("QUANT-SPEED"))
def test_nf4_is_faster_than_int8(claim, model, request):
    """8-bit is 52% slower and NF4 only 9% slower than bf16 (GPU). Measured side by side in one process; on CPU
    the ratios are reported and the verdict is UNTESTED (the claim is about GPU kernels)."""
    study = quant_study(claim, model)
    report = quant.speed_report_from_dict(study["speed"])
    json_path, png_path = quant.write_speed_report(report, results_dir(request, "bench"))
    slow = {n: report.slowdown(n) for n in ("int8", "nf4-bf16", "nf4-fp16", "fp16", "fp32")}
    cold = {n: report.slowdown(n, protocol="seed") for n in slow}
    text = ", ".join(f"{n} {v:+.0%}" for n, v in slow.items() if np.isfinite(v))
    cold_text = ", ".join(f"{n} {v:+.0%}" for n, v in cold.items() if np.isfinite(v))
    if report.device == "cpu":
        Recorder.untested(claim, f"CPU run (claim is about GPU speed); single cold forward vs bf16: {cold_text}; "
                                 f"report {json_path}", ["seed"])
        claim.untested(f"CPU run (claim is about GPU speed); median latency vs bf16: {text}; "
                       f"{report.rounds} rounds after {report.warmup} warm-up; report {json_path}", ["rigorous"])
    for protocol, ratios in (("rigorous", slow), ("seed", cold)):
        nf4, int8 = ratios["nf4-bf16" if protocol == "rigorous" else "nf4-fp16"], ratios["int8"]
        claim.record(
            protocol=protocol,
            figures={"nf4_slowdown": r4(nf4), "int8_slowdown": r4(int8), "slowdowns": {k: r4(v) for k, v in ratios.items()},
                     "device": report.device},
            holds=bool(np.isfinite(nf4) and np.isfinite(int8) and nf4 < int8),
            notes=(f"{study['sizes']}; report {json_path}, chart {png_path}" if protocol == "rigorous" else
                   "one cold forward per precision (no warm-up, one round), NF4 with fp16 compute as the seed loaded it"),
        )
