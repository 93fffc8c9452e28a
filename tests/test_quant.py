"""Quantisation measurements on tiny random-weight models: one procedure across precisions, failures reported
(never dropped), ratios and their CIs, the speed report, its JSON/chart and the `mi-atlas bench quant` command.

bitsandbytes needs a checkpoint to quantise, so NF4/int8 rows of a tiny model are reported as load errors here;
the real NF4/int8 runs are the QUANT-KL / QUANT-SPEED claim rows' (claims/test_claims.py).
"""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch

from engine import models, quant
from engine import steering as st
from engine.tasks import Example

KEY = "tiny-llama"


def _examples(family, prompts, target):
    return [Example(f"{family}/{i}", family, "short", p, target, "exact") for i, p in enumerate(prompts)]


CONTRAST = st.Contrast("a-vs-b", tuple(_examples("a", ["The cat sat on", "A dog ran to", "My bird"], "a")),
                       tuple(_examples("b", ["1 + 2 =", "7 * 3 =", "9 - 4 ="], "9")))
EVAL = _examples("c", ["x = 3; y =", "def f(a):", "Once upon", "hello"], "z")


@pytest.fixture(scope="module")
def report():
    return quant.quant_kl(KEY, contrast=CONTRAST, eval_examples=EVAL, layer=1, scale=-4.0,
                          precisions=("fp32", "bf16", "fp16", "nf4-bf16"))


def test_load_precision_gives_the_requested_dtype():
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        lm = quant.load_precision(KEY, name)
        assert next(lm.model.parameters()).dtype == dtype and lm.dtype == dtype
    with pytest.raises(quant.QuantError, match="checkpoint"):
        quant.load_precision(KEY, "nf4-bf16")
    with pytest.raises(quant.QuantError, match="unknown precision"):
        quant.precision("int3")


def test_one_procedure_runs_on_every_precision(report):
    assert list(report.rows) == ["fp32", "bf16", "fp16", "nf4-bf16"]
    for name in ("fp32", "bf16", "fp16"):
        row = report.rows[name]
        assert row.ok and len(row.kl) == len(EVAL) and len(row.seed_kl) == len(EVAL)
        assert all(k > 0 for k in row.kl)  # the steering changed the output at every precision
    assert report.rows["fp32"].mean_noise_kl == pytest.approx(0.0, abs=1e-6)  # same model, same precision
    assert report.rows["bf16"].mean_noise_kl > 0  # half precision differs from fp32
    # a precision that cannot run is reported with its reason, never dropped
    failed = report.rows["nf4-bf16"]
    assert not failed.ok and "load failed" in failed.error
    assert report.vector_norm == pytest.approx(4.0, rel=1e-5)  # absolute units: norm |s|, signed direction


def test_ratios_and_their_intervals(report):
    r = report.ratio("bf16", "fp32")
    assert r == pytest.approx(report.rows["bf16"].mean_kl / report.rows["fp32"].mean_kl)
    assert math.isnan(report.ratio("nf4-bf16", "bf16"))  # a failed row gives no ratio
    assert math.isnan(report.seed_amplification)  # needs the NF4 fp16-compute row
    d = report.to_dict()
    json.dumps(d)  # JSON-able
    assert d["precisions"]["nf4-bf16"]["ok"] is False and d["vector_to_resid"] > 0
    assert "bf16_vs_fp32 (half precision alone)" in d["attribution"]


def test_seed_reference_runs_on_fp32_at_a_late_layer(report):
    assert report.seed_reference is not None and report.seed_reference.protocol == "seed-reference"
    assert report.seed_reference_layer == st.relative_layer(23, 24, models.spec_for(KEY).n_layers)
    assert len(report.seed_reference.kls) == len(EVAL)


def test_speed_report_side_by_side(tmp_path):
    rep = quant.measure_speed(KEY, ("fp32", "fp16", "int8"), reference="bf16", examples=EVAL, batch_size=2,
                              rounds=2, warmup=1)
    assert list(rep.rows) == ["bf16", "fp32", "fp16", "int8"]
    assert rep.rows["fp32"].ok and len(rep.rows["fp32"].times_s) == 2 and rep.rows["fp32"].cold_s > 0
    assert rep.rows["fp32"].tokens_per_s > 0
    assert not rep.rows["int8"].ok and "load failed" in rep.rows["int8"].error
    assert rep.slowdown("bf16") == 0.0
    assert rep.slowdown("fp32") == pytest.approx(rep.rows["fp32"].median_s / rep.rows["bf16"].median_s - 1)
    json_path, png_path = quant.write_speed_report(rep, tmp_path)
    assert json_path.name == f"quant-{KEY}.json" and png_path.stat().st_size > 1000
    data = json.loads(json_path.read_text())
    assert data["rows"]["int8"]["ok"] is False and data["rows"]["fp32"]["slowdown_vs_ref"] is not None
    again = quant.speed_report_from_dict(data)
    assert again.slowdown("fp32") == pytest.approx(rep.slowdown("fp32"))


def test_bench_quant_command(tmp_path):
    from typer.testing import CliRunner

    from engine.cli import app

    result = CliRunner().invoke(app, ["bench", "quant", "--model", KEY, "--precisions", "fp32,nf4-bf16",
                                      "--batch-size", "2", "--rounds", "1", "--warmup", "0", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "fp32" in result.output and "bf16" in result.output and "CPU run" in result.output
    data = json.loads((tmp_path / f"quant-{KEY}.json").read_text())
    assert set(data["rows"]) == {"bf16", "fp32", "nf4-bf16"}
    assert (tmp_path / f"quant-{KEY}.png").is_file()


def test_weights_fingerprint_is_the_loaded_models_identity():
    assert quant.weights_fingerprint(KEY) == models.load(KEY).fingerprint
    assert set(quant.backend_versions()) == {"torch", "transformers", "bitsandbytes"}


def test_rigorous_kl_is_kept_per_example_at_every_rigorous_scale():
    """The decision (engine.studies.quant, through engine.decisions) needs per-prompt KLs at each candidate scale
    and the per-prompt noise floor; the report has no bootstrap of its own."""
    rep = quant.quant_kl(KEY, contrast=CONTRAST, eval_examples=EVAL, layer=1, scale=-4.0, precisions=("fp32", "bf16"),
                         rigorous_scales=(-0.5, -1.0), rigorous_units="relative")
    assert not hasattr(rep, "ratio_ci")
    bf16 = rep.rows["bf16"]
    assert set(bf16.kl_by_scale) == {"-0.5", "-1"} and all(len(v) == len(EVAL) for v in bf16.kl_by_scale.values())
    assert np.mean(bf16.kl_by_scale["-1"]) > np.mean(bf16.kl_by_scale["-0.5"]) > 0  # a larger push moves more
    d = rep.to_dict()
    json.dumps(d)
    assert d["rigorous_scales"] == [-0.5, -1.0] and len(d["precisions"]["bf16"]["noise_kl_per_example"]) == len(EVAL)
    assert len(d["seed_reference_kl_per_example"]) == len(EVAL)


# ------------------------------------------------------------------------------------ half-precision GEMMs ("upcast")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_upcast_runs_each_half_product_as_an_fp32_gemm_rounded_to_the_half_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 64, generator=g).to(dtype), torch.randn(64, 5, generator=g).to(dtype)
    bias, x3 = torch.randn(5, generator=g).to(dtype), torch.randn(3, 7, 64, generator=g).to(dtype)
    native = (a @ b, torch.nn.functional.linear(a, b.T, bias), x3 @ b, torch.mv(a, b[:, 0]))
    with quant.half_matmuls("upcast") as mode:
        up = (a @ b, torch.nn.functional.linear(a, b.T, bias), x3 @ b, torch.mv(a, b[:, 0]))
        fp32 = a.float() @ b.float()  # fp32 products run as dispatched
    assert mode.calls == 4
    want = ((a.float() @ b.float()).to(dtype), (a.float() @ b.float() + bias.float()).to(dtype),
            (x3.float() @ b.float()).to(dtype), (a.float() @ b[:, 0].float()).to(dtype))
    for got, exact, kernel in zip(up, want, native):
        assert got.dtype == dtype
        torch.testing.assert_close(got, exact, rtol=0, atol=0)  # the same arithmetic, summed in fp32
        torch.testing.assert_close(got, kernel)  # torch's own kernel: equal up to the last half-precision bits
    torch.testing.assert_close(fp32, a.float() @ b.float(), rtol=0, atol=0)


def test_upcast_bmm_of_a_broadcast_matrix_is_one_gemm_with_the_same_result():
    """A linear on a non-contiguous 3-D input (an LM head after logits_to_keep) reaches the dispatcher as a bmm with
    the weight broadcast over the batch: upcast, the same rounded fp32 product, computed without copying the weight
    per batch row."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 16, generator=g).to(torch.bfloat16)[:, -1:, :]  # [3, 1, 16], not contiguous
    w = torch.randn(40, 16, generator=g).to(torch.bfloat16)
    bias = torch.randn(40, generator=g).to(torch.bfloat16)
    with quant.half_matmuls("upcast") as mode:
        up = torch.nn.functional.linear(x, w)
        up_bias = torch.nn.functional.linear(x, w, bias)
        broadcast = torch.bmm(x, w.T.unsqueeze(0).expand(3, 16, 40))
    assert mode.calls >= 3
    exact = (x.float() @ w.float().T).to(torch.bfloat16)
    torch.testing.assert_close(up, exact, rtol=0, atol=0)
    torch.testing.assert_close(broadcast, exact, rtol=0, atol=0)
    torch.testing.assert_close(up_bias, torch.nn.functional.linear(x, w, bias))  # torch's kernel, to the last bits
    expanded = w.T.unsqueeze(0).expand(3, 16, 40)
    assert quant._upcast(expanded).stride(0) == 0 and quant._upcast(expanded).dtype == torch.float32


def test_upcast_keeps_fp16_overflow_and_leaves_the_native_path_alone():
    big = torch.full((2, 4), 200.0, dtype=torch.float16)
    with quant.half_matmuls("upcast"):
        out = big @ big.T  # 4 x 40,000 = 160,000 > fp16's 65,504: inf, as the native kernel gives
    assert torch.isinf(out).all() and torch.isinf(big @ big.T).all()
    with quant.half_matmuls("native") as mode:
        assert mode is None
    with pytest.raises(quant.QuantError, match="half_matmul"):
        with quant.half_matmuls("fp8"):
            pass


def test_quant_kl_upcast_records_itself_and_agrees_with_the_native_kernels(monkeypatch):
    kwargs = dict(contrast=CONTRAST, eval_examples=EVAL, layer=1, scale=-4.0, precisions=("fp32", "bf16"),
                  protocols=("rigorous",))
    native = quant.quant_kl(KEY, **kwargs)
    modes = []
    real = quant.half_matmuls

    @contextlib.contextmanager
    def spy(how):
        with real(how) as mode:
            yield mode
        modes.append(mode)

    monkeypatch.setattr(quant, "half_matmuls", spy)
    up = quant.quant_kl(KEY, half_matmul="upcast", **kwargs)
    monkeypatch.undo()
    assert native.to_dict()["half_matmul"] == "native" and up.to_dict()["half_matmul"] == "upcast"
    # each precision's KL forwards (fp32 first: nothing to upcast), never the fp32 direction or reference
    assert [m.calls > 0 for m in modes] == [False, True]
    assert up.rows["fp32"].kl == native.rows["fp32"].kl  # fp32 runs as dispatched, bit for bit
    np.testing.assert_allclose(up.rows["bf16"].kl, native.rows["bf16"].kl, rtol=0.05)
    with pytest.raises(quant.QuantError, match="half_matmul"):
        quant.quant_kl(KEY, half_matmul="fast", **kwargs)


def _nf4_layer(bnb, lm, fused_cpu_kernel: bool):
    """A real NF4 layer of ``lm``. On a CPU with AVX512-bf16, bitsandbytes repacks an NF4 weight at its first
    inference forward for its fused bf16 kernel (``bitsandbytes::gemv_4bit``, any number of rows), instead of
    ``gemm_4bit``; ``fused_cpu_kernel=False`` keeps the ``gemm_4bit`` path on every CPU."""
    layer = next(m for m in lm.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    layer.support_avx512bf16_for_cpu = fused_cpu_kernel and bnb.functional.has_avx512bf16()
    return layer


def test_upcast_nf4_is_bitsandbytes_cpu_kernel_with_its_linear_upcast():
    """The NF4 product (one bitsandbytes op to the dispatcher) on a real NF4 layer of SmolLM2-135M: under "upcast"
    it equals the dequantised bf16 weight times the input as an fp32 GEMM rounded to bf16, bit for bit, and
    bitsandbytes' own kernel up to the last bf16 bits."""
    bnb = pytest.importorskip("bitsandbytes")
    lm = quant.load_precision("smollm2-135m", "nf4-bf16")
    layer = _nf4_layer(bnb, lm, fused_cpu_kernel=False)
    x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        native = layer(x)
        with quant.half_matmuls("upcast") as mode:
            up = layer(x)
        weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.bfloat16)
    assert mode.calls == 1 and up.dtype == torch.bfloat16
    exact = torch.nn.functional.linear(x.float(), weight.float(),
                                       None if layer.bias is None else layer.bias.float()).to(torch.bfloat16)
    torch.testing.assert_close(up, exact, rtol=0, atol=0)
    torch.testing.assert_close(up, native, rtol=0.02, atol=0.02)
    models.free(lm)


def test_upcast_leaves_bitsandbytes_fused_avx512_bf16_kernel_as_dispatched():
    """Where bitsandbytes runs NF4 through its fused AVX512-bf16 CPU kernel (native bf16 arithmetic, not the slow
    emulated GEMM the upcast replaces), "upcast" leaves that product alone: bit for bit the kernel's output."""
    bnb = pytest.importorskip("bitsandbytes")
    if not bnb.functional.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-bf16: bitsandbytes' fused NF4 kernel does not run here")
    lm = quant.load_precision("smollm2-135m", "nf4-bf16")
    layer = _nf4_layer(bnb, lm, fused_cpu_kernel=True)
    x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        native = layer(x)
        assert getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
        with quant.half_matmuls("upcast") as mode:
            up = layer(x)
    assert mode.calls == 0
    torch.testing.assert_close(up, native, rtol=0, atol=0)
    models.free(lm)
