"""The quant block's claim study: sizes per tier and one set of loads serving QUANT-KL and QUANT-SPEED."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from engine import interventions as iv
from engine import models
from engine import steering as st
from engine.quant import KL_PRECISIONS, SpeedReport, SpeedRow, quant_kl, time_precision
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

    def describe(self) -> str:
        return (f"{self.n_eval} prompts, s={self.scale} ({self.units}) at L{self.seed_layer}/{self.seed_n_layers} "
                f"relative depth, precisions {list(self.precisions)}; speed: batch {self.speed_batch}, "
                f"{self.warmup} warm-up + {self.rounds} rounds, logits at the last position, vs {self.reference}")


QUANT_SIZES: dict[str, QuantSizes] = {
    "cpu": QuantSizes(),
    "gpu": QuantSizes(n_eval=24, speed_batch=8, rounds=20, warmup=3),
}


def quant_sizes_for(tier: str) -> QuantSizes:
    return QUANT_SIZES["gpu" if tier == "gpu" else "cpu"]


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

    report = quant_kl(key, contrast=data.contrast, eval_examples=evals, layer=layer, scale=sizes.scale,
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
