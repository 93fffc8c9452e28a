"""Scorers: does a model's completion give the example's answer?

Every scorer takes the example's ``target`` and the raw completion (the text generated after the prompt,
special tokens removed) and returns a bool. Completions of greedy generation usually run past the answer
("Paris\\nQ: What is..."), so scorers look at the beginning of the completion only, as each docstring says.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal

from engine.tasks.examples import Example
from engine.tasks.vocabulary import SuiteError

OPENERS = "([{<"
CLOSERS = ")]}>"
_PAIR = dict(zip(OPENERS, CLOSERS))
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_LEX = re.compile(r"\w+|[^\w\s]")


def _lines(text: str, n: int) -> list[str]:
    return [line.rstrip() for line in text.lstrip().split("\n")[:n]]


def exact_match(target: str, completion: str) -> bool:
    """The completion's first lines (as many as the target has; leading whitespace and trailing spaces
    ignored) equal the target exactly (case-sensitive). Text after those lines is ignored."""
    want = [line.rstrip() for line in target.strip().split("\n")]
    got = _lines(completion, len(want))
    return got == want


def lexical_first_token(text: str) -> str:
    """The first word (``\\w+``) or punctuation character of ``text`` after leading whitespace; ``""`` if none.

    A tokenizer-free stand-in for "first token", used so that scores do not depend on a vocabulary.
    """
    m = _LEX.search(text)
    return m.group(0) if m else ""


def first_token_match(target: str, completion: str) -> bool:
    """The completion starts with the target's first word or punctuation mark (``lexical_first_token``)."""
    want = lexical_first_token(target)
    if not want:
        return False
    m = _LEX.match(completion.lstrip())
    return bool(m) and m.group(0) == want


def first_number(text: str) -> Decimal | None:
    """The first number in the first line of ``text`` (integers and decimals, optional sign), exactly."""
    m = _NUMBER.search(text.lstrip().split("\n", 1)[0])
    return Decimal(m.group(0)) if m else None


def numeric_match(target: str, completion: str) -> bool:
    """The first number in the completion's first line equals the target's number exactly (decimal
    arithmetic: ``2.50`` equals ``2.5``, ``999999999`` never equals ``1000000000``)."""
    want = first_number(target)
    if want is None:
        raise SuiteError(f"numeric scorer: target {target!r} has no number")
    got = first_number(completion)
    return got is not None and got == want


def _same_json(a, b) -> bool:
    """Equal values with equal JSON types (True is not 1, 1 is not 1.0, dict keys compared as sets)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return a == b


def parse_json_prefix(text: str):
    """Parse the JSON value the text starts with (after whitespace); None if it does not start with one."""
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError:
        return None
    return value


def json_schema_ok(target: str, completion: str) -> bool:
    """The completion starts with a JSON object whose keys and value types are exactly the target's."""
    want = json.loads(target)
    got = parse_json_prefix(completion)
    if not isinstance(got, dict) or got.keys() != want.keys():
        return False
    return all(type(got[k]) is type(want[k]) for k in want)


def json_match(target: str, completion: str) -> bool:
    """JSON parse + schema check + values: the completion starts with a JSON object with the target's keys,
    the same JSON types and the same values (key order and whitespace free). A completion that opens with
    a Markdown code fence does not start with JSON and fails: the family asks the model to emit JSON."""
    want = json.loads(target)
    got = parse_json_prefix(completion)
    return got is not None and _same_json(got, want)


def closers_for(opened: str) -> str:
    """The closing sequence for the still-open brackets in ``opened`` (other characters ignored).

    Raises ValueError if ``opened`` closes a bracket that is not open (it cannot be completed).
    """
    stack: list[str] = []
    for ch in opened:
        if ch in _PAIR:
            stack.append(_PAIR[ch])
        elif ch in CLOSERS:
            if not stack or stack.pop() != ch:
                raise ValueError(f"unbalanced closer {ch!r} in {opened!r}")
    return "".join(reversed(stack))


def is_balanced(text: str) -> bool:
    """Every bracket in ``text`` is closed in the right order."""
    try:
        return closers_for(text) == ""
    except ValueError:
        return False


def leading_closers(text: str) -> str:
    """The run of closing brackets the first line of ``text`` starts with (spaces between them ignored)."""
    out = []
    for ch in text.lstrip().split("\n", 1)[0]:
        if ch in CLOSERS:
            out.append(ch)
        elif ch.isspace():
            continue
        else:
            break
    return "".join(out)


def bracket_match(target: str, completion: str) -> bool:
    """Bracket closure: the closing brackets the completion starts with are exactly the target's closers
    (too few, too many or the wrong order all fail)."""
    want = "".join(ch for ch in target if ch in CLOSERS)
    if not want:
        raise SuiteError(f"brackets scorer: target {target!r} has no closing bracket")
    return leading_closers(completion) == want


def one_word_match(target: str, completion: str) -> bool:
    """Verbosity control: the completion's first line is a single word (trailing ``.!`` allowed) equal to
    the target ignoring case."""
    line = completion.strip().split("\n", 1)[0].strip().rstrip(".!")
    return bool(line) and len(line.split()) == 1 and line.casefold() == target.strip().casefold()


SCORERS: dict[str, Callable[[str, str], bool]] = {
    "exact": exact_match,
    "first_token": first_token_match,
    "numeric": numeric_match,
    "json": json_match,
    "brackets": bracket_match,
    "one_word": one_word_match,
}


def score(example: Example, completion: str) -> bool:
    """Score a completion with the example's scorer."""
    if example.scorer == "none":
        raise SuiteError(f"example {example.id!r} has no target: it cannot be scored")
    try:
        scorer = SCORERS[example.scorer]
    except KeyError:
        raise SuiteError(f"example {example.id!r}: unknown scorer {example.scorer!r}") from None
    return scorer(example.target, completion)
