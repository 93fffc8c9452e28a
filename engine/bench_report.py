"""The quantisation slowdown benchmark report: latency ratios with CIs, tokens/s and memory per model and device, and
a history chart across saved pytest-benchmark runs.

The ratios reuse QUANT-SPEED's decision primitive: a precision's latency relative to a reference (bf16, fp32) is
:func:`engine.decisions.greater` on the per-round log latency differences, rounds paired by index (measured side by
side in one process, as ``engine.studies.quant.speed_rule`` pairs int8 with NF4), with the claim's ``speed_delta``
(``engine/data/claims.toml``) as the smallest difference of interest; the ratio and its 95% CI are the exponentials of
the estimate and CI of that mean log difference, and the primitive's outcome says whether the precision is decided
slower (for), decided within ``speed_delta`` or faster (against) or not decided at this number of rounds.

Files (``write_bench_report``): ``quant-bench-<model>-<device>.json`` (every round's time, the ratios with CIs and
outcomes, tokens/s with the rounds' 2.5-97.5 percentile range, weights footprint, peak RSS / CUDA peak, the machine)
and ``.png`` (three panels: ratio to each reference with CI error bars on a log axis, tokens/s with its range, memory).
CPU and GPU figures never share a file or a chart: the device is in the name.

``history_chart`` reads pytest-benchmark's saved JSONs (``--benchmark-autosave --benchmark-storage DIR``; the same
files ``pytest-benchmark compare`` reads) and plots each (model, device, precision)'s median latency with its
interquartile range across the saved runs, one panel per model and device.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from engine import decisions as D

REFERENCES = ("bf16", "fp32")
DEFAULT_SPEED_DELTA = 0.1  # QUANT-SPEED's speed_delta when the catalogue cannot be read


def speed_delta() -> tuple[float, str]:
    """QUANT-SPEED's ``speed_delta`` and its rationale from the packaged catalogue (the claim's own threshold)."""
    try:
        from engine.verdicts import load_catalogue

        params = load_catalogue()["QUANT-SPEED"].params
        return float(params.get("speed_delta", DEFAULT_SPEED_DELTA)), str(params.get("speed_delta_rationale", ""))
    except Exception:  # noqa: BLE001 - a benchmark report without the catalogue still has its ratios
        return DEFAULT_SPEED_DELTA, "default (the catalogue could not be read)"


@dataclass(frozen=True)
class Ratio:
    """latency(precision) / latency(reference) from paired rounds, with its 95% CI and the primitive's outcome."""

    precision: str
    reference: str
    ratio: float
    low: float | None
    high: float | None
    n: int
    outcome: str
    method: str
    statement: str

    def to_dict(self) -> dict:
        return {"precision": self.precision, "reference": self.reference, "ratio": self.ratio, "ci": None
                if self.low is None else [self.low, self.high], "n_rounds": self.n, "outcome": self.outcome,
                "method": self.method, "statement": self.statement}


def ratio_ci(times: Iterable[float], reference_times: Iterable[float], *, precision: str = "x",
             reference: str = "ref", delta: float | None = None, rationale: str = "") -> Ratio:
    """The latency ratio of ``times`` to ``reference_times`` (rounds paired by index) through
    :func:`engine.decisions.greater` on log(time) - log(reference time), delta = log(1 + speed_delta)."""
    if delta is None:
        delta, rationale = speed_delta()
    a = np.asarray(list(times), dtype=float)
    b = np.asarray(list(reference_times), dtype=float)
    n = min(len(a), len(b))
    if n == 0 or not (np.isfinite(a[:n]).all() and np.isfinite(b[:n]).all() and a[:n].min() > 0 and b[:n].min() > 0):
        raise ValueError(f"ratio {precision} / {reference}: no finite positive paired timings")
    diffs = np.log(a[:n]) - np.log(b[:n])
    evidence = D.greater(diffs, ["rounds"] * n, delta=float(np.log1p(delta)), rationale=rationale,
                         label=f"log latency {precision} - {reference} per round")
    low, high = (None, None) if evidence.ci is None else (math.exp(evidence.ci[0]), math.exp(evidence.ci[1]))
    return Ratio(precision, reference, math.exp(float(evidence.estimate)), low, high, n, evidence.outcome.value,
                 str(evidence.params.get("method", "")), evidence.statement)


def ratios(report, references: Iterable[str] = REFERENCES) -> dict[str, dict[str, Ratio]]:
    """reference -> precision -> :class:`Ratio` for every measured precision of an ``engine.quant.SpeedReport``
    (a reference that was not measured is left out)."""
    delta, rationale = speed_delta()
    out: dict[str, dict[str, Ratio]] = {}
    for reference in references:
        ref = report.rows.get(reference)
        if not (ref and ref.ok and ref.times_s):
            continue
        out[reference] = {name: ratio_ci(row.times_s, ref.times_s, precision=name, reference=reference, delta=delta,
                                         rationale=rationale)
                          for name, row in report.rows.items() if row.ok and row.times_s}
    return out


def _device_kind(device: str) -> str:
    return str(device).split(":")[0] or "cpu"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(name)).name or str(name))


def tokens_per_s_range(row) -> tuple[float, float, float]:
    """Median tokens/s and the 2.5-97.5 percentile range over the rounds."""
    per_round = row.tokens / np.asarray(row.times_s, dtype=float)
    low, high = np.percentile(per_round, [2.5, 97.5])
    return float(row.tokens_per_s), float(low), float(high)


def bench_dict(report, found: Mapping[str, Mapping[str, Ratio]] | None = None) -> dict[str, Any]:
    """The report as JSON: the speed report's rows (every round) plus the ratios with CIs and tokens/s ranges."""
    found = ratios(report) if found is None else found
    delta, rationale = speed_delta()
    data = report.to_dict()
    data["device_kind"] = _device_kind(report.device)
    data["speed_delta"] = {"value": delta, "rationale": rationale, "source": "engine/data/claims.toml QUANT-SPEED"}
    data["ratios"] = {ref: {name: r.to_dict() for name, r in rows.items()} for ref, rows in found.items()}
    data["tokens_per_s"] = {}
    for name, row in report.rows.items():
        if row.ok and row.times_s:
            median, low, high = tokens_per_s_range(row)
            data["tokens_per_s"][name] = {"median": median, "p2.5": low, "p97.5": high}
    return data


def write_bench_report(report, out: str | Path) -> tuple[Path, Path]:
    """Write ``quant-bench-<model>-<device>.json`` and ``.png`` into ``out``; returns both paths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    found = ratios(report)
    data = bench_dict(report, found)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"quant-bench-{_safe(report.model)}-{data['device_kind']}"
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")

    measured = [n for n, r in report.rows.items() if r.ok and r.times_s]
    failed = {n: r.error for n, r in report.rows.items() if not r.ok}
    fig, (ax_ratio, ax_tps, ax_mem) = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained",
                                                   gridspec_kw={"width_ratios": [3, 2, 2]})
    palette = {"bf16": "#0969da", "fp32": "#bc4c00"}
    width = 0.8 / max(len(found), 1)
    x = np.arange(len(measured))
    for i, (reference, rows) in enumerate(found.items()):
        values = np.array([rows[n].ratio for n in measured])
        lows = np.array([rows[n].low if rows[n].low is not None else rows[n].ratio for n in measured])
        highs = np.array([rows[n].high if rows[n].high is not None else rows[n].ratio for n in measured])
        xs = x + (i - (len(found) - 1) / 2) * width
        ax_ratio.bar(xs, values, width=width, color=palette.get(reference, "#57606a"), alpha=0.85,
                     label=f"vs {reference}")
        ax_ratio.errorbar(xs, values, yerr=[values - lows, highs - values], fmt="none", ecolor="#24292f",
                          capsize=3, linewidth=1)
    delta, _ = speed_delta()
    ax_ratio.axhline(1.0, color="#24292f", linewidth=0.8)
    ax_ratio.axhline(1.0 + delta, color="#57606a", linewidth=0.8, linestyle="--")
    ax_ratio.set_yscale("log")
    ax_ratio.set_xticks(x, measured, rotation=20, fontsize=8)
    ax_ratio.set_ylabel("latency ratio (log scale)")
    ax_ratio.set_title(f"latency / reference, 95% CI over {report.rounds} paired rounds (decisions.greater);\n"
                       f"dashed: 1 + speed_delta ({delta:g})", fontsize=8)
    ax_ratio.legend(fontsize=7)
    tps = [tokens_per_s_range(report.rows[n]) for n in measured]
    medians = np.array([t[0] for t in tps])
    ax_tps.bar(x, medians, color="#1f883d", alpha=0.85)
    ax_tps.errorbar(x, medians, yerr=[medians - np.array([t[1] for t in tps]), np.array([t[2] for t in tps]) - medians],
                    fmt="none", ecolor="#24292f", capsize=3, linewidth=1)
    ax_tps.set_xticks(x, measured, rotation=20, fontsize=8)
    ax_tps.set_ylabel("tokens / s")
    ax_tps.set_title("median, 2.5-97.5 percentile of the rounds", fontsize=8)
    footprint = [report.rows[n].footprint_mb for n in measured]
    peaks = [(report.rows[n].cuda_peak_mb if report.rows[n].cuda_peak_mb is not None else report.rows[n].peak_rss_mb)
             for n in measured]
    ax_mem.bar(x - 0.2, footprint, width=0.4, color="#8250df", label="weights")
    if any(p is not None for p in peaks):
        peak_name = "CUDA peak" if any(report.rows[n].cuda_peak_mb is not None for n in measured) else "peak RSS"
        ax_mem.bar(x + 0.2, [p if p is not None else 0 for p in peaks], width=0.4, color="#8c959f", label=peak_name)
    ax_mem.set_xticks(x, measured, rotation=20, fontsize=8)
    ax_mem.set_ylabel("MB")
    ax_mem.set_title("memory", fontsize=8)
    ax_mem.legend(fontsize=7)
    for ax in (ax_ratio, ax_tps, ax_mem):
        ax.tick_params(labelsize=7)
    failed_text = ("; not measured: " + ", ".join(f"{n} ({e[:40]})" for n, e in failed.items())) if failed else ""
    fig.suptitle(f"{report.model} on {report.device} ({report.machine}, {report.threads} threads): batch "
                 f"{report.batch_size} x {report.seq_len} tokens, {report.warmup} warm-up + {report.rounds} rounds"
                 f"{failed_text}", fontsize=9)
    png_path = out / f"{stem}.png"
    fig.savefig(png_path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return json_path, png_path


# ------------------------------------------------------------------------------------------------ history


def read_saved_benchmarks(storage: str | Path) -> list[dict]:
    """One entry per (saved run, quantisation benchmark) from pytest-benchmark's JSON files under ``storage``
    (searched recursively): datetime, commit, model, precision, device and the latency stats (seconds)."""
    rows = []
    for path in sorted(Path(storage).rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            continue
        commit = str((data.get("commit_info") or {}).get("id") or "")[:12]
        for bench in data["benchmarks"]:
            info = bench.get("extra_info") or {}
            stats = bench.get("stats") or {}
            if not str(bench.get("group") or "").startswith("quant-") or "precision" not in info:
                continue
            rows.append({"file": str(path), "datetime": str(data.get("datetime", "")), "commit": commit,
                         "model": str(info.get("model")), "precision": str(info["precision"]),
                         "device": _device_kind(str(info.get("device", "cpu"))), "median": stats.get("median"),
                         "q1": stats.get("q1"), "q3": stats.get("q3"), "rounds": stats.get("rounds")})
    return [r for r in rows if isinstance(r["median"], (int, float))]


def history_chart(storage: str | Path, out: str | Path) -> Path | None:
    """Median forward latency per precision across the saved runs (interquartile range as error bars), one panel
    per model and device; None when ``storage`` holds no quantisation benchmark."""
    rows = read_saved_benchmarks(storage)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = sorted({(r["model"], r["device"]) for r in rows})
    runs = sorted({(r["datetime"], r["file"]) for r in rows})
    index = {run: i for i, run in enumerate(runs)}
    labels = [f"{dt[:16].replace('T', ' ')}" for dt, _ in runs]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.8 * len(panels)), layout="constrained", squeeze=False)
    palette = plt.get_cmap("tab10")
    for ax, (model, device) in zip(axes[:, 0], panels):
        mine = [r for r in rows if (r["model"], r["device"]) == (model, device)]
        for i, precision in enumerate(sorted({r["precision"] for r in mine})):
            points = sorted((index[(r["datetime"], r["file"])], r) for r in mine if r["precision"] == precision)
            xs = [p[0] for p in points]
            med = np.array([p[1]["median"] for p in points]) * 1e3
            q1 = np.array([p[1]["q1"] if p[1]["q1"] is not None else p[1]["median"] for p in points]) * 1e3
            q3 = np.array([p[1]["q3"] if p[1]["q3"] is not None else p[1]["median"] for p in points]) * 1e3
            ax.errorbar(xs, med, yerr=[med - q1, q3 - med], marker="o", markersize=4, capsize=3, linewidth=1.2,
                        color=palette(i % 10), label=precision)
        ax.set_yscale("log")
        ax.set_ylabel("median forward (ms)")
        ax.set_title(f"{model} on {device}: median latency per saved run (error bars: interquartile range)",
                     fontsize=9)
        ax.set_xticks(range(len(runs)), labels, rotation=20, fontsize=7)
        ax.legend(fontsize=7, ncol=3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return out


__all__ = ["REFERENCES", "Ratio", "ratio_ci", "ratios", "speed_delta", "bench_dict", "write_bench_report",
           "read_saved_benchmarks", "history_chart", "tokens_per_s_range"]
