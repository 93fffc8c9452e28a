"""What a steering vector is measured on: the target token sets and their summed log-probability."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from engine import interventions as iv
from engine.steering.directions import Contrast, SteeringError


def target_token_ids(lm, examples: Sequence, template: str = "auto") -> list[int]:
    """First answer token of each example (as ``engine.interventions.encode`` defines it)."""
    ids = iv.encode(lm, list(examples), template=template).target_ids.tolist()
    if any(i < 0 for i in ids):
        raise SteeringError("target_token_ids: some examples have no target")
    return ids


def family_target_set(lm, contrast: Contrast, template: str = "auto") -> list[int]:
    """The answer tokens typical of the contrast's positive set: its examples' first answer tokens that
    are not also a first answer token of the negative set (so a shared token like " the" is not counted)."""
    pos = set(target_token_ids(lm, contrast.positive, template))
    neg = set(target_token_ids(lm, contrast.negative, template))
    distinct = sorted(pos - neg)
    if not distinct:
        raise SteeringError(f"contrast {contrast.name!r}: every answer token of the positive set also answers "
                            "the negative set; no distinctive target set")
    return distinct


def target_matrix(target_ids: Sequence[Sequence[int]] | Sequence[int] | Tensor, n: int) -> Tensor:
    """[n, k] long matrix of target ids (padded with -1) from one set for all rows or one set per row."""
    if isinstance(target_ids, Tensor):
        t = target_ids.long()
        return t[:, None] if t.ndim == 1 else t
    rows = list(target_ids)
    if rows and all(isinstance(x, (int, np.integer)) for x in rows):
        rows = [rows] * n
    if len(rows) != n:
        raise SteeringError(f"targets: got {len(rows)} target sets for {n} examples")
    k = max(len(r) for r in rows)
    if k == 0:
        raise SteeringError("targets: empty target set")
    out = torch.full((n, k), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


def set_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """log P(any token of the row's target set) per row ([n, V] logits, [n, k] ids padded with -1)."""
    lp = torch.log_softmax(logits.float(), -1)
    gathered = lp.gather(-1, targets.clamp(min=0).to(lp.device))
    gathered = torch.where(targets.to(lp.device) >= 0, gathered, torch.full_like(gathered, -math.inf))
    return torch.logsumexp(gathered, -1)
