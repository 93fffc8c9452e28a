"""The task suite: 12 families of prompts with targets, scorers, rendering and sampling.

Contract names are importable from here (``from engine.tasks import load_suite, render, ...``). Task families
are registered :class:`Family` objects (:mod:`engine.tasks.registry`; the built-ins in
:mod:`engine.tasks.families`); :mod:`engine.tasks.generate` writes the suites in ``fixtures/``.
"""

from engine.tasks.examples import (Example, fixtures_dir, load_manifest, load_prompts, load_suite, parse_jsonl, sample,
                                   suite_hash, write_jsonl)
from engine.tasks.registry import (Family, get_family, is_registered, register_family, registered_families,
                                   unregister_family)
from engine.tasks.render import (Rendered, positions, render, target_first_token_id, target_first_token_logprob,
                                 target_is_token_aligned)
from engine.tasks.scorers import SCORERS, score
from engine.tasks.vocabulary import BREADTH_FAMILIES, FAMILIES, SCORER_NAMES, SPLITS, SUITES, SuiteError

__all__ = [
    "BREADTH_FAMILIES", "FAMILIES", "SCORERS", "SCORER_NAMES", "SPLITS", "SUITES", "Example", "Family", "Rendered",
    "SuiteError", "fixtures_dir", "get_family", "is_registered", "load_manifest", "load_prompts", "load_suite",
    "parse_jsonl", "positions", "register_family", "registered_families", "render", "sample", "score",
    "suite_hash", "target_first_token_id", "target_first_token_logprob", "target_is_token_aligned",
    "unregister_family", "write_jsonl",
]
