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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine import cache, models, plans
from engine import decisions as D
from engine import interventions as iv
from engine import quant as quant_engine
from engine import steering as st
from engine.planner import Need
from engine.quant import KL_PRECISIONS, SpeedReport, SpeedRow, time_precision
from engine.quant import quant_kl as measure_quant_kl
from engine.studies import steer
from engine.studies.findings import Finding, StudyError, r4, require
from engine.studies.steer import SteerSizes, steer_data


@plans.sizes_of("quant")
@dataclass(frozen=True)
class QuantSizes:
    """Sizes of the quantisation claims on one tier (stated in every record's notes). Prompts: the first
    ``n_eval`` test prompts of the steering claims (``engine.studies.steer.steer_data``); the direction is their
    contrast's difference of means at the seed's layer (L2 of 24, at the same relative depth)."""

    n_eval: int = 4
    scale: float = -4.0  # the seed protocol's s (absolute: norm |s|)
    units: str = "absolute"
    rigorous_scales: tuple[float, ...] = (-0.25, -0.5, -1.0)  # QUANT-KL rigorous: the candidate scales
    rigorous_units: str = "relative"
    seed_layer: int = 2
    seed_n_layers: int = 24
    precisions: tuple[str, ...] = KL_PRECISIONS
    reference: str = "bf16"
    speed_batch: int = 4
    rounds: int = 3
    warmup: int = 1
    half_matmul: str = "native"  # the KL forwards' half-precision matrix products (engine.quant.half_matmuls)
    name: str = plans.DEFAULT_PLAN  # the plan these sizes come from (engine/data/plans.toml; set by the loader)

    def __post_init__(self):
        if self.half_matmul not in quant_engine.HALF_MATMULS:
            raise plans.PlanError(f"plan {self.name!r}: quant half_matmul = {self.half_matmul!r}: expected one of "
                                  f"{', '.join(quant_engine.HALF_MATMULS)}")

    def describe(self) -> str:
        upcast = ("; half-precision matrix products as fp32 GEMMs on the half-precision operands, rounded to the "
                  "half dtype (the KL forwards only)" if self.half_matmul == "upcast" else "")
        return (f"{self.n_eval} prompts, seed s={self.scale} ({self.units}), rigorous s in "
                f"{list(self.rigorous_scales)} ({self.rigorous_units}) at L{self.seed_layer}/{self.seed_n_layers} "
                f"relative depth, precisions {list(self.precisions)}{upcast}; speed: batch {self.speed_batch}, "
                f"{self.warmup} warm-up + {self.rounds} rounds, logits at the last position, vs {self.reference}")


def quant_sizes_for(tier: str, params: Mapping[str, Any] | None = None, plan: str | None = None) -> QuantSizes:
    """The tier's sizes (any tier but ``gpu`` reads the cpu plan) from ``engine/data/plans.toml``, with a claim's
    ``[claim.params]`` size overrides (:func:`engine.plans.override`)."""
    return plans.load("quant", QuantSizes, "gpu" if tier == "gpu" else "cpu", params, plan=plan)


sizes_for = quant_sizes_for  # every block's sizes read the same way


def steer_sizes_for(tier: str, params: Mapping[str, Any] | None = None, plan: str | None = None) -> SteerSizes:
    """The steering sizes the quant claims draw their prompts from: the steer block of the plan ``params`` select,
    without the quant claim's own overrides (those are for :class:`QuantSizes`)."""
    return steer.sizes_for(tier, plan=plan or plans.plan_name(params))


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
                      template=steer_sizes.template, on_loaded=time_it, rigorous_scales=sizes.rigorous_scales,
                      rigorous_units=sizes.rigorous_units, half_matmul=sizes.half_matmul)
    for name, row in report.rows.items():  # a precision that failed to load has no speed row either
        speed_rows.setdefault(name, SpeedRow(name, ok=False, error=row.error))
    batch = state.get("batch")
    speed = SpeedReport(key, state.get("device", str(device or models.default_device())),
                        len(batch) if batch is not None else 0, batch.seq_len if batch is not None else 0,
                        sizes.rounds, sizes.warmup, sizes.reference, speed_rows)
    return {"kl": report.to_dict(), "speed": speed.to_dict(), "sizes": sizes.describe(),
            "groups": [ex.family for ex in evals],
            "seconds": round(time.perf_counter() - started, 1)}


# --------------------------------------------------------------------------------------------- claim procedures
#
# ``sizes``: ``quant_sizes_for(claim.tier, claim.params)``; ``steer_sizes``: ``steer_sizes_for(claim.tier,
# claim.params)``; ``params``: the claim's ``[claim.params]`` (rule thresholds). Each returns (seed, rigorous).


def cached_quant_study(key: str, sizes: QuantSizes, steer_sizes: SteerSizes) -> dict:
    """The cached QUANT-KL / QUANT-SPEED study of ``key`` (:func:`quant_study`, stamped with its time)."""
    parts = {"kind": "quant-study-v2", "model": key, "weights": quant_engine.weights_fingerprint(key),
             "sizes": plans.values(sizes), "steer_sizes": plans.values(steer_sizes),
             "device": str(models.default_device()),
             "versions": quant_engine.backend_versions()}
    from engine import executors

    remote = executors.remote(quant_json, key, parts["device"], parts["weights"], parts["versions"], sizes,
                              steer_sizes, label=f"quant-study {key}")
    return cache.cached(parts, lambda: {**quant_study(key, sizes, steer_sizes),
                                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, remote=remote)


def quant_json(key: str, device: str, weights: str, versions: dict, sizes: QuantSizes,
               steer_sizes: SteerSizes) -> dict:
    """The cached payload of :func:`cached_quant_study` computed in this process (a measurement executor's worker:
    on the driver's device, with its weights and backend versions checked to be the driver's)."""
    here = {"weights": quant_engine.weights_fingerprint(key), "versions": quant_engine.backend_versions()}
    if here != {"weights": weights, "versions": versions}:
        raise StudyError(f"{key}: this worker's weights / backends {here} are not the driver's "
                         f"{ {'weights': weights, 'versions': versions} }")
    return {**quant_study(key, sizes, steer_sizes, device=device), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


@dataclass(frozen=True)
class QuantStudySpec:
    """QUANT-KL's and QUANT-SPEED's one set of loads of one model (:func:`cached_quant_study`)."""

    model: str
    sizes: QuantSizes
    steer_sizes: SteerSizes

    @property
    def need(self) -> Need:
        return Need(self.model, "quant-study-v2", "the quant plan's prompts", self.sizes.n_eval)

    def measure(self, load_model=None) -> dict:
        return cached_quant_study(self.model, self.sizes, self.steer_sizes)


def quant_spec(model: str, tier: str, params: Mapping[str, Any], plan: str | None) -> QuantStudySpec:
    return QuantStudySpec(model, quant_sizes_for(tier, params, plan), steer_sizes_for(tier, params, plan))


def amplification_rule(num: Sequence[float], den: Sequence[float], groups: Sequence[str],
                       params: Mapping[str, Any], *, label: str = "log(KL NF4 / KL bf16)") -> D.Evidence:
    """QUANT-KL's ratio test on paired per-prompt KLs (the same prompts, vector and layer at both precisions).

    The CI of the ratio is that of the per-prompt log-ratio log(num_i / den_i) (:func:`engine.decisions.greater`,
    stratified by family): the log makes a ratio a paired difference, which the one "A > B" primitive decides, and
    its bootstrap is symmetric where the ratio of means is skewed by a few large KLs; exp of its CI is the CI of the
    (family-balanced) geometric mean ratio. for: ratio CI above 1 (CONFIRMED); against: upper bound below
    1 + ``params["delta"]`` (FAILED); else undecided. A prompt whose KL is zero at either precision cannot form a
    ratio: it is excluded and counted (``details["excluded_zero_kl"]``); none left is a failed precondition."""
    delta, why = steer.rule_params(params)
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    keep = (num > 0) & (den > 0)
    excluded = int((~keep).sum())
    kept_groups = [g for g, k in zip(groups, keep) if k]
    note = f"{excluded} of {len(keep)} prompt(s) with a zero KL excluded (no ratio)" if excluded else ""
    if not keep.any():
        ev = D.greater(np.zeros(len(keep)), list(groups), delta=float(np.log1p(delta)), label=label, rationale=why,
                       precondition="every prompt has a zero KL at one precision: no ratio can be formed")
    else:
        ev = D.greater(np.log(num[keep]) - np.log(den[keep]), kept_groups, delta=float(np.log1p(delta)),
                       label=label, rationale=why)
    return replace(ev, details={**ev.details, "excluded_zero_kl": excluded},
                   statement=f"{ev.statement}{'; ' + note if note else ''}")


def pick_scale(rows: Mapping[str, Mapping[str, Any]], multiple: float, reference: str = "bf16",
               ) -> tuple[str | None, dict[str, float]]:
    """The smallest |scale| at which ``reference``'s mean steering KL is >= ``multiple`` x its noise floor (mean
    KL(fp32 unsteered || reference unsteered)), or None; and each scale's effect / noise-floor ratio."""
    ref = rows[reference]
    noise = float(np.mean(ref["noise_kl_per_example"]))
    ratios = {}
    for key in sorted(ref["kl_by_scale"], key=lambda k: abs(float(k))):
        effect = float(np.mean(ref["kl_by_scale"][key]))
        ratios[key] = effect / noise if noise > 0 else float("inf")
    chosen = next((k for k, r in ratios.items() if r >= multiple), None)
    return chosen, ratios


def rigorous_kl_decision(kl: Mapping[str, Any], groups: Sequence[str], params: Mapping[str, Any],
                         num: str = "nf4-bf16", den: str = "bf16") -> tuple[D.Evidence, str, dict[str, float]]:
    """QUANT-KL rigorous: pick the scale (:func:`pick_scale`, ``params["noise_multiple"]``), then
    :func:`amplification_rule` on NF4 (bf16 compute) vs bf16 there; no scale above the noise floor: undecided
    ("no scale above the noise floor"), decided at no scale. Returns (evidence, scale key, effect/noise ratios)."""
    rows = kl["precisions"]
    multiple = float(params.get("noise_multiple", 10))
    chosen, ratios = pick_scale(rows, multiple, den)
    if not ratios:
        raise StudyError("QUANT-KL: the study measured no rigorous scale")
    key = chosen if chosen is not None else max(ratios, key=ratios.get)
    ev = amplification_rule(rows[num]["kl_by_scale"][key], rows[den]["kl_by_scale"][key], groups, params,
                            label=f"log(KL {num} / KL {den}) at s={key} ({kl['rigorous_units']})")
    if chosen is None:
        ev = steer.undecided(ev, f"no scale above the noise floor ({den}'s steering KL / its noise floor: "
                                 + ", ".join(f"s={k}: {v:.3g}x" for k, v in ratios.items())
                                 + f"; the rule needs >= {multiple:g}x)")
    return ev, key, ratios


def quant_kl_findings(study: dict, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """QUANT-KL from a study (catalogue v2). Rigorous: :func:`rigorous_kl_decision` (NF4 with bf16 compute vs
    bf16, one procedure, at a scale above bf16's noise floor). Seed: the seed's mismatched ratio (its procedure on
    NF4 fp16-compute over a separate fp32 run, the 476x) decided by the same :func:`amplification_rule`; the
    noise-floor part is not decided there (the seed has no bf16 run of its procedure). A precision that could not
    run here leaves its protocol untested. Fails when the seed protocol ran at another scale than
    ``params["steering_scale"]`` (default -4.0)."""
    kl = study["kl"]
    rows = kl["precisions"]
    groups = study["groups"]
    scale = float(params.get("steering_scale", -4.0))
    require(kl["scale"] == scale, f"the study ran at s={kl['scale']}, the catalogue says {scale}")
    errors = {n: r["error"] for n, r in rows.items() if not r["ok"]}
    provenance = ("the embedded models are dequantised 4-bit GGUFs (Q4 -> fp32): NF4 here re-quantises an already "
                  "4-bit model; 'requantisation_kl' = KL(fp32 || NF4), unsteered, is that Q4 -> NF4 error")

    def ok(name):
        return rows.get(name, {}).get("ok", False)

    if ok("nf4-bf16") and ok("bf16"):
        ev, key, ratios = rigorous_kl_decision(kl, groups, params)
        means = {n: float(np.mean(r["kl_by_scale"][key])) for n, r in rows.items() if r["ok"]}
        requant = D.interval(rows["nf4-bf16"]["noise_kl_per_example"], groups)
        rigorous = Finding(
            "rigorous",
            figures={"amplification": r4(means["nf4-bf16"] / means["bf16"]) if means["bf16"] > 0 else None,
                     "geometric_amplification": r4(float(np.exp(ev.estimate))),
                     "amplification_ci": None if ev.ci is None else [r4(float(np.exp(c))) for c in ev.ci],
                     "scale": float(key), "scale_units": kl["rigorous_units"], "layer": kl["layer"],
                     "effect_over_noise": {k: r4(v) for k, v in ratios.items()},
                     "noise_multiple": float(params.get("noise_multiple", 10)), "n_prompts": ev.n,
                     "delta": float(params["delta"]), "kl_nf4": r4(means["nf4-bf16"]), "kl_bf16": r4(means["bf16"]),
                     "kl_by_precision": {n: r4(v) for n, v in means.items()},
                     "noise_kl_vs_fp32": {n: r4(r["noise_kl"]) for n, r in rows.items() if r["ok"]},
                     "requantisation_kl": r4(float(requant.estimate)),
                     "requantisation_kl_ci": None if requant.low is None else [r4(float(requant.low)),
                                                                               r4(float(requant.high))],
                     "errors": errors},
            holds=ev, ci={} if ev.ci is None else {"log_amplification": ev.ci},
            notes=[(f"{study['sizes']}; same direction (difference of means on fp32), layer, positions and prompts at "
                   "every precision; KL(unsteered || steered) within each precision (fp32 softmax); scale = the "
                   f"smallest |s| where bf16's KL >= {params.get('noise_multiple', 10)}x its noise floor "
                   f"KL(fp32 || bf16); {ev.statement}; {provenance}")],
        )
    else:
        rigorous = Finding.not_run("rigorous", f"NF4 (bf16 compute) or bf16 was not measured or could not run here "
                                               f"(measured: {', '.join(rows)}; errors: {errors})")
    if ok("nf4-fp16") and kl.get("seed_reference_kl_per_example"):
        nf4 = rows["nf4-fp16"]["seed_kl_per_example"]
        ref = kl["seed_reference_kl_per_example"]
        sev = amplification_rule(nf4, ref, groups, params, label="log(seed KL NF4-fp16 / fp32 reference KL)")
        seed = Finding(
            "seed",
            figures={"amplification": r4(kl["seed_amplification"]),
                     "geometric_amplification": r4(float(np.exp(sev.estimate))),
                     "amplification_ci": None if sev.ci is None else [r4(float(np.exp(c))) for c in sev.ci],
                     "kl_nf4": r4(rows["nf4-fp16"]["seed_kl"]), "kl_bf16": r4(kl["seed_reference_kl"]),
                     "reference_layer": kl["seed_reference_layer"], "layer": kl["layer"], "scale": kl["scale"],
                     "n_prompts": sev.n, "delta": float(params["delta"]),
                     "seed_kl_by_precision": {n: r4(r["seed_kl"]) for n, r in rows.items() if r["ok"]},
                     "not_decided": ["the noise-floor precondition (the seed has no bf16 run of its procedure)"],
                     "errors": errors},
            holds=sev, ci={} if sev.ci is None else {"log_amplification": sev.ci},
            notes=[("the seed's ratio as it was made: its steering procedure (sign dropped, norm |s|) on NF4 (fp16 "
                   "compute) divided by a separate fp32 run (5-pair difference-of-means vector at a late layer, "
                   f"last position only), per prompt; 'kl_bf16' is that fp32 reference, as in the seed; "
                   f"{sev.statement}; {provenance}")],
        )
    else:
        why = (f"could not run here: {errors}" if "nf4-fp16" in rows else
               f"is not among this plan's precisions ({', '.join(rows)})")
        seed = Finding.not_run("seed", f"NF4 (fp16 compute), the seed's NF4, {why}")
    return seed, rigorous


def quant_kl(key: str, sizes: QuantSizes, steer_sizes: SteerSizes,
             params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """QUANT-KL: NF4 amplifies steering KL (one procedure at every precision, so the report says which factor -
    quantisation, compute dtype, half precision - carries any amplification)."""
    return quant_kl_findings(cached_quant_study(key, sizes, steer_sizes), params)


def speed_rule(report, nf4: str, protocol: str, params: Mapping[str, Any]) -> D.Evidence:
    """QUANT-SPEED on the gpu tier through the decision primitives (catalogue v3): 8-bit is slower than NF4 (both
    relative to bf16, which cancels). Per timed round, log(int8 latency) - log(NF4 latency), rounds paired by index
    (measured side by side in one process); :func:`engine.decisions.greater`: CI lower > 0: for; CI upper below
    log(1 + ``speed_delta``): against (a speed difference smaller than that is no reason to prefer NF4). The seed's
    protocol has one cold forward per precision: no CI over rounds (undecided, naming it)."""
    delta = float(params.get("speed_delta", 0.1))
    why = str(params.get("speed_delta_rationale", ""))
    rows = report.rows
    if protocol == "seed":
        a, b = [rows["int8"].cold_s or float("nan")], [rows[nf4].cold_s or float("nan")]
    else:
        n = min(len(rows["int8"].times_s), len(rows[nf4].times_s))
        a, b = rows["int8"].times_s[:n], rows[nf4].times_s[:n]
    if not (len(a) and np.isfinite(a).all() and np.isfinite(b).all() and min(a) > 0 and min(b) > 0):
        raise StudyError(f"QUANT-SPEED: no finite timings for int8 / {nf4}")
    diffs = np.log(np.asarray(a, float)) - np.log(np.asarray(b, float))
    return D.greater(diffs, ["rounds"] * len(diffs), delta=float(np.log1p(delta)), rationale=why,
                     label=f"log latency int8 - {nf4} per round")


def quant_speed_findings(study: dict, out_dir: str | Path,
                         params: Mapping[str, Any] | None = None) -> tuple[Finding, Finding]:
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
        nf4_name = "nf4-bf16" if protocol == "rigorous" else "nf4-fp16"
        nf4, int8 = ratios[nf4_name], ratios["int8"]
        findings[protocol] = Finding(
            protocol,
            figures={"nf4_slowdown": r4(nf4), "int8_slowdown": r4(int8),
                     "slowdowns": {k: r4(v) for k, v in ratios.items()}, "device": report.device},
            holds=speed_rule(report, nf4_name, protocol, params or {}),
            notes=[f"{study['sizes']}; report {json_path}, chart {png_path}" if protocol == "rigorous" else
                   "one cold forward per precision (no warm-up, one round), NF4 with fp16 compute as the seed "
                   "loaded it"],
        )
    return findings["seed"], findings["rigorous"]


def quant_speed(key: str, sizes: QuantSizes, steer_sizes: SteerSizes, *,
                out_dir: str | Path, params: Mapping[str, Any] | None = None) -> tuple[Finding, Finding]:
    """QUANT-SPEED: 8-bit is slower than NF4, relative to bf16 (measured side by side in one process)."""
    return quant_speed_findings(cached_quant_study(key, sizes, steer_sizes), out_dir, params)


def quant_speed_claim(ctx, load_model=None) -> tuple[Finding, Finding]:
    """The QUANT-SPEED row's procedure (a benchmark: timed rounds per precision, its report written beside the
    run's results)."""
    spec = quant_spec(ctx.model, ctx.tier, ctx.params, ctx.plan)
    return quant_speed_findings(spec.measure(), ctx.settings.output("bench"), ctx.params)


quant_speed_claim.specs = lambda ctx: {"study": quant_spec(ctx.model, ctx.tier, ctx.params, ctx.plan)}
