"""The suite's vocabulary: the built-in families (in the committed suite's order), suites, splits, scorer names,
and the error every suite problem raises. Everything in :mod:`engine.tasks` builds on these names."""

from __future__ import annotations

FAMILIES: tuple[str, ...] = (
    "arithmetic",
    "code_semantics",
    "code_syntax",
    "copying",
    "delimiter_tracking",
    "factual_recall",
    "instruction_following",
    "json_schema",
    "string_decoding",
    "uncertainty_expression",
    "variable_renaming",
    "verbosity_control",
)
# the 4-family subset of the seed's phase-1 suite (json, factual, copying, code): the HUB-BREADTH claim
BREADTH_FAMILIES: tuple[str, ...] = ("json_schema", "factual_recall", "copying", "code_syntax")
SUITES: tuple[str, ...] = ("synthetic", "nl")
SPLITS: tuple[str, ...] = ("short", "long", "nl")
# scorer names; "none" marks a user prompt without a target (it cannot be scored)
SCORER_NAMES: tuple[str, ...] = ("exact", "first_token", "numeric", "json", "brackets", "one_word", "none")


class SuiteError(ValueError):
    """A suite or prompt file cannot be used; the message names the file, line and field."""
