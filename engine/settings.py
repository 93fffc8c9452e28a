"""Settings: numeric ``MI_ATLAS_*`` environment variables (one parser, one message for a bad value) and one claims
run's settings (:class:`RunSettings`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine import plans


def positive_int(name: str, default: int, unit: str) -> tuple[int, bool]:
    """``(value, set_by_env)`` of the environment variable ``name`` (``default`` when unset or empty).

    A value that is not a positive integer raises ``ValueError`` with a one-line message naming the variable,
    the value, the unit and the default; callers re-raise it as their own error type.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default, False
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${name}={raw!r}: expected a positive number of {unit} (default {default})")
    return value, True


# ------------------------------------------------------------------------------------------------ one run's settings


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The settings of one claims run, in one object (as pytest-benchmark's session owns its options): the plan
    that sizes every claim, where run files, the registry, baselines and pictures go. The pytest plugin builds it
    once from its options (``claims.plugin``: ``config.stash[SETTINGS]``); the CLI and library callers build their
    own. Nothing below reads an option or works out a directory again.

    ``plan``: the session's ``--plan`` (None: each claim's own ``[claim.params] plan``, else ``"default"``);
    ``results``: the results root (``runs/``, ``registry.jsonl``, pictures under ``steer/`` and ``bench/``);
    ``baselines``: where baselines are read and pinned (default ``<results>/baselines``).
    """

    plan: str | None = None
    results: Path = Path("results")
    baselines: Path | None = None

    @classmethod
    def of(cls, *, plan: str | None = None, results: str | Path | None = None, baselines: str | Path | None = None,
           root: str | Path = ".") -> RunSettings:
        """Settings from option values (None: the default; relative paths resolved; ``root`` is the project)."""
        res = Path(results).expanduser().resolve() if results else Path(root) / "results"
        base = Path(baselines).expanduser().resolve() if baselines else None
        return cls(plan=plan or None, results=res, baselines=base)

    @property
    def baselines_dir(self) -> Path:
        return self.baselines or self.results / "baselines"

    @property
    def session_plan(self) -> str:
        """The plan the session is compared and pinned under (``--plan``, else ``default``)."""
        return self.plan or plans.DEFAULT_PLAN

    def plan_for(self, params: Mapping[str, Any] | None = None) -> str:
        """The plan that sizes a claim: the session's, else the claim's ``[claim.params] plan``, else default."""
        return self.plan or plans.plan_name(params)

    def output(self, *parts: str) -> Path:
        """A directory under the results root (created): ``settings.output("steer")``."""
        path = self.results.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
