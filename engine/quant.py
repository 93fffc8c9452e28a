"""Quantisation: the same steering measured across precisions (QUANT-KL), and forward speed (QUANT-SPEED).

Precisions (:data:`PRECISIONS`), each one model load (``engine.models.load``):

=============  =========================================================================
``fp32``       unquantised, float32
``bf16``       unquantised, bfloat16 (the seed's reference)
``fp16``       unquantised, float16
``nf4-bf16``   bitsandbytes NF4, double quantisation, bf16 compute dtype
``nf4-fp16``   bitsandbytes NF4, double quantisation, fp16 compute dtype (the seed's NF4)
``int8``       bitsandbytes LLM.int8 (fp16 for the unquantised parts; its matmuls run in fp16)
=============  =========================================================================

QUANT-KL runs *one* procedure on every precision, so the report can say what causes an amplification:

* rigorous: one difference-of-means direction (computed once, on the fp32 model, at the steering layer),
  added with the same signed scale at every real prompt token of every precision; per example
  ``KL(unsteered_P || steered_P)`` at the answer position (fp32 softmax), where both runs use precision P.
  The quantisation noise floor ``KL(fp32 unsteered || P unsteered)`` is reported next to it (for NF4 it is the
  Q4 (GGUF) -> NF4 requantisation error: the embedded models are dequantised 4-bit GGUFs). The same is measured
  at each of ``rigorous_scales`` (per example, ``PrecisionKL.kl_by_scale``), so a decision can pick a scale where
  the steering effect stands above the noise floor. Ratios here are ratios of mean KLs (descriptive); the
  claim's decision and its CI are ``engine.studies.quant``'s, through ``engine.decisions``.
* seed: :func:`engine.steering.seed_protocol_steer` on every precision (the prompt's own mean activation,
  norm ``|s|``, sign dropped, all positions, fp16-softmax abs(KL)), and the seed's headline ratio rebuilt as
  it was made: seed procedure on NF4 with fp16 compute divided by :func:`engine.steering.seed_reference_steer`
  on fp32 (5 pairs, late layer, last position only).

A precision that cannot run on this machine is reported with the error, never dropped silently.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine import interventions as iv
from engine import memory, models
from engine import steering as st
from engine.provenance import package_versions


class QuantError(RuntimeError):
    """A quantisation measurement cannot be made as asked."""


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: torch.dtype
    quant: str | None
    description: str


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", torch.float32, None, "unquantised float32"),
    "bf16": Precision("bf16", torch.bfloat16, None, "unquantised bfloat16"),
    "fp16": Precision("fp16", torch.float16, None, "unquantised float16"),
    "nf4-bf16": Precision("nf4-bf16", torch.bfloat16, "nf4", "bitsandbytes NF4 (double quant), bf16 compute"),
    "nf4-fp16": Precision("nf4-fp16", torch.float16, "nf4-fp16", "bitsandbytes NF4 (double quant), fp16 compute (seed)"),
    "int8": Precision("int8", torch.float16, "int8", "bitsandbytes LLM.int8, fp16 elsewhere"),
}
KL_PRECISIONS = ("fp32", "bf16", "fp16", "nf4-bf16", "nf4-fp16", "int8")
SPEED_PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4-bf16", "nf4-fp16")
# The failures a precision can meet on some hardware (an unsupported kernel or dtype); anything else propagates.
_RUNTIME_FAILURES = (RuntimeError, NotImplementedError, ImportError, models.ModelError)


def precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise QuantError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}") from None


def load_precision(key: str, name: str, device=None) -> models.LoadedModel:
    """Load ``key`` at precision ``name`` (see :data:`PRECISIONS`)."""
    p = precision(name)
    spec = models.spec_for(key)
    if models.source_for(spec).in_memory:
        # Random-weight test models are built in memory: cast them; bitsandbytes needs real checkpoints.
        if p.quant:
            raise QuantError(f"{key!r} is a random-weight test model; {name} needs a checkpoint to quantise")
        lm = models.load(key, device=device)
        lm.model.to(p.dtype)
        lm.dtype = p.dtype
        return lm
    with warnings.catch_warnings():
        # bitsandbytes warns once per matmul that int8 inputs are cast to fp16; the table above states it.
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        lm = models.load(key, dtype=p.dtype, device=device, quant=p.quant)
    if p.quant is None and next(lm.model.parameters()).dtype != p.dtype:
        raise QuantError(f"{key!r} loaded as {next(lm.model.parameters()).dtype}, asked for {name}")
    return lm


def _finite(x: float) -> float | None:
    """JSON has no NaN: a ratio that cannot be formed (a precision that failed) is None."""
    return float(x) if x is not None and np.isfinite(x) else None


def weights_fingerprint(key: str) -> str:
    """The identity of ``key``'s weights without loading them (:func:`engine.models.identity_of`: a hash of every
    file that defines the model); part of every cached study's key."""
    return models.identity_of(key)


def backend_versions() -> dict[str, str]:
    """torch / transformers / bitsandbytes versions (part of the quant study's cache key: kernels change);
    "absent" for one that is not installed."""
    return package_versions(("torch", "transformers", "bitsandbytes"), missing="absent")


# --------------------------------------------------------------------------------------------- half-precision GEMMs
#
# A bf16 / fp16 matrix product means: half-precision operands, products summed in fp32, the result rounded to the
# half dtype (torch's CPU kernels accumulate in fp32 too, ``at::opmath_type``; so do GPU tensor cores). A CPU
# without native bf16 / fp16 GEMM instructions (no AVX-512 BF16 / FP16, e.g. an AVX2 host) runs torch's generic
# kernel: 6.4x the fp32 GEMM's time on Gemma-3-270M's bf16 forward on an AMD EPYC with AVX2 (16.1 s vs 2.5 s of
# aten::mm, 11 prompts, one thread, 2026-12-07), 96-97% of a bf16 or NF4 forward. "upcast" runs the same products
# as fp32 GEMMs on the half-precision operands (exact: a product of two bf16 / fp16 values fits fp32's mantissa)
# and rounds the result to the half dtype: the same arithmetic, another summation order (so last-bit differences,
# as between any two GEMM kernels). Everything else (norms, attention, activations) stays in the half dtype.

HALF_MATMULS = ("native", "upcast")
_HALF = (torch.bfloat16, torch.float16)
_GEMMS = frozenset({torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
                    torch.ops.aten.baddbmm.default, torch.ops.aten.mv.default, torch.ops.aten.addmv.default})


class UpcastHalfGemms(TorchDispatchMode):
    """Runs every half-precision CPU matrix product (mm, addmm, bmm, baddbmm, mv, addmv) as an fp32 one on the
    same operands, the result rounded to the operands' dtype; every other op, and any product on another device
    or dtype, runs as dispatched. bitsandbytes' NF4 product (``gemm_4bit``) is upcast the same way
    (:func:`_nf4_linear_upcast`); on a CPU with AVX512-bf16, bitsandbytes runs NF4 through its fused bf16 kernel
    (``gemv_4bit``, native bf16 arithmetic) instead, which runs as dispatched. ``calls`` counts the products it
    upcast."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "bitsandbytes" and func.__name__.startswith("gemm_4bit"):
            self.calls += 1
            return _nf4_linear_upcast(*args, **kwargs)
        if func in _GEMMS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            dtype = tensors[-1].dtype if tensors else None
            if dtype in _HALF and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors):
                self.calls += 1
                if func is torch.ops.aten.bmm.default and args[1].stride(0) == 0 and not kwargs:
                    # one matrix broadcast over the batch (a linear on a non-contiguous 3-D input, e.g. an LM head
                    # after logits_to_keep): one GEMM, never the broadcast weight copied per batch row
                    a, b = args
                    out = torch.mm(a.reshape(-1, a.shape[-1]).float(), b[0].float()).to(dtype)
                    return out.reshape(a.shape[0], a.shape[1], b.shape[-1])
                return func(*[_upcast(a) for a in args], **kwargs).to(dtype)
        return func(*args, **kwargs)


def _upcast(t):
    """``t`` as fp32 (a half-precision tensor; anything else as it is), a broadcast (stride-0) dimension kept
    broadcast rather than copied."""
    if not isinstance(t, torch.Tensor) or t.dtype not in _HALF:
        return t
    broadcast = [d for d, (size, stride) in enumerate(zip(t.shape, t.stride())) if stride == 0 and size > 1]
    if not broadcast:
        return t.float()
    base = t
    for d in broadcast:
        base = base.narrow(d, 0, 1)
    return base.float().expand(t.shape)


def _nf4_linear_upcast(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None,
                       absmax_offset=None):
    """bitsandbytes' NF4 product as its CPU kernel computes it (``bitsandbytes::gemm_4bit``'s default kernel,
    ``bitsandbytes/backends/default/ops.py``: the weight dequantised to the input's dtype, then a linear), with
    that linear run as an fp32 GEMM on the half-precision operands and rounded to their dtype. One op to the
    dispatcher, so :class:`UpcastHalfGemms` cannot reach the linear inside it; tests/test_quant.py checks this
    against bitsandbytes' own op on a real NF4 layer."""
    if absmax_8bit is not None:  # nested (double) quantisation: per-block scales from their 8-bit codes
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(absmax_8bit, absmax, absmax_code, 256,
                                                                      torch.float32) + absmax_offset
    weight = torch.ops.bitsandbytes.dequantize_4bit.default(B, absmax, blocksize, quant_type, shapeB, A.dtype)
    out = torch.nn.functional.linear(A.float(), weight.float(), None if bias is None else bias.float())
    return out.to(A.dtype)


@contextmanager
def half_matmuls(how: str = "native") -> Iterator[UpcastHalfGemms | None]:
    """``"native"``: torch's own kernels; ``"upcast"``: :class:`UpcastHalfGemms` for the block (a plan's
    ``half_matmul``, ``[plans.<plan>.<tier>.quant]``)."""
    if how not in HALF_MATMULS:
        raise QuantError(f"half_matmul must be one of {', '.join(HALF_MATMULS)}, got {how!r}")
    if how == "native":
        yield None
        return
    with UpcastHalfGemms() as mode:
        yield mode


# --------------------------------------------------------------------------------------------- QUANT-KL


@dataclass
class PrecisionKL:
    """One precision's results under both protocols (or the reason it could not run)."""

    precision: str
    ok: bool
    error: str = ""
    kl: list[float] = field(default_factory=list)  # rigorous, per example, at (scale, units)
    kl_by_scale: dict[str, list[float]] = field(default_factory=dict)  # rigorous at each rigorous scale ("%g")
    noise_kl: list[float] = field(default_factory=list)  # KL(fp32 unsteered || this precision unsteered)
    seed_kl: list[float] = field(default_factory=list)  # seed protocol, per example
    load_s: float = 0.0
    run_s: float = 0.0
    footprint_mb: float = 0.0

    @property
    def mean_kl(self) -> float:
        return float(np.mean(self.kl)) if self.kl else float("nan")

    @property
    def mean_seed_kl(self) -> float:
        return float(np.mean(self.seed_kl)) if self.seed_kl else float("nan")

    @property
    def mean_noise_kl(self) -> float:
        return float(np.mean(self.noise_kl)) if self.noise_kl else float("nan")


@dataclass
class QuantKLReport:
    model: str
    layer: int
    scale: float
    units: str
    vector_norm: float
    resid_norm: float  # mean residual norm after the layer at the answer position (fp32)
    contrast: str
    n_examples: int
    rows: dict[str, PrecisionKL]
    seed_reference: st.SeedSteerResult | None = None
    seed_reference_layer: int | None = None
    device: str = "cpu"
    rigorous_scales: tuple[float, ...] = ()
    rigorous_units: str = "relative"
    half_matmul: str = "native"  # how the half-precision forwards ran their matrix products (:func:`half_matmuls`)

    def ratio(self, num: str, den: str, protocol: str = "rigorous") -> float:
        a, b = self.rows.get(num), self.rows.get(den)
        if not (a and b and a.ok and b.ok):
            return float("nan")
        x, y = (a.kl, b.kl) if protocol == "rigorous" else (a.seed_kl, b.seed_kl)
        return float(np.mean(x) / np.mean(y)) if np.mean(y) > 0 else float("inf")

    @property
    def seed_amplification(self) -> float:
        """The seed's headline ratio rebuilt as it was made: seed procedure on NF4 (fp16 compute) divided by the
        fp32 reference procedure (another layer, vector and positions)."""
        row = self.rows.get("nf4-fp16")
        if not (row and row.ok and self.seed_reference):
            return float("nan")
        return row.mean_seed_kl / self.seed_reference.mean_kl

    def attribution(self) -> dict[str, float]:
        """Ratios of mean KL that isolate one factor each (rigorous protocol: one procedure everywhere), plus the
        seed's own procedure across precisions and the seed's mismatched headline ratio."""
        pairs = {
            "nf4_vs_bf16 (quantisation, bf16 compute)": ("nf4-bf16", "bf16", "rigorous"),
            "nf4_vs_fp16 (quantisation, fp16 compute)": ("nf4-fp16", "fp16", "rigorous"),
            "nf4fp16_vs_nf4bf16 (compute dtype within NF4)": ("nf4-fp16", "nf4-bf16", "rigorous"),
            "int8_vs_fp16 (8-bit quantisation)": ("int8", "fp16", "rigorous"),
            "bf16_vs_fp32 (half precision alone)": ("bf16", "fp32", "rigorous"),
            "fp16_vs_fp32 (half precision alone)": ("fp16", "fp32", "rigorous"),
            "seed_procedure nf4fp16_vs_bf16": ("nf4-fp16", "bf16", "seed"),
            "seed_procedure nf4fp16_vs_fp32": ("nf4-fp16", "fp32", "seed"),
        }
        out = {label: _finite(self.ratio(a, b, proto)) for label, (a, b, proto) in pairs.items()
               if a in self.rows and b in self.rows}
        out["seed headline (seed NF4-fp16 / fp32 reference procedure)"] = _finite(self.seed_amplification)
        return out

    def to_dict(self) -> dict:
        rows = {name: {"ok": r.ok, "error": r.error, "kl": r.mean_kl if r.ok else None,
                       "seed_kl": r.mean_seed_kl if r.ok else None, "noise_kl": r.mean_noise_kl if r.ok else None,
                       "load_s": round(r.load_s, 2), "run_s": round(r.run_s, 2), "footprint_mb": round(r.footprint_mb, 1)}
                for name, r in self.rows.items()}
        ratios = {}
        for num, den in (("nf4-bf16", "bf16"), ("nf4-fp16", "bf16"), ("nf4-fp16", "fp16"), ("int8", "bf16"),
                         ("int8", "fp16"), ("bf16", "fp32"), ("fp16", "fp32"), ("nf4-bf16", "fp32")):
            if num in self.rows and den in self.rows:
                ratios[f"{num}/{den}"] = {"rigorous": self.ratio(num, den), "seed": self.ratio(num, den, "seed")}
        for name, r in self.rows.items():
            rows[name].update(kl_per_example=[round(x, 10) for x in r.kl],
                              seed_kl_per_example=[round(x, 10) for x in r.seed_kl],
                              noise_kl_per_example=[round(x, 10) for x in r.noise_kl],
                              kl_by_scale={k: [round(x, 10) for x in v] for k, v in r.kl_by_scale.items()})
        return {"model": self.model, "layer": self.layer, "scale": self.scale, "units": self.units,
                "rigorous_scales": list(self.rigorous_scales), "rigorous_units": self.rigorous_units,
                "attribution": self.attribution(),
                "vector_to_resid": self.vector_norm / self.resid_norm if self.resid_norm else None,
                "vector_norm": self.vector_norm, "resid_norm": self.resid_norm, "contrast": self.contrast,
                "n_examples": self.n_examples, "device": self.device, "half_matmul": self.half_matmul,
                "precisions": rows, "ratios": ratios,
                "seed_reference_layer": self.seed_reference_layer,
                "seed_reference_kl": self.seed_reference.mean_kl if self.seed_reference else None,
                "seed_reference_kl_per_example": list(self.seed_reference.kls) if self.seed_reference else None,
                "seed_amplification": self.seed_amplification}


@torch.no_grad()
def quant_kl(key: str, *, contrast: st.Contrast, eval_examples: Sequence, layer: int = 2, scale: float = -4.0,
             units: str = "absolute", precisions: Sequence[str] = KL_PRECISIONS,
             protocols: Sequence[str] = ("seed", "rigorous"), seed_reference_layer: int | None = None,
             device=None, loader: Callable[[str, str], models.LoadedModel] | None = None, template: str = "auto",
             on_loaded: Callable[[models.LoadedModel, str], None] | None = None,
             rigorous_scales: Sequence[float] = (), rigorous_units: str = "relative",
             half_matmul: str = "native") -> QuantKLReport:
    """QUANT-KL on ``key``: the same steering at every precision, one model in memory at a time.

    The rigorous direction is the difference of means of ``contrast`` at ``layer`` on the fp32 model; ``scale``
    is signed, in ``units`` (``"absolute"``: the vector has norm ``|scale|``, as in the seed; ``"relative"``:
    in units of the fp32 residual norm). ``seed_reference_layer`` (default: the layer at the relative depth of
    the seed's L23 of 24) is where :func:`engine.steering.seed_reference_steer` runs on fp32.
    ``on_loaded(lm, precision)`` runs on each loaded precision after its KL (e.g. a speed measurement on the
    same load); its exceptions propagate. ``rigorous_scales`` (in ``rigorous_units``): the rigorous KL is also
    measured at each of these signed scales (same direction, layer, positions and prompts). ``half_matmul``: how
    the KL forwards of a half-precision load run their matrix products (:func:`half_matmuls`; never the timing of
    ``on_loaded``, which measures the kernels as they are).
    """
    load = loader or (lambda k, name: load_precision(k, name, device=device))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise QuantError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
    if not eval_examples:
        raise QuantError("quant_kl: no evaluation examples")
    if half_matmul not in HALF_MATMULS:
        raise QuantError(f"quant_kl: half_matmul must be one of {', '.join(HALF_MATMULS)}, got {half_matmul!r}")
    base = load(key, "fp32")
    st.check_layer(base, layer)
    directions = st.diff_of_means(base, contrast, [layer], template=template)
    vector = directions.vector(layer, scale, units).cpu()
    by_scale = {f"{float(s):g}": directions.vector(layer, float(s), rigorous_units).cpu() for s in rigorous_scales}
    batch = iv.encode(base, list(eval_examples), template=template)
    ref_logits = iv.clean_run(base, batch).logits.cpu()
    ref_layer = seed_reference_layer if seed_reference_layer is not None else st.relative_layer(23, 24, base.n_layers)
    reference = None
    if "seed" in protocols:
        reference = st.seed_reference_steer(base, contrast, eval_examples, ref_layer, scale, template=template)

    rows: dict[str, PrecisionKL] = {}
    order = sorted(precisions, key=lambda n: n != "fp32")  # fp32 first: measured on the model already loaded
    for name in order:
        row = PrecisionKL(name, ok=False)
        started = time.perf_counter()
        if name == "fp32" and base is not None:
            lm, base = base, None
        else:
            if base is not None:
                models.free(base)
                base = None
            try:
                lm = load(key, name)
            except _RUNTIME_FAILURES as exc:
                row.error = f"load failed: {type(exc).__name__}: {exc}"
                rows[name] = row
                continue
        row.load_s = time.perf_counter() - started
        row.footprint_mb = memory.footprint_bytes(lm) / 2**20
        started = time.perf_counter()
        try:
            with warnings.catch_warnings(), half_matmuls(half_matmul):
                warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
                b = batch.to(lm.device)
                if "rigorous" in protocols:
                    run = iv.clean_run(lm, b)
                    steered = run.rerun(iv.AddVector(layer, vector, 1.0))
                    row.kl = iv.kl(run.logits, steered).cpu().tolist()
                    row.noise_kl = iv.kl(ref_logits, run.logits.cpu()).tolist()
                    row.kl_by_scale = {k: iv.kl(run.logits, run.rerun(iv.AddVector(layer, v, 1.0))).cpu().tolist()
                                       for k, v in by_scale.items()}
                    del run
                if "seed" in protocols:
                    row.seed_kl = st.seed_protocol_steer(lm, eval_examples, layer, scale, template=template).kls
            row.ok = bool(np.isfinite(row.kl).all() and np.isfinite(row.seed_kl).all()
                          and all(np.isfinite(v).all() for v in row.kl_by_scale.values()))
            if not row.ok:
                row.error = "non-finite logits/KL (overflow in this precision)"
        except _RUNTIME_FAILURES as exc:
            if isinstance(exc, iv.InterventionError):  # a bug of the measurement, not of the precision
                raise
            row.error = f"forward failed: {type(exc).__name__}: {exc}"
        row.run_s = time.perf_counter() - started
        rows[name] = row
        if on_loaded is not None:
            on_loaded(lm, name)
        models.free(lm)
        del lm
    if base is not None:
        models.free(base)
    rows = {name: rows[name] for name in precisions if name in rows}
    return QuantKLReport(key, layer, float(scale), units, float(vector.norm()),
                         float(directions.resid_norm[0]), contrast.name, len(eval_examples), rows, reference,
                         ref_layer if reference else None,
                         device=str(device or models.default_device()),
                         rigorous_scales=tuple(float(s) for s in rigorous_scales), rigorous_units=rigorous_units,
                         half_matmul=half_matmul)


# --------------------------------------------------------------------------------------------- QUANT-SPEED


@dataclass
class SpeedRow:
    precision: str
    ok: bool
    error: str = ""
    times_s: list[float] = field(default_factory=list)
    tokens: int = 0
    footprint_mb: float = 0.0
    cuda_peak_mb: float | None = None
    peak_rss_mb: float | None = None  # process peak RSS while this precision was loaded and run (Linux)
    cold_s: float | None = None  # the first forward after loading (the seed protocol's single timing)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s) if self.times_s else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median_s if self.times_s else float("nan")


@dataclass
class SpeedReport:
    model: str
    device: str
    batch_size: int
    seq_len: int
    rounds: int
    warmup: int
    reference: str
    rows: dict[str, SpeedRow]
    machine: str = field(default_factory=lambda: f"{platform.machine()} {platform.processor() or ''}".strip())
    threads: int = field(default_factory=torch.get_num_threads)

    def slowdown(self, name: str, reference: str | None = None, protocol: str = "rigorous") -> float:
        """median latency(name) / median latency(reference) - 1 (0.52 = 52% slower); ``protocol="seed"``: the
        ratio of the single cold first forwards."""
        ref = self.rows.get(reference or self.reference)
        row = self.rows.get(name)
        if not (ref and row and ref.ok and row.ok):
            return float("nan")
        if protocol == "seed":
            return row.cold_s / ref.cold_s - 1.0 if row.cold_s and ref.cold_s else float("nan")
        return row.median_s / ref.median_s - 1.0

    def to_dict(self) -> dict:
        return {"model": self.model, "device": self.device, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "rounds": self.rounds, "warmup": self.warmup, "reference": self.reference, "machine": self.machine,
                "threads": self.threads,
                "rows": {n: {"ok": r.ok, "error": r.error, "median_s": r.median_s if r.ok else None,
                             "min_s": min(r.times_s) if r.times_s else None, "times_s": r.times_s,
                             "tokens_per_s": r.tokens_per_s if r.ok else None, "tokens": r.tokens,
                             "footprint_mb": round(r.footprint_mb, 1), "cuda_peak_mb": r.cuda_peak_mb,
                             "peak_rss_mb": r.peak_rss_mb, "cold_s": r.cold_s,
                             "seed_slowdown_vs_ref": _finite(self.slowdown(n, protocol="seed")) if r.ok else None,
                             "slowdown_vs_ref": _finite(self.slowdown(n)) if r.ok else None}
                         for n, r in self.rows.items()}}


def speed_batch(lm, examples: Sequence | None = None, batch_size: int = 8) -> iv.Batch:
    """The benchmark batch: ``batch_size`` suite prompts (a fixed stratified sample) rendered for ``lm``."""
    if examples is None:
        from engine import tasks

        examples = tasks.sample(per_family=max(1, -(-batch_size // len(tasks.FAMILIES))), seed=0)[:batch_size]
    return iv.encode(lm, list(examples)[:batch_size])


def _forward_inputs(lm, batch: iv.Batch) -> dict:
    """Model inputs for timing: the full prompt, logits at the last position only (``logits_to_keep=1``), so the
    unquantised LM head (Gemma's has 262k rows) does not swamp the quantised body."""
    inputs = batch.to(lm.device).model_inputs()
    inputs["logits_to_keep"] = 1
    return inputs


@torch.no_grad()
def time_forward(lm, batch: iv.Batch, rounds: int = 5, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of ``warmup + rounds`` forwards of ``batch``; the first ``warmup`` are the untimed
    warm-up of the rigorous protocol, but their times are returned too (``times[:warmup]``): the first one is
    the seed protocol's single cold timing."""
    inputs = _forward_inputs(lm, batch)
    cuda = lm.device.type == "cuda"
    times = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        for _ in range(warmup + rounds):
            if cuda:
                torch.cuda.synchronize(lm.device)
            start = time.perf_counter()
            lm.model(**inputs)
            if cuda:
                torch.cuda.synchronize(lm.device)
            times.append(time.perf_counter() - start)
    return times


def time_precision(lm, name: str, batch: iv.Batch, rounds: int = 5, warmup: int = 2) -> SpeedRow:
    """One precision's :class:`SpeedRow` on an already loaded model (errors are recorded, not raised)."""
    row = SpeedRow(name, ok=False, tokens=int(batch.attention_mask.sum()), footprint_mb=memory.footprint_bytes(lm) / 2**20)
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(lm.device)
    try:
        times = time_forward(lm, batch, rounds, warmup)
        row.cold_s = times[0]
        row.times_s = times[warmup:]
        row.ok = True
    except _RUNTIME_FAILURES as exc:
        row.error = f"forward failed: {type(exc).__name__}: {exc}"
    if lm.device.type == "cuda":
        row.cuda_peak_mb = torch.cuda.max_memory_allocated(lm.device) / 2**20
    return row


def measure_speed(key: str, precisions: Sequence[str] = SPEED_PRECISIONS, *, reference: str = "bf16",
                  examples: Sequence | None = None, batch_size: int = 8, rounds: int = 5, warmup: int = 2,
                  device=None, loader: Callable[[str, str], models.LoadedModel] | None = None) -> SpeedReport:
    """Forward latency and tokens/s of ``key`` at each precision, side by side in this process (same prompts,
    same token ids; one model in memory at a time)."""
    load = loader or (lambda k, name: load_precision(k, name, device=device))
    names = list(dict.fromkeys([reference, *precisions]))
    for name in names:
        precision(name)
    rows: dict[str, SpeedRow] = {}
    batch = None
    dev = str(device or models.default_device())
    for name in names:
        reset = memory.rss_peak_reset()
        try:
            lm = load(key, name)
        except _RUNTIME_FAILURES as exc:
            rows[name] = SpeedRow(name, ok=False, error=f"load failed: {type(exc).__name__}: {exc}")
            continue
        if batch is None:
            batch = speed_batch(lm, examples, batch_size)
        row = time_precision(lm, name, batch, rounds, warmup)
        row.peak_rss_mb = memory.rss_mb("VmHWM") if reset else None
        rows[name] = row
        dev = str(lm.device)
        models.free(lm)
        del lm
    if batch is None:
        raise QuantError(f"measure_speed: no precision of {key!r} could be loaded: "
                         + "; ".join(f"{n}: {r.error}" for n, r in rows.items()))
    return SpeedReport(key, dev, len(batch), batch.seq_len, rounds, warmup, reference, rows)


def _safe(name: str) -> str:
    """A model key or path as a file-name part."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name or name)


def write_speed_report(report: SpeedReport, out: str | Path) -> tuple[Path, Path]:
    """Write ``quant-<model>.json`` and a bar chart ``quant-<model>.png`` into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"quant-{_safe(report.model)}.json"
    json_path.write_text(json.dumps(report.to_dict(), indent=2))
    ok = [r for r in report.rows.values() if r.ok]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = [r.precision for r in ok]
    ax1.bar(names, [r.median_s * 1000 for r in ok], color="#4c72b0")
    ax1.set_ylabel("median forward latency (ms)")
    ax2.bar(names, [r.tokens_per_s for r in ok], color="#55a868")
    ax2.set_ylabel("tokens / s")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"{report.model} on {report.device}: batch {report.batch_size} x {report.seq_len} tokens, "
                 f"{report.rounds} rounds", fontsize=9)
    fig.tight_layout()
    png_path = out / f"quant-{_safe(report.model)}.png"
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path


def speed_report_from_dict(data: dict) -> SpeedReport:
    """Rebuild a :class:`SpeedReport` from :meth:`SpeedReport.to_dict` (e.g. a cached study) for the chart."""
    rows = {}
    for name, r in data["rows"].items():
        row = SpeedRow(name, ok=r["ok"], error=r["error"], tokens=r["tokens"], footprint_mb=r["footprint_mb"],
                       cuda_peak_mb=r.get("cuda_peak_mb"), peak_rss_mb=r.get("peak_rss_mb"), cold_s=r.get("cold_s"))
        row.times_s = list(r.get("times_s") or [])
        rows[name] = row
    report = SpeedReport(data["model"], data["device"], data["batch_size"], data["seq_len"], data["rounds"],
                         data["warmup"], data["reference"], rows)
    report.machine, report.threads = data.get("machine", report.machine), data.get("threads", report.threads)
    return report


__all__ = ["Precision", "PRECISIONS", "KL_PRECISIONS", "SPEED_PRECISIONS", "precision", "load_precision",
           "PrecisionKL", "QuantKLReport", "quant_kl", "SpeedRow", "SpeedReport",
           "speed_batch", "time_forward", "time_precision", "measure_speed", "write_speed_report", "QuantError",
           "speed_report_from_dict",
           "weights_fingerprint", "backend_versions"]
