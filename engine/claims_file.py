"""A researcher's own claims file: causal claims about any local model, run by the catalogue's rule templates.

``pytest claims --claims-file my-claims.toml`` (or ``mi-atlas claims --claims-file my-claims.toml``) runs the
claims of that file instead of the catalogue (beside it with ``--with-catalogue``). A row::

    [[claim]]
    id = "MY-HUB"
    statement = "My model's processing hub is layer 2"
    template = "argmax_is"                         # engine/templates/ (README: the templates table)
    model = "/data/models/my-llama"                 # a registry key or a local Hugging Face model directory
    layer = 2                                       # the template's parameters
    measure = { kind = "atlas", method = "zero", component = "layer" }
    prompts = { families = ["factual_recall", "copying"], per_family = 10 }
    # optional: plan = "default"; params = { hub_delta = 0.5, hub_delta_rationale = "why" }

``model`` may be ``models = [...]`` for a template about several models (``depths_differ``). ``prompts``: suite
families with a per-family n, or ``{ file = "prompts.jsonl", per_family = 5 }`` (the documented prompt format,
``mi-atlas suite validate``). A user's claim gets one record per model under the rigorous protocol (the seed
protocol belongs to the seed's catalogue); its verdicts, records, report, registry and baselines work as the
catalogue's do.

Every row is checked when the file is read (:func:`load_claims_file`): an unknown template, a missing, unknown or
mistyped parameter, a layer beyond the model, an unreadable model directory or a prompts file that fails
validation is one line naming the file, the claim and the field (:class:`ClaimsFileError`); nothing runs.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

from engine import models, plans, tasks, templates
from engine.verdicts import Catalogue, Claim, ClaimError, Tolerance, check_catalogue, load_catalogue

USER_PROTOCOLS = ("rigorous",)
ROW_KEYS = {"id", "statement", "template", "model", "models", "prompts", "plan", "params", "notes"}
PROMPT_KEYS = {"families", "per_family", "file"}


class ClaimsFileError(ClaimError):
    """A claims file or one of its rows is malformed: one line naming the file, the claim and the field."""


def load_claims_file(path: str | Path) -> Catalogue:
    """The claims of a user's file as a :class:`~engine.verdicts.Catalogue` (rigorous protocol only), every row
    checked; local model directories become registry entries keyed by their directory name."""
    path = Path(path).expanduser()
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClaimsFileError(f"{where}: cannot read the claims file ({exc.strerror or exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClaimsFileError(f"{where}: not valid TOML ({exc})") from exc
    rows = data.get("claim")
    if not isinstance(rows, list) or not rows:
        raise ClaimsFileError(f"{where}: no [[claim]] rows (see README, 'Write your own claim')")
    unknown = sorted(set(data) - {"claim"})
    if unknown:
        raise ClaimsFileError(f"{where}: unknown top-level table(s) {', '.join(unknown)} (a claims file holds "
                              "[[claim]] rows only)")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    claims: dict[str, Claim] = {}
    for index, row in enumerate(rows, start=1):
        claim = _claim(row, where, index, path.parent, digest)
        if claim.id in claims:
            raise ClaimsFileError(f"{where}: claim {claim.id}: id: appears twice")
        claims[claim.id] = claim
    packaged = load_catalogue()  # its cpu models: what the plans' model lists name (a user's rows name their own)
    catalogue = Catalogue(path=where, claims=claims, blocks=plans.BLOCKS, protocols=USER_PROTOCOLS,
                          cpu_models=packaged.cpu_models, scales={}, default_tolerance=Tolerance())
    try:
        return check_catalogue(catalogue)
    except ClaimError as exc:
        raise ClaimsFileError(str(exc)) from exc


def merged(catalogue: Catalogue, user: Catalogue) -> Catalogue:
    """The catalogue and a user's claims side by side (``--with-catalogue``); an id in both is an error."""
    both = sorted(set(catalogue.claims) & set(user.claims))
    if both:
        raise ClaimsFileError(f"{user.path}: claim {both[0]}: id: already a claim of the catalogue {catalogue.path}")
    return Catalogue(path=f"{catalogue.path} + {user.path}", claims={**catalogue.claims, **user.claims},
                     blocks=catalogue.blocks, protocols=catalogue.protocols, cpu_models=catalogue.cpu_models,
                     scales=catalogue.scales, default_tolerance=catalogue.default_tolerance)


def _fail(where: str, claim_id: str, field: str, text: str) -> ClaimsFileError:
    return ClaimsFileError(f"{where}: claim {claim_id}: {field}: {text}")


def _claim(row: Any, where: str, index: int, base: Path, digest: str) -> Claim:
    if not isinstance(row, dict):
        raise ClaimsFileError(f"{where}: claim #{index}: not a table")
    claim_id = row.get("id")
    if not isinstance(claim_id, str) or not claim_id.strip():
        raise ClaimsFileError(f"{where}: claim #{index}: id: missing (a short name, e.g. \"MY-HUB\")")
    for field in ("statement", "template"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise _fail(where, claim_id, field, "missing (a string)")
    try:
        template = templates.get(row["template"])
    except templates.TemplateError:
        raise _fail(where, claim_id, "template", f"unknown template {row['template']!r} (templates: "
                    f"{', '.join(templates.names())})") from None
    keys = _models(row, where, claim_id, base)
    specs = [models.spec_for(k) for k in keys]
    tier = "gpu" if any(s.tier == "gpu" for s in specs) else "cpu"
    params = row.get("params", {})
    if not isinstance(params, dict):
        raise _fail(where, claim_id, "params", f"{params!r}: expected a table of rule thresholds")
    params = dict(params)
    if "plan" in row:
        if not isinstance(row["plan"], str):
            raise _fail(where, claim_id, "plan", f"{row['plan']!r}: expected a plan name")
        params["plan"] = row["plan"]
    args = {k: v for k, v in row.items() if k not in ROW_KEYS}
    if "prompts" in row:
        prompt_sizes, prompt_args = _prompts(row["prompts"], where, claim_id, base, template)
        params.update(prompt_sizes)
        args.update(prompt_args)
    claim = Claim(id=claim_id, block=template.block, statement=row["statement"], rule=template.rule, source=where,
                  tiers=(tier,), models=tuple(keys), scales=tuple(sorted({s.scale for s in specs})), key="",
                  tolerance=Tolerance(), params=params, notes=str(row.get("notes", "")), catalogue_sha256=digest,
                  template=template.name, args=args, targets=("+".join(keys),), protocols=USER_PROTOCOLS)
    try:
        template.check(claim, where)
        template.check_models(claim, specs, where)
    except templates.TemplateError as exc:
        raise ClaimsFileError(str(exc)) from None
    return claim


def _models(row: dict, where: str, claim_id: str, base: Path) -> list[str]:
    if ("model" in row) == ("models" in row):
        raise _fail(where, claim_id, "model", "name one model (model = \"key or directory\") or several "
                                              "(models = [...])")
    field = "model" if "model" in row else "models"
    values = [row["model"]] if field == "model" else row["models"]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise _fail(where, claim_id, field, f"{values!r}: expected a registry key or a model directory (strings)")
    keys = []
    for value in values:
        if value in models.REGISTRY and models.REGISTRY[value].source != "local":
            keys.append(value)
            continue
        directory = Path(value).expanduser()
        directory = directory if directory.is_absolute() else base / directory
        if not directory.is_dir():
            raise _fail(where, claim_id, field, f"{value}: neither a registry key (`mi-atlas models list`) nor a "
                                                "model directory")
        try:
            keys.append(models.register_local(directory).key)
        except models.ModelError as exc:
            raise _fail(where, claim_id, field, " ".join(str(exc).split())) from exc
    return keys


def _prompts(value: Any, where: str, claim_id: str, base: Path, template) -> tuple[dict, dict]:
    """``prompts`` as size overrides of the template's block (``families``, ``rigorous_per_family``) and template
    arguments (a prompts file)."""
    if not isinstance(value, dict):
        raise _fail(where, claim_id, "prompts", f"{value!r}: expected a table, e.g. {{ families = [...], "
                                                "per_family = 10 }")
    unknown = sorted(set(value) - PROMPT_KEYS)
    if unknown:
        raise _fail(where, claim_id, f"prompts.{unknown[0]}", f"unknown key (prompts: {', '.join(sorted(PROMPT_KEYS))})")
    if template.block != "atlas":
        raise _fail(where, claim_id, "prompts", f"template {template.name!r} takes its prompts from its plan")
    sizes: dict[str, Any] = {}
    args: dict[str, Any] = {}
    per = value.get("per_family")
    if per is not None:
        if not isinstance(per, int) or isinstance(per, bool) or per < 1:
            raise _fail(where, claim_id, "prompts.per_family", f"{per!r}: expected an integer >= 1")
        sizes["rigorous_per_family"] = per
    if "file" in value:
        file = Path(str(value["file"])).expanduser()
        file = file if file.is_absolute() else base / file
        try:
            examples = tasks.load_prompts(file)
        except (OSError, ValueError) as exc:
            raise _fail(where, claim_id, "prompts.file", f"{file}: {' '.join(str(exc).split())[:300]}") from exc
        counts: dict[str, int] = {}
        for ex in examples:
            counts[ex.family] = counts.get(ex.family, 0) + 1
        need = per or 1
        short = {f: n for f, n in counts.items() if n < need}
        if short:
            raise _fail(where, claim_id, "prompts.file", f"{file}: families {sorted(short)} have fewer than "
                                                         f"per_family = {need} prompts")
        args["prompts_file"] = str(file.resolve())
        sizes["families"] = sorted(counts)
    if "families" in value:
        families = value["families"]
        known = list(tasks.FAMILIES) if "file" not in value else sorted(sizes["families"])
        if not isinstance(families, list) or not families or not all(f in known for f in families):
            raise _fail(where, claim_id, "prompts.families", f"{families!r}: expected a list of families of "
                                                             f"{', '.join(known)}")
        sizes["families"] = families
    return sizes, args
