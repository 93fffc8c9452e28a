"""Effect measures on next-token distributions (all computed in fp32 from logits, natural log / nats).

* ``kl(clean, edited)``: KL(clean || edited) per row - the atlas effect.
* ``kl_over_positions(clean, edited, mask)``: the same averaged over the real (non-pad) positions.
* ``js(p_logits, q_logits)``: Jensen-Shannon divergence, symmetric and bounded by ln 2; used to ask whether
  two prompts' outputs nearly coincide (the information-erasing guard).
* ``target_logprob`` / ``logprob_change`` / ``prob_change``: the answer's first token under the model.
* ``topk_overlap``: fraction of the clean top-k next tokens still in the edited top-k.
* ``effect_summary``: all of the above for one pair of logits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _logp(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def kl(clean_logits: Tensor, edited_logits: Tensor) -> Tensor:
    """KL(clean || edited) in nats over the last axis; shape = logits shape without the vocab axis.

    Exact zeros of the clean distribution contribute 0 (``xlogy`` semantics), so -inf logits are safe.
    """
    if clean_logits.shape != edited_logits.shape:
        raise ValueError(f"kl: shapes differ: {tuple(clean_logits.shape)} vs {tuple(edited_logits.shape)}")
    lp, lq = _logp(clean_logits), _logp(edited_logits)
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
    return terms.sum(-1).clamp(min=0.0)


def kl_over_positions(clean_logits: Tensor, edited_logits: Tensor, mask: Tensor) -> Tensor:
    """Per-example mean of KL over the positions where ``mask`` is true ([n, T, V] logits, [n, T] mask)."""
    per_pos = kl(clean_logits, edited_logits)
    mask = mask.to(per_pos.device).float()
    return (per_pos * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def js(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) between two distributions given as logits."""
    lp, lq = _logp(p_logits), _logp(q_logits)
    lm = torch.logsumexp(torch.stack([lp, lq]), dim=0) - math.log(2.0)
    p, q = lp.exp(), lq.exp()
    a = torch.where(p > 0, p * (lp - lm), torch.zeros_like(p)).sum(-1)
    b = torch.where(q > 0, q * (lq - lm), torch.zeros_like(q)).sum(-1)
    return (0.5 * (a + b)).clamp(min=0.0)


def target_logprob(logits: Tensor, target_ids: Tensor) -> Tensor:
    """log p(target first token) per row ([n, V] logits, [n] ids; rows with id < 0 give NaN)."""
    lp = _logp(logits)
    ids = target_ids.to(lp.device).long()
    out = lp.gather(-1, ids.clamp(min=0)[:, None])[:, 0]
    return torch.where(ids >= 0, out, torch.full_like(out, float("nan")))


def logprob_change(clean_logits: Tensor, edited_logits: Tensor, target_ids: Tensor) -> Tensor:
    """edited minus clean log-probability of the target's first token (negative: the edit hurt the answer)."""
    return target_logprob(edited_logits, target_ids) - target_logprob(clean_logits, target_ids)


def centred_logit(logits: Tensor, ids: Tensor) -> Tensor:
    """The logit of token ``ids`` minus the mean logit, per row ([n, V] logits, [n] ids >= 0): linear in the final
    (normed) residual and blind to the constant shift that softmax ignores."""
    ids = ids.to(logits.device).long()
    return logits.gather(-1, ids[:, None])[:, 0].float() - logits.float().mean(-1)


def answer_ids(clean_logits: Tensor, target_ids: Tensor) -> Tensor:
    """Per row the token a logit metric reads: the target's first token, or the clean top-1 where there is none."""
    ids = target_ids.to(clean_logits.device).long()
    return torch.where(ids >= 0, ids, clean_logits.argmax(-1))


def logit_drop(clean_logits: Tensor, edited_logits: Tensor, ids: Tensor) -> Tensor:
    """Clean minus edited centred logit of ``ids`` (:func:`centred_logit`; positive: the edit lowered the answer's
    logit): the logit-linear effect reported beside KL."""
    return centred_logit(clean_logits, ids) - centred_logit(edited_logits, ids)


def prob_change(clean_logits: Tensor, edited_logits: Tensor, target_ids: Tensor) -> Tensor:
    """edited minus clean probability of the target's first token."""
    return target_logprob(edited_logits, target_ids).exp() - target_logprob(clean_logits, target_ids).exp()


def topk_overlap(clean_logits: Tensor, edited_logits: Tensor, k: int = 5) -> Tensor:
    """Fraction (0..1) of the clean top-k token ids that are also in the edited top-k, per row."""
    a = clean_logits.topk(k, dim=-1).indices
    b = edited_logits.topk(k, dim=-1).indices
    hits = (a[..., :, None] == b[..., None, :]).any(-1).float()
    return hits.mean(-1)


def effect_summary(clean_logits: Tensor, edited_logits: Tensor, target_ids: Tensor | None = None,
                   k: int = 5) -> dict[str, Tensor]:
    """Every per-row measure at once ([n, V] logits at the measured position): ``kl``, ``topk_overlap`` and,
    with ``target_ids``, ``logprob_change`` and ``prob_change`` (NaN for rows without a target)."""
    out = {"kl": kl(clean_logits, edited_logits), "topk_overlap": topk_overlap(clean_logits, edited_logits, k)}
    if target_ids is not None:
        out["logprob_change"] = logprob_change(clean_logits, edited_logits, target_ids)
        out["prob_change"] = prob_change(clean_logits, edited_logits, target_ids)
    return out
