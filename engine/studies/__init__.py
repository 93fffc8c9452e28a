"""Claim studies: each block's seed and rigorous procedures, built on the measuring packages below them.

One module per block: :mod:`.atlas` (HUB-*, OWN-ATLAS, POS-ANSWER, ABL-MEAN, SKIP-ALL), :mod:`.steer`
(STEER-*), :mod:`.quant` (QUANT-*); the LoRA block's studies are :mod:`engine.lora.studies`. The claim tests in
``claims/`` call these and hand their figures to the verdict logic (:mod:`engine.verdicts`).
"""
