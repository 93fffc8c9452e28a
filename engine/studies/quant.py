"""The quant block's claim study: sizes per tier and one set of loads serving QUANT-KL and QUANT-SPEED, and the
claims' procedures (:func:`quant_kl`, :func:`quant_speed`), each returning ``(seed, rigorous)`` findings
(:mod:`engine.studies.findings`).

Sizes per tier: ``[plans.default.<tier>.quant]`` in ``engine/data/plans.toml`` (:func:`quant_sizes_for`;
:data:`QUANT_SIZES` holds the default plan). The prompts are the steering claims' (``[plans.<plan>.<tier>.steer]``,
:func:`steer_sizes_for`: the same plan, without the quant claim's overrides). QUANT-KL and QUANT-SPEED share one
cached study per model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from engine import cache, plans
from engine import interventions as iv
from engine import models
from engine import quant as quant_engine
from engine import steering as st
from engine.quant import KL_PRECISIONS, SpeedReport, SpeedRow, time_precision
from engine.quant import quant_kl as measure_quant_kl
from engine.studies import steer
from engine.studies.findings import Finding, r4, require
from engine.studies.steer import SteerSizes, steer_data


@dataclass(frozen=True)
class QuantSizes:
    """Sizes of the quantisation claims on one tier (stated in every record's notes). Prompts: the first
    ``n_eval`` test prompts of the steering claims (``engine.studies.steer.steer_data``); the direction is their
    contrast's difference of means at the seed's layer (L2 of 24, at the same relative depth)."""

    n_eval: int = 4
    scale: float = -4.0
    units: str = "absolute"
    seed_layer: int = 2
    seed_n_layers: int = 24
    precisions: tuple[str, ...] = KL_PRECISIONS
    reference: str = "bf16"
    speed_batch: int = 4
    rounds: int = 3
    warmup: int = 1
    name: str = plans.DEFAULT_PLAN  # the plan these sizes come from (engine/data/plans.toml; set by the loader)

    def describe(self) -> str:
        return (f"{self.n_eval} prompts, s={self.scale} ({self.units}) at L{self.seed_layer}/{self.seed_n_layers} "
                f"relative depth, precisions {list(self.precisions)}; speed: batch {self.speed_batch}, "
                f"{self.warmup} warm-up + {self.rounds} rounds, logits at the last position, vs {self.reference}")


def quant_sizes_for(tier: str, params: Mapping[str, Any] | None = None) -> QuantSizes:
    """The tier's sizes (any tier but ``gpu`` reads the cpu plan) from ``engine/data/plans.toml``, with a claim's
    ``[claim.params]`` size overrides (:func:`engine.plans.override`)."""
    return plans.load("quant", QuantSizes, "gpu" if tier == "gpu" else "cpu", params)


sizes_for = quant_sizes_for  # every block's sizes read the same way


def steer_sizes_for(tier: str, params: Mapping[str, Any] | None = None) -> SteerSizes:
    """The steering sizes the quant claims draw their prompts from: the steer block of the plan ``params`` select,
    without the quant claim's own overrides (those are for :class:`QuantSizes`)."""
    return steer.sizes_for(tier, {"plan": plans.plan_name(params)})


QUANT_SIZES: dict[str, QuantSizes] = {tier: quant_sizes_for(tier) for tier in plans.TIERS}  # the default plan


def quant_study(key: str, sizes: QuantSizes, steer_sizes: SteerSizes, device=None,
                loader: Callable[[str, str], models.LoadedModel] | None = None) -> dict:
    """QUANT-KL and QUANT-SPEED on one set of loads: each precision is loaded once, its steering KL measured
    (both protocols), then its forward timed; one model in memory at a time. A JSON-able dict."""
    started = time.perf_counter()
    data = steer_data(steer_sizes)
    evals = data.test[:sizes.n_eval]
    n_layers = models.spec_for(key).n_layers
    layer = st.relative_layer(sizes.seed_layer, sizes.seed_n_layers, n_layers)
    speed_rows: dict[str, SpeedRow] = {}
    state: dict = {}

    def time_it(lm, name):
        if "batch" not in state:
            state["batch"] = iv.encode(lm, evals[:sizes.speed_batch], template=steer_sizes.template)
            state["device"] = str(lm.device)
        speed_rows[name] = time_precision(lm, name, state["batch"], sizes.rounds, sizes.warmup)

    report = measure_quant_kl(key, contrast=data.contrast, eval_examples=evals, layer=layer, scale=sizes.scale,
                      units=sizes.units, precisions=sizes.precisions, device=device, loader=loader,
                      template=steer_sizes.template, on_loaded=time_it)
    for name, row in report.rows.items():  # a precision that failed to load has no speed row either
        speed_rows.setdefault(name, SpeedRow(name, ok=False, error=row.error))
    batch = state.get("batch")
    speed = SpeedReport(key, state.get("device", str(device or models.default_device())),
                        len(batch) if batch is not None else 0, batch.seq_len if batch is not None else 0,
                        sizes.rounds, sizes.warmup, sizes.reference, speed_rows)
    return {"kl": report.to_dict(), "speed": speed.to_dict(), "sizes": sizes.describe(),
            "seconds": round(time.perf_counter() - started, 1)}


# --------------------------------------------------------------------------------------------- claim procedures
#
# ``sizes``: ``quant_sizes_for(claim.tier, claim.params)``; ``steer_sizes``: ``steer_sizes_for(claim.tier,
# claim.params)``; ``params``: the claim's ``[claim.params]`` (rule thresholds). Each returns (seed, rigorous).


def cached_quant_study(key: str, sizes: QuantSizes, steer_sizes: SteerSizes) -> dict:
    """The cached QUANT-KL / QUANT-SPEED study of ``key`` (:func:`quant_study`, stamped with its time)."""
    parts = {"kind": "quant-study", "model": key, "weights": quant_engine.weights_fingerprint(key),
             "sizes": plans.values(sizes), "steer_sizes": plans.values(steer_sizes),
             "device": str(models.default_device()),
             "versions": quant_engine.backend_versions()}
    return cache.cached(parts, lambda: {**quant_study(key, sizes, steer_sizes),
                                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def quant_kl_findings(study: dict, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """QUANT-KL from a study. Rigorous: NF4 (bf16 compute) / bf16 steering KL under one procedure, holds when the
    ratio's paired-bootstrap CI is above 1. Seed: the seed's mismatched ratio (NF4 fp16-compute procedure over a
    separate fp32 run), holds when > 1. A precision that could not run here leaves its protocol untested. Fails
    when the study ran at another scale than ``params["steering_scale"]`` (default -4.0)."""
    kl = study["kl"]
    rows = kl["precisions"]
    scale = float(params.get("steering_scale", -4.0))
    require(kl["scale"] == scale, f"the study ran at s={kl['scale']}, the catalogue says {scale}")
    common = {"layer": kl["layer"], "scale": kl["scale"], "vector_to_resid": r4(kl["vector_to_resid"]),
              "errors": {n: r["error"] for n, r in rows.items() if not r["ok"]}}

    def ok(name):
        return rows.get(name, {}).get("ok", False)

    if ok("nf4-bf16") and ok("bf16"):
        amp = kl["ratios"]["nf4-bf16/bf16"]["rigorous"]
        ci = kl["ratio_ci"].get("nf4-bf16/bf16", [amp, amp])
        rigorous = Finding(
            "rigorous",
            figures={"amplification": r4(amp), "kl_nf4": r4(rows["nf4-bf16"]["kl"]), "kl_bf16": r4(rows["bf16"]["kl"]),
                     "kl_by_precision": {n: r4(r["kl"]) for n, r in rows.items() if r["ok"]},
                     "noise_kl_vs_fp32": {n: r4(r["noise_kl"]) for n, r in rows.items() if r["ok"]},
                     "attribution": {k: r4(v) for k, v in kl["attribution"].items()}, **common},
            holds=bool(ci[0] > 1), ci={"amplification": ci},
            notes=[f"{study['sizes']}; amplification = mean KL(NF4 bf16-compute) / mean KL(bf16), same direction "
                   "(difference of means on fp32), layer, positions and prompts; KL(unsteered || steered) within "
                   "each precision (fp32 softmax); the rule holds only if the paired-bootstrap CI is above 1"],
        )
    else:
        rigorous = Finding.not_run("rigorous", f"NF4 (bf16 compute) or bf16 could not run here: {common['errors']}")
    if ok("nf4-fp16") and kl["seed_reference_kl"]:
        amp = kl["seed_amplification"]
        seed = Finding(
            "seed",
            figures={"amplification": r4(amp), "kl_nf4": r4(rows["nf4-fp16"]["seed_kl"]),
                     "kl_bf16": r4(kl["seed_reference_kl"]), "reference_layer": kl["seed_reference_layer"],
                     "seed_kl_by_precision": {n: r4(r["seed_kl"]) for n, r in rows.items() if r["ok"]}, **common},
            holds=bool(amp > 1),
            notes=["the seed's ratio as it was made: its steering procedure on NF4 (fp16 compute) divided by a "
                   "separate fp32 run (5-pair difference-of-means vector at a late layer, last position only); "
                   "'kl_bf16' is that fp32 reference, as in the seed"],
        )
    else:
        seed = Finding.not_run("seed", f"NF4 (fp16 compute) could not run here: {common['errors']}")
    return seed, rigorous


def quant_kl(key: str, sizes: QuantSizes, steer_sizes: SteerSizes,
             params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """QUANT-KL: NF4 amplifies steering KL (one procedure at every precision, so the report says which factor -
    quantisation, compute dtype, half precision - carries any amplification)."""
    return quant_kl_findings(cached_quant_study(key, sizes, steer_sizes), params)


def quant_speed_findings(study: dict, out_dir: str | Path) -> tuple[Finding, Finding]:
    """QUANT-SPEED from a study: NF4's slowdown vs bf16 is below int8's (rigorous: median latency after warm-up,
    NF4 with bf16 compute; seed: one cold forward, NF4 with fp16 compute). Writes the speed report (JSON + chart)
    to ``out_dir``. On CPU both protocols are untested (the claim is about GPU kernels); the ratios are in the
    reasons."""
    report = quant_engine.speed_report_from_dict(study["speed"])
    json_path, png_path = quant_engine.write_speed_report(report, out_dir)
    slow = {n: report.slowdown(n) for n in ("int8", "nf4-bf16", "nf4-fp16", "fp16", "fp32")}
    cold = {n: report.slowdown(n, protocol="seed") for n in slow}
    text = ", ".join(f"{n} {v:+.0%}" for n, v in slow.items() if np.isfinite(v))
    cold_text = ", ".join(f"{n} {v:+.0%}" for n, v in cold.items() if np.isfinite(v))
    if report.device == "cpu":
        return (Finding.not_run("seed", f"CPU run (claim is about GPU speed); single cold forward vs bf16: "
                                        f"{cold_text}; report {json_path}"),
                Finding.not_run("rigorous", f"CPU run (claim is about GPU speed); median latency vs bf16: {text}; "
                                            f"{report.rounds} rounds after {report.warmup} warm-up; report {json_path}",
                                skip_test=True))
    findings = {}
    for protocol, ratios in (("rigorous", slow), ("seed", cold)):
        nf4, int8 = ratios["nf4-bf16" if protocol == "rigorous" else "nf4-fp16"], ratios["int8"]
        findings[protocol] = Finding(
            protocol,
            figures={"nf4_slowdown": r4(nf4), "int8_slowdown": r4(int8),
                     "slowdowns": {k: r4(v) for k, v in ratios.items()}, "device": report.device},
            holds=bool(np.isfinite(nf4) and np.isfinite(int8) and nf4 < int8),
            notes=[f"{study['sizes']}; report {json_path}, chart {png_path}" if protocol == "rigorous" else
                   "one cold forward per precision (no warm-up, one round), NF4 with fp16 compute as the seed "
                   "loaded it"],
        )
    return findings["seed"], findings["rigorous"]


def quant_speed(key: str, sizes: QuantSizes, steer_sizes: SteerSizes, *,
                out_dir: str | Path) -> tuple[Finding, Finding]:
    """QUANT-SPEED: 8-bit is slower than NF4, relative to bf16 (measured side by side in one process)."""
    return quant_speed_findings(cached_quant_study(key, sizes, steer_sizes), out_dir)
