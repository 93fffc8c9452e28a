"""The task suite: 12 families of prompts with targets, scorers, rendering and sampling.

Contract names are importable from here (``from engine.tasks import load_suite, render, ...``).
"""

from engine.tasks.examples import (BREADTH_FAMILIES, FAMILIES, SCORER_NAMES, SPLITS, SUITES, Example, SuiteError,
                                   fixtures_dir, load_manifest, load_prompts, load_suite, parse_jsonl, sample,
                                   suite_hash, write_jsonl)
from engine.tasks.render import (Rendered, positions, render, target_first_token_id, target_first_token_logprob,
                                 target_is_token_aligned)
from engine.tasks.scorers import SCORERS, score

__all__ = [
    "BREADTH_FAMILIES", "FAMILIES", "SCORERS", "SCORER_NAMES", "SPLITS", "SUITES", "Example", "Rendered",
    "SuiteError", "fixtures_dir", "load_manifest", "load_prompts", "load_suite", "parse_jsonl", "positions",
    "render", "sample", "score", "suite_hash", "target_first_token_id", "target_first_token_logprob",
    "target_is_token_aligned", "write_jsonl",
]
