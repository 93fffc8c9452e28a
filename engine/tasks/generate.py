"""Generate the task suites in ``fixtures/`` from the registered task families, deterministically.

Two suites over the same 12 families (:data:`engine.tasks.FAMILIES`, one module each in
:mod:`engine.tasks.families`):

* ``synthetic`` (4,300 examples): few-shot prompts in a terse raw style ("Q: ... / A:", "Input: ... /
  Output:"), two splits per family: ``short`` (2,500: small inputs, 1-2 worked examples) and ``long``
  (1,800: bigger inputs, more steps or more worked examples).
* ``nl`` (2,500 examples, >= 50 per family): the same questions in everyday phrasing, no worked examples,
  ending with an ``Answer:`` cue.

Every prompt is unique within its file. Each file is drawn from its own ``random.Random`` seeded from a
string (``mi-atlas-suite/<version>/<suite>/<family>/<split>``: stable across runs and platforms) with a
fresh ``state`` dict, so :func:`write_fixtures` reproduces the committed files byte for byte and the
manifest records their sha256. The built-in suite is always the :data:`~engine.tasks.FAMILIES` in that
order; another registered family (:func:`engine.tasks.register_family`) is generated only when named in
``families=`` (its counts from ``counts=`` or its :attr:`~engine.tasks.Family.counts`).

``python -m engine.tasks.generate [--out DIR] [--check]`` (or
``mi-atlas suite generate``) writes or checks the suites.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from engine.tasks.examples import Example, fixtures_dir, load_manifest, sha256_file, write_jsonl
from engine.tasks.registry import get_family
from engine.tasks.vocabulary import FAMILIES, SuiteError

# the generator named in manifest.json
GENERATOR = "engine.tasks.generate"
GENERATOR_VERSION = "1"

# per-family counts: 2,500 short + 1,800 long = 4,300 synthetic; 2,500 natural-language
SHORT_COUNTS = {f: (209 if i < 4 else 208) for i, f in enumerate(FAMILIES)}
LONG_COUNTS = {f: 150 for f in FAMILIES}
NL_COUNTS = dict(SHORT_COUNTS)


def generate_examples(suite: str, family: str, split: str, count: int) -> list[Example]:
    """``count`` examples with unique prompts for one suite/family/split of a registered family,
    deterministically."""
    if suite not in ("synthetic", "nl"):
        raise ValueError(f"unknown suite {suite!r}; choose from synthetic, nl")
    fam = get_family(family)
    rng = random.Random(f"mi-atlas-suite/{GENERATOR_VERSION}/{suite}/{family}/{split}")
    state: dict = {}
    seen: set[str] = set()
    out: list[Example] = []
    attempts = 0
    prefix = "syn" if suite == "synthetic" else "nl"
    while len(out) < count:
        attempts += 1
        if attempts > 200 * count:
            raise RuntimeError(f"{suite}/{family}/{split}: only {len(out)} unique prompts after {attempts} tries")
        item = fam.synthetic(rng, split, state) if suite == "synthetic" else fam.natural(rng, state)
        if item.prompt in seen:
            continue
        seen.add(item.prompt)
        scorer = item.scorer if item.scorer is not None else fam.scorer
        if scorer is None:
            raise ValueError(f"{suite}/{family}/{split}: the item names no scorer and the family has no default")
        out.append(Example(
            id=f"{prefix}-{family}-{split}-{len(out):04d}", family=family, split=split, prompt=item.prompt,
            target=item.target, scorer=scorer, clean=item.prompt if item.corrupt else None,
            corrupt=item.corrupt, corrupt_target=item.corrupt_target))
    return out


def family_counts(family: str, counts: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, int]:
    """Examples per split (``short``/``long``/``nl``) for ``family``: ``counts[family]`` when given, else
    the built-in suite's counts, else the family's own :attr:`~engine.tasks.Family.counts`."""
    if counts is not None and family in counts:
        unknown = set(counts[family]) - {"short", "long", "nl"}
        if unknown:
            raise ValueError(f"counts for {family!r}: unknown split(s) {sorted(unknown)}; splits are short, long, nl")
        return dict(counts[family])
    if family in FAMILIES:
        return {"short": SHORT_COUNTS[family], "long": LONG_COUNTS[family], "nl": NL_COUNTS[family]}
    fam = get_family(family)
    if fam.counts is None:
        raise ValueError(f"task family {family!r} has no counts: pass counts={{{family!r}: {{'short': n, ...}}}} "
                         "or give the family a counts attribute")
    return dict(fam.counts)


def build_suites(families: Iterable[str] = FAMILIES,
                 counts: Mapping[str, Mapping[str, int]] | None = None) -> dict[tuple[str, str, str], list[Example]]:
    """Every fixture file's examples keyed by (suite, family, split), in manifest order: the synthetic files
    of each family in turn (short, long), then the natural-language ones. A split with no count (or 0) is
    not generated. The default is the built-in suite."""
    if isinstance(families, str):
        raise ValueError("families must be a list of family names, not a string")
    names = list(dict.fromkeys(families))
    plan = {family: family_counts(family, counts) for family in names}
    out: dict[tuple[str, str, str], list[Example]] = {}
    for family in names:
        for split in ("short", "long"):
            if plan[family].get(split):
                out[("synthetic", family, split)] = generate_examples("synthetic", family, split, plan[family][split])
    for family in names:
        if plan[family].get("nl"):
            out[("nl", family, "nl")] = generate_examples("nl", family, "nl", plan[family]["nl"])
    return out


def fixture_path(suite: str, family: str, split: str) -> str:
    return f"{suite}/{family}.jsonl" if suite == "nl" else f"{suite}/{family}.{split}.jsonl"


def write_fixtures(directory: Path, families: Iterable[str] = FAMILIES,
                   counts: Mapping[str, Mapping[str, int]] | None = None) -> dict:
    """Generate the suites into ``directory`` (JSONL files + ``manifest.json``); returns the manifest.

    ``directory`` ends up holding exactly these files: other ``synthetic/``/``nl/`` JSONL files there are
    removed (files of an older layout would confuse a reader), so write a non-default ``families`` set into
    a directory of its own, not ``fixtures/``."""
    directory = Path(directory)
    suites = build_suites(families, counts)
    wanted = {fixture_path(*key) for key in suites}
    for stale in sorted(directory.glob("*/*.jsonl")):
        if stale.parent.name in ("synthetic", "nl") and stale.relative_to(directory).as_posix() not in wanted:
            stale.unlink()
    files = []
    for (suite, family, split), examples in suites.items():
        rel = fixture_path(suite, family, split)
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, examples)
        files.append({"path": rel, "suite": suite, "family": family, "split": split, "count": len(examples),
                      "generator_version": GENERATOR_VERSION,
                      "pairs": sum(ex.corrupt is not None for ex in examples), "sha256": sha256_file(path)})
    totals: dict[str, int] = {}
    for f in files:
        totals[f["suite"]] = totals.get(f["suite"], 0) + f["count"]
    manifest = {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "totals": totals,
                "files": files}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8",
                                             newline="\n")
    return manifest


def check_fixtures(directory: Path | None = None, families: Iterable[str] = FAMILIES,
                   counts: Mapping[str, Mapping[str, int]] | None = None) -> list[str]:
    """Regenerate in a temporary directory and compare with ``directory``'s manifest (default:
    ``fixtures/``); returns the files whose sha256 (or presence) differs (empty: reproducible). Raises
    :class:`~engine.tasks.SuiteError` when the manifest is missing or unreadable."""
    committed = {f["path"]: f["sha256"] for f in load_manifest(directory)["files"]}
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {f["path"]: f["sha256"] for f in write_fixtures(Path(tmp), families, counts)["files"]}
    return sorted(p for p in committed.keys() | fresh.keys() if committed.get(p) != fresh.get(p))


def main(argv: list[str] | None = None, prog: str = "python -m engine.tasks.generate") -> int:
    """``python -m engine.tasks.generate [--out DIR] [--check]``: write the suites and their manifest, or
    (``--check``) compare a regeneration with the manifest's sha256 and write nothing."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: fixtures/)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing: regenerate in a temporary directory and compare sha256 with the manifest")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else fixtures_dir()
    if args.check:
        try:
            differ = check_fixtures(out)
        except SuiteError as exc:
            print(f"error: {exc}")
            return 2
        if differ:
            print(f"{len(differ)} file(s) differ from {out}/manifest.json: {', '.join(differ)}")
            return 1
        print(f"ok: regenerating reproduces every sha256 in {out}/manifest.json")
        return 0
    manifest = write_fixtures(out)
    totals = ", ".join(f"{suite} {n}" for suite, n in manifest["totals"].items())
    print(f"wrote {len(manifest['files'])} files to {out} ({totals}; generator v{manifest['generator_version']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
