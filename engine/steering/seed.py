"""The seed research's own steering procedure, faithfully (sign dropped, every position, abs(KL) in fp16), and its reference run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from engine import interventions as iv
from engine.steering.directions import Contrast, check_layer, diff_of_means
from engine.steering.rigorous import random_directions


def _seed_kl(clean_logits: Tensor, steered_logits: Tensor) -> Tensor:
    """The seed's KL: fp16 softmax of the last-position logits, KL(clean || steered), then abs()."""
    p_log = torch.log_softmax(clean_logits.half(), -1)
    q_log = torch.log_softmax(steered_logits.half(), -1)
    kl = torch.nn.functional.kl_div(q_log, p_log, reduction="none", log_target=True).sum(-1)
    return kl.abs().float()


@dataclass
class SeedSteerResult:
    """Per-prompt abs(KL) of the seed's steering procedure."""

    layer: int
    scale: float  # as given; the procedure uses only |scale|
    kls: list[float]
    ids: list[str]
    protocol: str = "seed"

    @property
    def mean_kl(self) -> float:
        return float(np.mean(self.kls))


@torch.no_grad()
def seed_protocol_steer(lm, examples: Sequence, layer: int, scale: float, template: str = "auto") -> SeedSteerResult:
    """The seed's steering measurement, faithfully (see the module doc): one prompt per forward; direction =
    mean over the prompt's tokens of the output of ``layer``, rescaled to norm ``|scale|`` (sign dropped),
    added at all positions of that layer's output; abs(KL) at the last position with an fp16 softmax.

    Unlike the seed, an exception in one prompt propagates (the seed swallowed them silently).
    """
    check_layer(lm, layer)
    kls, ids = [], []
    for ex in examples:
        batch = iv.encode(lm, [ex], template=template)
        run = iv.clean_run(lm, batch)
        vec = _seed_vector(run, layer, scale)  # the seed normalised to |s|: the sign is lost here
        steered = run.rerun(iv.AddVector(layer, vec, 1.0, positions=None))
        kls.append(float(_seed_kl(run.logits, steered)[0]))
        ids.append(getattr(ex, "id", str(ex)))
    return SeedSteerResult(layer, float(scale), kls, ids)


def _seed_vector(run: iv.CleanRun, layer: int, scale: float) -> Tensor:
    """The seed's vector: the mean over the prompt's tokens of layer ``layer``'s output, norm ``|scale|``."""
    direction = run.resid[layer + 1][0].float().mean(0)
    return direction / direction.norm() * abs(scale)


@torch.no_grad()
def seed_protocol_sweep(lm, examples: Sequence, layers: Sequence[int], scale: float,
                        template: str = "auto") -> dict[int, list[float]]:
    """:func:`seed_protocol_steer` at every layer of ``layers`` (one clean forward per prompt, reused):
    layer -> per-prompt abs(KL)."""
    layers = [check_layer(lm, l) for l in layers]
    out: dict[int, list[float]] = {l: [] for l in layers}
    for ex in examples:
        run = iv.clean_run(lm, iv.encode(lm, [ex], template=template))
        for layer in layers:
            vec = _seed_vector(run, layer, scale)
            steered = run.rerun(iv.AddVector(layer, vec, 1.0, positions=None))
            out[layer].append(float(_seed_kl(run.logits, steered)[0]))
    return out


@torch.no_grad()
def seed_random_control(lm, examples: Sequence, layer: int, scale: float, n_random: int = 32, seed: int = 0,
                        template: str = "auto") -> tuple[list[float], np.ndarray]:
    """Block C4 as the seed would have run it: its own vector (the prompt's mean activation, norm ``|s|``) vs
    ``n_random`` random vectors of the same norm, same layer, all positions, the seed's abs(KL) (fp16 softmax).
    Returns (per-prompt KL of the seed's vector, [n_random] mean KL of each random vector)."""
    check_layer(lm, layer)
    rand = random_directions(lm.d_model, n_random, abs(scale), seed)
    own, rand_kl = [], np.zeros((n_random, len(examples)))
    for i, ex in enumerate(examples):
        run = iv.clean_run(lm, iv.encode(lm, [ex], template=template))
        steered = run.rerun(iv.AddVector(layer, _seed_vector(run, layer, scale), 1.0, positions=None))
        own.append(float(_seed_kl(run.logits, steered)[0]))
        for j, r in enumerate(rand):
            steered = run.rerun(iv.AddVector(layer, r, 1.0, positions=None))
            rand_kl[j, i] = float(_seed_kl(run.logits, steered)[0])
    return own, rand_kl.mean(1)


@torch.no_grad()
def seed_reference_steer(lm, contrast: Contrast, eval_examples: Sequence, layer: int, scale: float,
                         n_pairs: int = 5, template: str = "auto") -> SeedSteerResult:
    """The procedure behind the seed's 0.021 denominator: a difference-of-means vector from ``n_pairs``
    positive/negative examples at ``layer`` (last position), rescaled to norm ``|scale|`` with the sign of
    ``scale``, added at the last position only; KL (fp32) at the last position, one prompt per forward."""
    check_layer(lm, layer)
    small = Contrast(contrast.name, contrast.positive[:n_pairs], contrast.negative[:n_pairs])
    direction = diff_of_means(lm, small, [layer], pooling="answer", template=template).unit(layer)
    vec = direction * scale
    kls, ids = [], []
    for ex in eval_examples:
        batch = iv.encode(lm, [ex], template=template)
        run = iv.clean_run(lm, batch)
        steered = run.rerun(iv.AddVector(layer, vec, 1.0, positions="answer"))
        kls.append(float(iv.kl(run.logits, steered)[0]))
        ids.append(getattr(ex, "id", str(ex)))
    return SeedSteerResult(layer, float(scale), kls, ids, protocol="seed-reference")
