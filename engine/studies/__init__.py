"""Claim studies: each block's seed and rigorous procedures, built on the measuring packages below them.

One module per block: :mod:`.atlas` (HUB-*, OWN-ATLAS, POS-ANSWER, ABL-MEAN, SKIP-ALL), :mod:`.steer`
(STEER-*), :mod:`.quant` (QUANT-*), :mod:`.lora` (LORA-*, LOCKIN, SKIP-RECOVER; its measurements are
:mod:`engine.lora.studies`). Every claim's procedure returns the same shape, ``(seed, rigorous)``
:class:`~engine.studies.findings.Finding` s with the rule decided from the claim's ``[claim.params]``; the claim
tests in ``claims/`` only hand them to the verdict logic (:mod:`engine.verdicts`) with
:func:`claims.plugin.record_both`. Each block's sizes come from ``engine/data/plans.toml``
(:mod:`engine.plans`) through its ``sizes_for(tier, params)`` (LoRA: ``plan_for``).
"""
