"""The quantisation benchmark report (issue #32 item 3): latency ratios with CIs through QUANT-SPEED's decision
primitive, the per-model-and-device chart and JSON (CPU and GPU apart), and the history chart of saved
pytest-benchmark runs. Constructed timings only: no model is loaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from engine import bench_report, quant
from engine import decisions as D
from engine.cli import app

ROUNDS = 20


def timings(median: float, spread: float = 0.02, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median * np.exp(rng.normal(0.0, spread, ROUNDS)))


def speed_report(device: str = "cpu") -> quant.SpeedReport:
    rows = {name: quant.SpeedRow(name, ok=True, times_s=timings(t, seed=i), tokens=188, footprint_mb=mb,
                                 peak_rss_mb=900.0 + mb)
            for i, (name, t, mb) in enumerate((("bf16", 0.50, 256.0), ("fp32", 0.40, 513.0), ("int8", 0.76, 155.0),
                                               ("nf4-bf16", 0.51, 105.0)))}
    rows["fp16"] = quant.SpeedRow("fp16", ok=False, error="load failed: planted")
    return quant.SpeedReport("toy-model", device, 4, 47, ROUNDS, 3, "bf16", rows)


def test_a_ratio_is_quant_speeds_primitive_on_paired_log_latencies():
    slow, ref = timings(0.75, seed=1), timings(0.5, seed=2)
    found = bench_report.ratio_ci(slow, ref, precision="int8", reference="bf16", delta=0.1, rationale="r")
    direct = D.greater(np.log(slow) - np.log(ref), ["rounds"] * ROUNDS, delta=math.log1p(0.1), rationale="r",
                       label="log latency int8 - bf16 per round")
    assert found.ratio == pytest.approx(math.exp(direct.estimate))
    assert (found.low, found.high) == pytest.approx((math.exp(direct.ci[0]), math.exp(direct.ci[1])))
    assert found.low < 1.5 < found.high and found.outcome == "for" and found.n == ROUNDS
    same = bench_report.ratio_ci(timings(0.5, 0.01, 3), timings(0.5, 0.01, 4), delta=0.1)
    assert same.outcome == "against" and same.high < 1.1  # decided within speed_delta: no slowdown worth naming
    with pytest.raises(ValueError, match="no finite positive paired timings"):
        bench_report.ratio_ci([0.1, float("nan")], [0.1, 0.2])


def test_speed_delta_is_the_claims_own_threshold():
    delta, rationale = bench_report.speed_delta()
    from engine.verdicts import load_catalogue

    assert delta == load_catalogue()["QUANT-SPEED"].params["speed_delta"] and rationale


def test_the_report_has_ratios_to_bf16_and_fp32_with_cis_tokens_and_memory_and_keeps_devices_apart(tmp_path):
    report = speed_report()
    json_path, png_path = bench_report.write_bench_report(report, tmp_path)
    assert json_path.name == "quant-bench-toy-model-cpu.json" and png_path.stat().st_size > 5000
    data = json.loads(json_path.read_text())
    assert set(data["ratios"]) == {"bf16", "fp32"}
    assert set(data["ratios"]["bf16"]) == {"bf16", "fp32", "int8", "nf4-bf16"}  # fp16 failed: no ratio, kept as a row
    assert data["rows"]["fp16"]["ok"] is False and "planted" in data["rows"]["fp16"]["error"]
    int8 = data["ratios"]["bf16"]["int8"]
    assert int8["ci"][0] < int8["ratio"] < int8["ci"][1] and int8["n_rounds"] == ROUNDS
    assert data["ratios"]["fp32"]["fp32"]["ratio"] == pytest.approx(1.0)
    tps = data["tokens_per_s"]["int8"]
    assert tps["p2.5"] <= tps["median"] <= tps["p97.5"]
    assert len(data["rows"]["int8"]["times_s"]) == ROUNDS and data["speed_delta"]["value"] > 0
    gpu_json, gpu_png = bench_report.write_bench_report(speed_report("cuda:0"), tmp_path)
    assert gpu_json.name == "quant-bench-toy-model-cuda.json" and gpu_png != png_path and png_path.is_file()


def saved_run(storage: Path, name: str, when: str, medians: dict[str, float], device: str = "cpu") -> None:
    benchmarks = [{"group": "quant-toy", "name": f"test_forward_latency[toy-{p}]",
                   "extra_info": {"model": "toy", "precision": p, "device": device},
                   "stats": {"median": m, "q1": m * 0.95, "q3": m * 1.05, "rounds": ROUNDS}}
                  for p, m in medians.items()]
    benchmarks.append({"group": "atlas", "extra_info": {}, "stats": {"median": 1.0}})  # not a quant benchmark
    path = storage / "Linux-CPython-3.11-64bit" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"datetime": when, "commit_info": {"id": "abc123"}, "benchmarks": benchmarks}))


def test_the_history_chart_reads_saved_pytest_benchmark_runs(tmp_path):
    storage = tmp_path / "history"
    saved_run(storage, "0001_a", "2026-12-01T10:00:00+00:00", {"bf16": 0.5, "int8": 0.8})
    saved_run(storage, "0002_b", "2026-12-02T10:00:00+00:00", {"bf16": 0.45, "int8": 0.7})
    saved_run(storage, "0003_c", "2026-12-03T10:00:00+00:00", {"bf16": 0.05}, device="cuda:0")
    (storage / "not-a-benchmark.json").write_text("[1, 2]")
    rows = bench_report.read_saved_benchmarks(storage)
    assert len(rows) == 5 and {r["device"] for r in rows} == {"cpu", "cuda"}
    out = bench_report.history_chart(storage, tmp_path / "quant-history.png")
    assert out is not None and out.stat().st_size > 5000
    assert bench_report.history_chart(tmp_path / "empty", tmp_path / "none.png") is None


def test_bench_history_command(tmp_path):
    storage = tmp_path / "history"
    saved_run(storage, "0001_a", "2026-12-01T10:00:00+00:00", {"bf16": 0.5})
    done = CliRunner().invoke(app, ["bench", "history", "--storage", str(storage), "--out", str(tmp_path / "h.png")])
    assert done.exit_code == 0 and (tmp_path / "h.png").is_file(), done.output
    empty = CliRunner().invoke(app, ["bench", "history", "--storage", str(tmp_path / "nothing"), "--out",
                                     str(tmp_path / "x.png")])
    assert empty.exit_code == 2 and "no saved quantisation benchmark" in empty.output
