"""Every claim of the catalogue: one generic test per ``[[claim]]`` row and target.

A row names its rule template (``engine/templates/``: ``argmax_is``, ``beats_controls``, ...) and the template's
parameters, or a procedure for a rule no template fits; the row's template measures its specs (shared with every
other claim reading them, through the content-addressed cache) and decides both protocols; the claims plugin
parametrizes ``row`` (one param per row and target: every gpu-tier model, then the cpu-tier targets) and records
the two findings. Nothing here is specific to a claim: adding a claim is adding a row to
``engine/data/claims.toml``.
"""

from __future__ import annotations

import pytest

from claims.plugin import record_both
from engine import templates
from engine.studies import lora


@pytest.fixture(scope="module", autouse=True)
def _free_lora_benches():
    yield
    lora.release_benches()


def test_claim(claim, row, load_model):
    seed, rigorous = templates.run(claim.context, load_model)
    record_both(claim, seed, rigorous)
