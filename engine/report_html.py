"""The HTML page of a claims run: ``report.html`` beside ``claims.json``, one self-contained file.

``render_page(run)`` turns a :class:`engine.results.Run` into one HTML page that needs no network and no server
(CSS inline, pictures inline as PNG data URIs drawn with matplotlib, one small inline script that checks the
pictures decoded):

* a banner when the run is incomplete or was interrupted (the reasons), the verdict counts and the decision line;
* changes since the pinned baseline (verdict flips, moved figures, pinned records not measured) at the top;
* the verdict matrix: claims x models, seed and rigorous side by side, the five outcomes coloured, each cell linking
  to its card; records that share one piece of evidence (one decision reported several times) carry the same
  decision mark ``D<n>``;
* one card per (claim, model): the statement, the rule with its thresholds, per protocol what decided and why (or
  what would: the projected n), the figures with their CIs and n, and the picture that decides it, drawn from what
  the record stores (``claims.json``) and nothing else:

  - ``argmax`` evidence (hub claims): the per-layer effect (mean over family means) with the 95% CI band of the
    decision's own estimator (:func:`engine.decisions.interval`) per seed / suite, and P(argmax = layer) from a
    stratified bootstrap of the stored per-example effects;
  - ``greater`` evidence: the per-family means and the decision's CI against 0 and delta (a ratio axis for a log
    ratio); with stored control distributions (steering), the random and off-target controls, their percentile
    thresholds and the direction's effect with its CI;
  - ``for_every`` / ``differs`` evidence: every member's estimate and CI, Holm's decisions marked;
  - ``beats_draws`` evidence (LoRA, skip-recover): our run per training seed against its random-matched draws;
  - per-layer profiles the record stores (answer vs BOS positions, ablation methods, steering effect by layer,
    adapter effect per layer) and per-precision / per-configuration bars.

  A picture whose data the record does not hold (a layer x scale grid) is named on the card as missing, never drawn
  from anything else; a staged record's looks are listed with its figures.
* provenance at the bottom (commit, engine, machine, packages, arguments).

The pictures are deterministic (fixed resampling seeds), so re-rendering a run gives the same page.
``write_page_quietly`` is what ``engine.results.write_run`` calls in its ``finally`` (a problem is one line, never
raised). :func:`decisive_png` serves one record's picture to the pytest-html extras (``claims/html_extras.py``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from engine.verdicts import Verdict, VerdictRecord, fmt, is_number, is_number_list

PAGE_FILE = "report.html"
COLOURS = {"CONFIRMED": "#1f883d", "REVISED": "#bc4c00", "FAILED": "#cf222e", "INCONCLUSIVE": "#8250df",
           "UNTESTED": "#8c959f"}
OUTCOME_COLOURS = {"for": "#1f883d", "against": "#cf222e", "undecided": "#8250df"}
BOOTSTRAP = 1000  # stratified resamples behind P(argmax = layer)
BOOTSTRAP_SEED = 0
DPI = 72
MAX_TABLE_LIST = 12  # list figures longer than this are summarised in the figures table

# Per-layer lists a record may store, drawn together when they share units; dicts of numbers drawn as bars.
PROFILE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("answer_profile", "bos_profile", "measured_position_profile"),
    ("effects",),
    ("zero_effects",),
    ("residual_mean_ratio_per_layer",),
    ("effect_by_layer",),
    ("kl_by_layer",),
    ("effect_per_layer",),
    ("decile_share", "decile_share_per_example_mean"),
)
BAR_GROUPS: tuple[tuple[str, ...], ...] = (
    ("overlaps",),
    ("kl_by_precision", "noise_kl_vs_fp32"),
    ("seed_kl_by_precision",),
)
LAYER_MARKS = (("best_layer", "best"), ("hub_guess_layer", "hub guess"), ("layer", "layer"))


# ------------------------------------------------------------------------------------------------ pictures


@dataclass
class Picture:
    """One drawn picture: its caption and the PNG bytes (base64)."""

    caption: str
    png_b64: str

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + self.png_b64


@dataclass
class Drawn:
    """What one record's pictures are: the pictures drawn and the ones its data cannot give (with why)."""

    pictures: list[Picture] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    _plt().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(text: str, limit: int = 90) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _stratified_mean(values: np.ndarray, groups: list[str]) -> np.ndarray:
    """Mean over family means, per column (the estimate every primitive reports)."""
    names = list(dict.fromkeys(groups))
    g = np.asarray(groups)
    return np.mean([values[g == name].mean(axis=0) for name in names], axis=0)


def _argmax_probabilities(values: np.ndarray, groups: list[str], rng: np.random.Generator) -> np.ndarray:
    """P(argmax = unit) over stratified bootstrap resamples (examples resampled within each family)."""
    g = np.asarray(groups)
    total = np.zeros((BOOTSTRAP, values.shape[1]))
    names = list(dict.fromkeys(groups))
    for name in names:
        rows = values[g == name]
        picks = rng.integers(0, len(rows), size=(BOOTSTRAP, len(rows)))
        total += rows[picks].mean(axis=1)
    winners = np.argmax(total / len(names), axis=1)
    return np.bincount(winners, minlength=values.shape[1]) / BOOTSTRAP


def _unit_intervals(values: np.ndarray, groups: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """Per unit (column) the 95% CI of the decision's own estimator; NaN where it gives none; the method(s)."""
    from engine.decisions import interval

    lows, highs, methods = [], [], set()
    for column in values.T:
        iv = interval(column, groups)
        ok = iv.low is not None and not iv.degenerate
        lows.append(iv.low if ok else np.nan)
        highs.append(iv.high if ok else np.nan)
        methods.add(iv.method if ok else "none")
    return np.asarray(lows, float), np.asarray(highs, float), ", ".join(sorted(methods))


def _argmax_picture(record: VerdictRecord, evidence: list[dict], drawn: Drawn) -> None:
    plt = _plt()
    usable = [e for e in evidence if (e.get("data") or {}).get("values") and (e.get("data") or {}).get("groups")]
    if not usable:
        drawn.missing.append("per-layer effect with CI band: the record stores no per-example effects")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.0), gridspec_kw={"width_ratios": [3, 2]},
                                      layout="constrained")
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    palette = plt.get_cmap("tab10")
    width = 0.8 / len(usable)
    notes, methods = [], set()
    for i, e in enumerate(usable):
        data = e["data"]
        values = np.asarray(data["values"], dtype=float)
        groups = [str(g) for g in data["groups"]]
        units = list(data.get("units") or range(values.shape[1]))
        x = np.asarray(units, dtype=float)
        means = _stratified_mean(values, groups)
        low, high, method = _unit_intervals(values, groups)
        methods.add(method)
        colour = palette(i % 10)
        name = str(e.get("part") or e.get("label") or f"evidence {i + 1}")
        left.plot(x, means, color=colour, linewidth=1.4, marker="o", markersize=2.5,
                  label=f"{name} (n {e.get('n', len(values))}, {e.get('outcome')})")
        if np.isfinite(low).any():
            left.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)
        top = int(np.argmax(means))
        left.plot([x[top]], [means[top]], marker="*", markersize=9, color=colour)
        tied = (e.get("details") or {}).get("tied_units")
        if tied and len(tied) > 1 and np.ptp(means[[units.index(u) for u in tied if u in units]]) == 0:
            notes.append(f"{name}: an exact tie of {len(tied)} units, P(argmax) not defined")
            continue
        probabilities = _argmax_probabilities(values, groups, rng)
        right.bar(x + (i - (len(usable) - 1) / 2) * width, probabilities, width=width, color=colour,
                  label=name)
    left.set_xlabel("layer")
    left.set_ylabel(_effect_unit(record))
    left.set_title("effect per layer (mean over family means), 95% CI band; * argmax", fontsize=9)
    left.legend(fontsize=7, loc="best")
    right.set_xlabel("layer")
    right.set_ylabel("P(argmax = layer)")
    right.set_ylim(0, 1.02)
    right.set_title(f"stratified bootstrap, {BOOTSTRAP} resamples", fontsize=9)
    if notes:
        right.text(0.5, 0.5, "\n".join(notes), ha="center", va="center", fontsize=8, transform=right.transAxes,
                   wrap=True)
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    drawn.pictures.append(Picture(
        f"{record.protocol}: per-layer effect with 95% CI band ({', '.join(sorted(methods))}) and P(argmax = layer) "
        "over stratified bootstrap resamples of the stored per-example effects", _png(fig)))
    if notes:
        drawn.missing += notes


def _effect_unit(record: VerdictRecord) -> str:
    metric = str(record.figures.get("metric") or "")
    if "logit" in metric:
        return "answer-logit drop"
    if record.block == "atlas":
        return "KL(clean ‖ ablated), nats"
    return "effect"


def _outcome_colour(outcome: Any) -> str:
    return OUTCOME_COLOURS.get(str(outcome), "#57606a")


def _reference_lines(ax, delta: Any, vertical: bool = True) -> None:
    line = ax.axvline if vertical else ax.axhline
    line(0.0, color="#57606a", linewidth=0.9)
    if is_number(delta) and delta != 0:
        line(float(delta), color="#bc4c00", linewidth=0.9, linestyle="--")


def _log_ratio_axis(ax, label: str) -> None:
    if label.lower().startswith("log"):
        top = ax.secondary_xaxis("top", functions=(np.exp, lambda r: np.log(np.clip(r, 1e-300, None))))
        top.set_xlabel("ratio = exp(x)", fontsize=7)
        top.tick_params(labelsize=7)


def _greater_panel(ax, e: dict) -> None:
    """Per-family means (dots, individual examples faint) and the decision's CI against 0 and delta."""
    data = e.get("data") or {}
    values = np.asarray(data.get("values") or [], dtype=float)
    groups = [str(g) for g in data.get("groups") or []]
    names = list(dict.fromkeys(groups))
    g = np.asarray(groups)
    for row, name in enumerate(names):
        member = values[g == name]
        ax.plot(member, np.full(len(member), row), "o", color="#8c959f", markersize=3, alpha=0.6)
        ax.plot([member.mean()], [row], "o", color="#24292f", markersize=5)
    bottom = len(names)
    colour = _outcome_colour(e.get("outcome"))
    estimate = e.get("estimate")
    ci = e.get("ci")
    if ci:
        ax.plot(ci, [bottom, bottom], color=colour, linewidth=3.0, solid_capstyle="butt")
    if is_number(estimate):
        ax.plot([estimate], [bottom], "D", color=colour, markersize=7)
    _reference_lines(ax, (e.get("params") or {}).get("delta"))
    ax.set_yticks(range(bottom + 1), [_short(n.replace("_", " "), 22) for n in names] + ["mean over families"],
                  fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=7)
    label = str(e.get("label") or "")
    ax.set_xlabel(_short(label, 80), fontsize=8)
    ci_text = f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "no CI"
    ax.set_title(f"{e.get('outcome')}: {fmt(estimate)} {ci_text}, n {e.get('n')} in {e.get('n_strata')} families",
                 fontsize=8, color=colour)
    _log_ratio_axis(ax, label)


def _controls_panel(ax, e: dict, record: VerdictRecord) -> None:
    details = e.get("details") or {}
    controls = details.get("controls") or {}
    thresholds = details.get("thresholds") or {}
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    rows = [k for k, v in controls.items() if is_number_list(v)]
    for row, kind in enumerate(rows):
        effects = np.asarray(controls[kind], dtype=float)
        ax.plot(effects, row + rng.uniform(-0.15, 0.15, len(effects)), "o", color="#8c959f", markersize=3,
                alpha=0.7)
        if is_number(thresholds.get(kind)):
            ax.plot([thresholds[kind]] * 2, [row - 0.35, row + 0.35], color="#bc4c00", linewidth=2)
    bottom = len(rows)
    direction_ci = details.get("direction_ci")
    effect = next((record.figures[k] for k in ("direction_effect", "mapped_effect")
                   if is_number(record.figures.get(k))), None)
    if direction_ci:
        ax.plot(direction_ci, [bottom, bottom], color="#0969da", linewidth=3.0, solid_capstyle="butt")
    if effect is not None:
        ax.plot([effect], [bottom], "D", color="#0969da", markersize=7)
    labels = [f"{k.replace('_', ' ')} controls ({len(controls[k])})" for k in rows] + ["the direction (95% CI)"]
    ax.set_yticks(range(bottom + 1), labels, fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=7)
    percentile = details.get("percentile")
    ax.set_title(f"controls and their p{fmt(percentile)} thresholds (orange)" if percentile is not None
                 else "controls", fontsize=8)
    ax.set_xlabel("effect on the targets (same metric as the direction)", fontsize=8)


def _greater_picture(record: VerdictRecord, e: dict, drawn: Drawn) -> None:
    plt = _plt()
    data = e.get("data") or {}
    if not data.get("values"):
        drawn.missing.append(f"{record.protocol}: the decision's per-example values are not stored")
        return
    controls = (e.get("details") or {}).get("controls")
    n_groups = len(set(map(str, data.get("groups") or [])))
    height = max(2.2, 0.9 + 0.22 * (n_groups + 1))
    if controls:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, max(height, 2.6)), layout="constrained")
        _controls_panel(left, e, record)
        _greater_panel(right, e)
        caption = (f"{record.protocol}: the stored random / off-target control effects with their percentile "
                   "thresholds and the direction's effect (left); the decision's per-family means and CI against 0 "
                   "and delta (right)")
    else:
        fig, ax = plt.subplots(figsize=(7.5, height), layout="constrained")
        _greater_panel(ax, e)
        caption = (f"{record.protocol}: per-family means (black; examples grey) and the decision's 95% CI "
                   "(coloured by outcome) against 0 and delta (dashed)")
    drawn.pictures.append(Picture(caption, _png(fig)))


def _members_picture(record: VerdictRecord, e: dict, drawn: Drawn) -> None:
    """for_every / differs: one row per member, estimate and CI, Holm's decisions coloured."""
    plt = _plt()
    details = e.get("details") or {}
    estimates = details.get("estimates") or (e.get("estimate") if isinstance(e.get("estimate"), dict) else {})
    cis = details.get("cis") or {}
    if not estimates:
        drawn.missing.append(f"{record.protocol}: no per-member estimates stored")
        return
    holm_for = details.get("holm_for") or details.get("holm") or {}
    holm_against = details.get("holm_against") or details.get("equivalent") or {}
    names = list(estimates)
    fig, ax = plt.subplots(figsize=(7.5, max(2.0, 0.8 + 0.2 * len(names))), layout="constrained")
    without_ci = []
    for row, name in enumerate(names):
        colour = (OUTCOME_COLOURS["for"] if holm_for.get(name) is True else
                  OUTCOME_COLOURS["against"] if holm_against.get(name) is True else OUTCOME_COLOURS["undecided"])
        ci = cis.get(name)
        if ci:
            ax.plot(ci, [row, row], color=colour, linewidth=2.5, solid_capstyle="butt")
        else:
            without_ci.append(name)
        if is_number(estimates[name]):
            ax.plot([estimates[name]], [row], "o", color=colour, markersize=5)
    _reference_lines(ax, (e.get("params") or {}).get("delta"))
    ax.set_yticks(range(len(names)), [_short(n, 26) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(_short(str(e.get("label") or ""), 90), fontsize=8)
    ax.set_title(f"{e.get('primitive')} ({details.get('method', '')}): {e.get('outcome')}; green: decided for, "
                 "red: decided against (Holm), purple: undecided", fontsize=8, color=_outcome_colour(e.get("outcome")))
    drawn.pictures.append(Picture(f"{record.protocol}: every member's estimate and 95% CI against 0 and delta "
                                  "(dashed), coloured by Holm's decision", _png(fig)))
    if without_ci:
        drawn.missing.append(f"{record.protocol}: no CI for {len(without_ci)} member(s) "
                             f"({_short(', '.join(without_ci), 80)}): the sample gives none")


def _draws_picture(record: VerdictRecord, e: dict, drawn: Drawn) -> None:
    """beats_draws: per member (family), our run per training seed (diamond) against its random-matched draws
    (dots), each member on its own axis (losses of different families differ in scale); lower is better."""
    plt = _plt()
    members = (e.get("data") or {}).get("members") or {}
    if not members:
        drawn.missing.append(f"{record.protocol}: no runs stored")
        return
    fig, axes = plt.subplots(len(members), 1, figsize=(7.5, 0.7 + 0.75 * len(members)), layout="constrained",
                             squeeze=False)
    palette = plt.get_cmap("tab10")
    for ax, (name, member) in zip(axes[:, 0], members.items()):
        ours = list(member.get("ours") or [])
        draws = list(member.get("draws") or [])
        for s, (our, theirs) in enumerate(zip(ours, draws)):
            offset = (s - (len(ours) - 1) / 2) * 0.25
            ax.plot(theirs, [offset] * len(theirs), "o", color="#8c959f", markersize=4, alpha=0.8)
            ax.plot([our], [offset], "D", color=palette(s % 10), markersize=7,
                    label=f"ours, training seed {s + 1}")
        ax.set_yticks([0], [_short(str(name).replace("_", " "), 24)], fontsize=7)
        ax.set_ylim(-0.6, 0.6)
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(x=0.15)
    axes[0, 0].set_title(f"beats_draws: {e.get('outcome')}; grey: random-matched draws", fontsize=8,
                         color=_outcome_colour(e.get("outcome")))
    axes[0, 0].legend(fontsize=6, loc="upper right")
    axes[-1, 0].set_xlabel(_short(f"{e.get('label')} (lower is better)", 90), fontsize=8)
    drawn.pictures.append(Picture(f"{record.protocol}: our run per training seed (diamonds) against its "
                                  "random-matched draws (grey), per family", _png(fig)))


def _profiles_picture(record: VerdictRecord, drawn: Drawn, skip: Iterable[str] = ()) -> None:
    """The per-layer lists and per-configuration bars the record stores, one panel per group of like units."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    figures = record.figures
    skip = set(skip)
    panels: list[tuple[str, dict[str, list[float]]]] = []
    for group in PROFILE_GROUPS:
        lines: dict[str, list[float]] = {}
        for name in group:
            value = figures.get(name)
            if name in skip:
                continue
            if is_number_list(value) and len(value) >= 3:
                lines[name] = value
            elif isinstance(value, dict) and value and all(is_number_list(v) for v in value.values()):
                lines.update({f"{name}: {k}": v for k, v in value.items()})
        if lines:
            panels.append(("line", lines))
    for group in BAR_GROUPS:
        bars: dict[str, dict[str, float]] = {}
        for name in group:
            value = figures.get(name)
            if isinstance(value, dict) and len(value) >= 2 and all(is_number(v) for v in value.values()):
                bars[name] = value
        if bars:
            panels.append(("bar", bars))
    if not panels:
        return
    panels = panels[:3]
    fig, axes = plt.subplots(1, len(panels), figsize=(min(10.5, 3.8 * len(panels) + 1.0), 2.6), layout="constrained",
                             squeeze=False)
    palette = plt.get_cmap("tab10")
    for ax, (kind, content) in zip(axes[0], panels):
        if kind == "line":
            for i, (name, values) in enumerate(content.items()):
                ax.plot(range(len(values)), values, marker="o", markersize=2.5, linewidth=1.2, color=palette(i % 10),
                        label=name.replace("_", " "))
            for key, label in LAYER_MARKS:
                if is_number(figures.get(key)) and (key != "layer" or record.block == "steer"):
                    ax.axvline(figures[key], color="#57606a", linestyle=":", linewidth=1)
                    ax.text(figures[key], ax.get_ylim()[1], f" {label}", fontsize=6, va="top", color="#57606a")
            ax.set_xlabel("decile" if any("decile" in n for n in content) else "layer", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            names = list(content)
            keys = list(dict.fromkeys(k for v in content.values() for k in v))
            width = 0.8 / len(names)
            for i, name in enumerate(names):
                xs = np.arange(len(keys)) + (i - (len(names) - 1) / 2) * width
                ax.bar(xs, [content[name].get(k, np.nan) for k in keys], width=width, color=palette(i % 10),
                       label=name.replace("_", " "))
            ax.set_xticks(range(len(keys)), [_short(k.replace("_", " "), 14) for k in keys], rotation=35,
                          ha="right", fontsize=6)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best")
    drawn.pictures.append(Picture(f"{record.protocol}: the per-layer profiles and per-configuration figures the "
                                  "record stores", _png(fig)))


def _missing_notes(record: VerdictRecord) -> list[str]:
    notes = []
    if record.block == "steer" and not any("scale" in k and isinstance(v, (dict, list)) and k.endswith("grid")
                                           for k, v in record.figures.items()):
        notes.append("layer x scale heatmap: the record stores the effect per layer at one scale "
                     "(effect_by_layer / kl_by_layer), not the layer x scale grid")
    return notes


def draw_record(record: VerdictRecord) -> Drawn:
    """Every picture of one record (the deciding one first) and the ones its data cannot give."""
    drawn = Drawn()
    if record.verdict is Verdict.UNTESTED:
        drawn.missing.append(f"nothing measured: {record.reason}")
        return drawn
    evidence = [e for e in record.evidence if isinstance(e, Mapping)]
    if not evidence:
        drawn.missing.append("no stored evidence (decided by a bare rule): no decision picture")
    argmax = [e for e in evidence if e.get("primitive") == "argmax"]
    if argmax:
        _guard(lambda: _argmax_picture(record, argmax, drawn), drawn, "per-layer effect / P(argmax)")
    for e in evidence:
        primitive = e.get("primitive")
        if primitive == "greater":
            _guard(lambda e=e: _greater_picture(record, e, drawn), drawn, str(e.get("label")))
        elif primitive in ("for_every", "differs"):
            _guard(lambda e=e: _members_picture(record, e, drawn), drawn, str(e.get("label")))
        elif primitive == "beats_draws":
            _guard(lambda e=e: _draws_picture(record, e, drawn), drawn, str(e.get("label")))
    _guard(lambda: _profiles_picture(record, drawn, skip=("layer_effects",)), drawn, "profiles")
    drawn.missing += _missing_notes(record)
    return drawn


def _guard(draw: Callable[[], None], drawn: Drawn, what: str) -> None:
    """A picture that fails to draw is a note on the card, never a page that is not written."""
    try:
        draw()
    except Exception as exc:  # noqa: BLE001 - one malformed record must not cost the page
        _plt().close("all")
        drawn.missing.append(f"picture {_short(what, 60)!r} could not be drawn ({type(exc).__name__}: "
                             f"{_short(str(exc), 120)})")


class PictureCache:
    """Records that store the same evidence and figures get the same pictures, drawn once."""

    def __init__(self):
        self._drawn: dict[str, Drawn] = {}

    def draw(self, record: VerdictRecord) -> Drawn:
        key = hashlib.sha256(json.dumps(
            {"verdict": record.verdict.value, "reason": record.reason if record.verdict is Verdict.UNTESTED else "",
             "block": record.block, "protocol": record.protocol, "evidence": record.evidence,
             "figures": record.figures}, sort_keys=True, default=str).encode()).hexdigest()
        if key not in self._drawn:
            self._drawn[key] = draw_record(record)
        return self._drawn[key]


def decisive_png(record: VerdictRecord) -> str | None:
    """The record's deciding picture as base64 PNG (None when it has none): the pytest-html extras use it."""
    drawn = draw_record(record)
    return drawn.pictures[0].png_b64 if drawn.pictures else None


# ------------------------------------------------------------------------------------------------ HTML


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def anchor(claim_id: str, model: str) -> str:
    """The card's id: ``card-<claim>--<model>`` with every other character a dash."""
    return "card-" + re.sub(r"[^A-Za-z0-9_.-]", "-", f"{claim_id}--{model}")


def verdict_badge(verdict: str, href: str | None = None, extra: str = "") -> str:
    tag = f'<a class="v v-{esc(verdict)}" href="{esc(href)}"' if href else f'<span class="v v-{esc(verdict)}"'
    close = "</a>" if href else "</span>"
    return f"{tag} title=\"{esc(verdict)}\">{esc(verdict)}{extra}{close}"


STYLE = """
:root{--fg:#24292f;--muted:#57606a;--line:#d0d7de;--bg:#ffffff;--soft:#f6f8fa}
*{box-sizing:border-box}
body{font:14px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg);margin:0}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--line)}
h3{font-size:16px;margin:0 0 6px}h4{font-size:14px;margin:12px 0 4px}
.muted{color:var(--muted)}.small{font-size:12px}
.banner{border:2px solid #cf222e;background:#ffebe9;padding:8px 12px;border-radius:6px;margin:10px 0}
.v{display:inline-block;padding:1px 6px;border-radius:10px;color:#fff;font-size:11px;font-weight:600;
text-decoration:none;white-space:nowrap}
.v-CONFIRMED{background:#1f883d}.v-REVISED{background:#bc4c00}.v-FAILED{background:#cf222e}
.v-INCONCLUSIVE{background:#8250df}.v-UNTESTED{background:#8c959f}
.v sup{font-size:9px;margin-left:2px}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid var(--line);padding:3px 6px;vertical-align:top}
th{background:var(--soft);text-align:left;font-size:12px}
table.matrix td{text-align:center}table.matrix td.claim{text-align:left;font-weight:600;white-space:nowrap}
table.figs{font-size:12px}table.figs td:first-child{font-family:ui-monospace,monospace;white-space:nowrap}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:16px 0;background:#fff}
.card:target{outline:3px solid #0969da}
.statement{font-style:italic;margin:2px 0 8px}
.protocol{border-top:1px dashed var(--line);margin-top:10px;padding-top:6px}
figure{margin:8px 0}figure img{max-width:100%;height:auto;border:1px solid var(--soft)}
figcaption{font-size:12px;color:var(--muted)}
.nopic{font-size:12px;color:#9a6700;background:#fff8c5;padding:3px 8px;border-radius:4px;margin:4px 0}
ul.evidence{margin:4px 0;padding-left:18px;font-size:13px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
nav a{margin-right:10px}
"""

CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var pictures = document.querySelectorAll('img.pic');
  var loaded = 0;
  for (var i = 0; i < pictures.length; i++) {
    var p = pictures[i];
    if (p.complete && p.naturalWidth > 0) { loaded++; } else { console.error('picture did not load: ' + p.alt); }
  }
  document.body.setAttribute('data-pictures-loaded', loaded + '/' + pictures.length);
});
"""


def _records_sorted(records: Iterable[VerdictRecord], order: Mapping[str, int]):
    from engine.results import summary_rows

    rows = summary_rows(records)
    return sorted(rows, key=lambda row: (order.get(row.claim_id, len(order)), row.claim_id, _model_key(row.model)))


def _model_key(model: str) -> tuple[int, str]:
    return ("+" in model, model)


def _claim_order() -> dict[str, int]:
    """The catalogue's order of claims (blocks as the catalogue lists them); empty when it cannot be read."""
    try:
        from engine.verdicts import load_catalogue

        return {claim.id: i for i, claim in enumerate(load_catalogue())}
    except Exception:  # noqa: BLE001 - the page is drawn from the run file alone when the catalogue fails
        return {}


def decision_marks(records: Iterable[VerdictRecord]) -> dict[int, tuple[str, list[VerdictRecord]]]:
    """id(record) -> (mark ``D<n>``, the other records of its decision) for records sharing one piece of evidence."""
    from engine.results import shared_evidence

    marks: dict[int, tuple[str, list[VerdictRecord]]] = {}
    measured = (r for r in records if r.evidence and r.verdict is not Verdict.UNTESTED)
    groups = [g for g in shared_evidence(measured).values() if len(g) > 1]
    for n, group in enumerate(groups, start=1):
        for r in group:
            marks[id(r)] = (f"D{n}", [o for o in group if o is not r])
    return marks


def verdict_matrix(records: list[VerdictRecord], *, href: Callable[[str, str], str] | None = None,
                   order: Mapping[str, int] | None = None) -> str:
    """The matrix claims x models (seed | rigorous per model), each cell linking to its card (``href``)."""
    from engine.results import protocols_of

    href = href or (lambda claim_id, model: "#" + anchor(claim_id, model))
    order = _claim_order() if order is None else order
    protocols = protocols_of(records)
    models = sorted({r.model for r in records}, key=_model_key)
    marks = decision_marks(records)
    cells: dict[tuple[str, str, str], VerdictRecord] = {}
    for r in records:
        cells.setdefault((r.claim_id, r.model, r.protocol), r)
    claims = sorted({r.claim_id for r in records}, key=lambda c: (order.get(c, len(order)), c))
    out = ['<table class="matrix"><thead><tr><th rowspan="2">claim</th>']
    out += [f'<th colspan="{len(protocols)}">{esc(m)}</th>' for m in models]
    out.append("</tr><tr>")
    out += [f"<th>{esc(p)}</th>" for _ in models for p in protocols]
    out.append("</tr></thead><tbody>")
    for claim_id in claims:
        out.append(f'<tr><td class="claim">{esc(claim_id)}</td>')
        for model in models:
            for protocol in protocols:
                r = cells.get((claim_id, model, protocol))
                if r is None:
                    out.append('<td class="muted">–</td>')
                    continue
                mark, others = marks.get(id(r), ("", []))
                extra = f"<sup>{esc(mark)}</sup>" if mark else ""
                title = (f"{r.verdict.value}: {_short(r.reason, 200)}"
                         + (f" | {mark}: one decision with " + ", ".join(f"{o.claim_id} {o.model} {o.protocol}"
                                                                          for o in others) if mark else ""))
                badge = verdict_badge(r.verdict.value, href(claim_id, model), extra).replace(
                    f'title="{esc(r.verdict.value)}"', f'title="{esc(title)}"', 1)
                out.append(f'<td data-cell="{esc(claim_id)}|{esc(model)}|{esc(protocol)}">{badge}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _figures_table(record: VerdictRecord) -> str:
    rows = []
    for name, value in record.figures.items():
        if isinstance(value, dict):
            if value and len(value) <= 12 and all(is_number(v) or v is None or isinstance(v, str)
                                                  for v in value.values()):
                shown = fmt(value, 300)
            else:
                shown = f"(a table of {len(value)} entries: in claims.json)"
        elif isinstance(value, list) and len(value) > MAX_TABLE_LIST:
            shown = f"(a list of {len(value)}: drawn above / in claims.json)"
        else:
            shown = fmt(value, 300)
        ci = record.ci.get(name)
        ci_text = f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""
        rows.append(f"<tr><td>{esc(name)}</td><td>{esc(shown)}</td><td>{esc(ci_text)}</td></tr>")
    for name, ci in record.ci.items():
        if name not in record.figures:
            rows.append(f"<tr><td>{esc(name)}</td><td></td><td>[{esc(fmt(ci[0]))}, {esc(fmt(ci[1]))}]</td></tr>")
    if not rows:
        return ""
    return ('<details><summary class="small">figures and CIs ('
            f'{len(rows)})</summary><table class="figs"><tr><th>figure</th><th>value</th><th>95% CI</th></tr>'
            + "".join(rows) + "</table></details>")


def _evidence_list(record: VerdictRecord) -> str:
    items = []
    for e in record.evidence:
        part = f"<b>{esc(e.get('part'))}</b>: " if e.get("part") else ""
        outcome = str(e.get("outcome"))
        ci = e.get("ci")
        ci_text = f", 95% CI [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""
        ratio = ""
        if ci and str(e.get("label", "")).lower().startswith("log") and is_number(e.get("estimate")):
            ratio = (f" (ratio {fmt(math.exp(e['estimate']))}, CI [{fmt(math.exp(ci[0]))}, "
                     f"{fmt(math.exp(ci[1]))}])")
        items.append(
            f'<li>{part}<span style="color:{_outcome_colour(outcome)};font-weight:600">{esc(outcome)}</span> '
            f"<span class=\"mono\">{esc(e.get('primitive'))}</span>, n {esc(e.get('n'))} over "
            f"{esc(e.get('n_strata'))} families{esc(ci_text)}{esc(ratio)}: {esc(e.get('statement'))}"
            + (f" <i>Undecided: {esc(e.get('undecided'))}</i>" if e.get("undecided") else "")
            + (f" <span class=\"muted\">(projected n per family to decide: {esc(e.get('n_to_decide'))})</span>"
               if e.get("n_to_decide") else "") + "</li>")
    return f'<ul class="evidence">{"".join(items)}</ul>' if items else ""


def _thresholds(record: VerdictRecord) -> str:
    if not record.thresholds:
        return ""
    rationale = {k[: -len("_rationale")]: v for k, v in record.thresholds.items() if k.endswith("_rationale")}
    rows = [f"<tr><td>{esc(k)}</td><td>{esc(fmt(v, 120))}</td><td class=\"small\">{esc(rationale.get(k, ''))}</td></tr>"
            for k, v in record.thresholds.items() if not k.endswith("_rationale")]
    return ('<table class="figs"><tr><th>threshold</th><th>value</th><th>why</th></tr>' + "".join(rows) + "</table>")


def _protocol_block(record: VerdictRecord, drawn: Drawn, marks, rule: str = "") -> str:
    out = [f'<div class="protocol" data-protocol="{esc(record.protocol)}">',
           f"<h4>{esc(record.protocol)} protocol {verdict_badge(record.verdict.value)}</h4>",
           f"<p>{esc(record.reason)}.</p>"]
    mark, others = marks.get(id(record), ("", []))
    if mark:
        links = ", ".join(f'<a href="#{esc(anchor(o.claim_id, o.model))}">{esc(o.claim_id)} {esc(o.model)} '
                          f"{esc(o.protocol)}</a>" for o in others)
        out.append(f'<p class="small">Decision <b>{esc(mark)}</b>: the same evidence as {links} (one decision, '
                   "counted once).</p>")
    if record.verdict is not Verdict.UNTESTED:
        if record.expectation != rule:
            out.append(f"<p class=\"small\">Expectation: {esc(record.expectation)}</p>")
        out.append(_evidence_list(record))
        if record.verdict is Verdict.INCONCLUSIVE:
            out.append("<p class=\"small\"><b>What would decide it:</b> "
                       + (f"~{esc(record.n_to_decide)} examples per family (a power projection from the observed "
                          "variance)." if record.n_to_decide else "no projection (see the reason above).") + "</p>")
        out.append(_figures_table(record))
    card_key = f"{record.claim_id}|{record.model}|{record.protocol}"
    for picture in drawn.pictures:
        out.append(f'<figure><img class="pic" data-for="{esc(card_key)}" alt="{esc(card_key)}: '
                   f'{esc(picture.caption)}" src="{picture.data_uri}"><figcaption>{esc(picture.caption)}'
                   "</figcaption></figure>")
    for note in drawn.missing:
        out.append(f'<p class="nopic" data-for="{esc(card_key)}">Not drawn: {esc(note)}</p>')
    provenance = [f"plan {record.plan}" if record.plan else "", f"seeds {', '.join(map(str, record.seeds))}"
                  if record.seeds else "", f"suite {record.suite_hash}" if record.suite_hash else "",
                  f"{record.duration_s:.1f} s", f"commit {record.git_commit}", f"test {record.test}"]
    out.append(f'<p class="small muted">{esc("; ".join(p for p in provenance if p))}</p>')
    if record.notes:
        out.append(f'<p class="small muted">{esc(record.notes)}</p>')
    out.append("</div>")
    return "".join(out)


def _card(row, cache: PictureCache, marks) -> str:
    first = next(iter(row.by_protocol.values()))
    badges = " ".join(f"{esc(p)} {verdict_badge(r.verdict.value)}" for p, r in row.by_protocol.items())
    rule = next((r.expectation for r in row.by_protocol.values() if r.verdict is not Verdict.UNTESTED),
                first.expectation)
    out = [f'<section class="card" id="{esc(anchor(row.claim_id, row.model))}" data-card="{esc(row.claim_id)}|'
           f'{esc(row.model)}">',
           f"<h3>{esc(row.claim_id)} · {esc(row.model)} <span class=\"muted small\">({esc(row.tier)} tier, "
           f"{esc(first.block)} block)</span> {badges}</h3>",
           f'<p class="statement">{esc(first.statement)}</p>',
           f'<p class="small"><b>Rule:</b> {esc(rule)}</p>']
    with_thresholds = next((r for r in row.by_protocol.values() if r.thresholds), None)
    if with_thresholds is not None:
        out.append(f"<details><summary class=\"small\">thresholds ({len(with_thresholds.thresholds)})</summary>"
                   f"{_thresholds(with_thresholds)}</details>")
    for record in row.by_protocol.values():
        out.append(_protocol_block(record, cache.draw(record), marks, rule))
    out.append('<p class="small"><a href="#matrix">back to the matrix</a></p></section>')
    return "".join(out)


def _changes(run) -> str:
    from engine.results import gate_table

    meta = run.meta
    gate_meta = meta.get("gate") or {}
    out = ['<h2 id="changes">Changes since the pinned baseline</h2>']
    if meta.get("baseline_updated"):
        out.append("<p>Baselines were re-pinned by this run (<code>--claims-update-baseline</code>).</p>")
    if gate_meta:
        outcome = "passed" if gate_meta.get("passed") else "did not pass"
        commits = ", ".join(gate_meta.get("commits", []))
        out.append(f"<p>Gate (plan {esc(gate_meta.get('plan'))}, pinned at {esc(commits)}): "
                   f"{esc(gate_meta.get('compared'))} of {esc(gate_meta.get('expected'))} pinned record(s) compared, "
                   f"{esc(gate_meta.get('gated'))} gated figure(s), {esc(gate_meta.get('reported_only'))} "
                   f"reported-only; <b>{outcome}</b>.</p>")
    missing = [tuple(k) for k in gate_meta.get("missing", [])]
    not_pinned = [tuple(k) for k in gate_meta.get("not_pinned", [])]
    if run.changes or missing or not_pinned:
        header, rows = gate_table(run.changes, missing, not_pinned)
        out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        for cells in rows:
            out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
        out.append("</table>")
    elif gate_meta:
        out.append("<p>None: no verdict flipped and no figure moved beyond its tolerance.</p>")
    else:
        out.append(f"<p>No baseline was compared in this run (no pinned baselines of plan "
                   f"{esc(meta.get('plan', '?'))} were found): nothing to show.</p>")
    out += [f'<p class="small">flag: {esc(flag)}</p>' for flag in gate_meta.get("flags", [])]
    return "".join(out)


def _provenance(run) -> str:
    meta = run.meta
    rows = []
    for key in ("run", "git_commit", "engine_version", "engine_code", "started", "duration_s", "plan", "catalogue",
                "exit_status", "torch_threads", "python", "platform", "machine", "cpu_count"):
        if key in meta:
            rows.append(f"<tr><td>{esc(key)}</td><td>{esc(meta[key])}</td></tr>")
    if meta.get("args") is not None:
        rows.append(f"<tr><td>args</td><td><code>{esc(' '.join(meta['args']))}</code></td></tr>")
    for name, version in (meta.get("packages") or {}).items():
        rows.append(f"<tr><td>package {esc(name)}</td><td>{esc(version)}</td></tr>")
    catalogues = sorted({r.catalogue_sha256[:12] for r in run.records if r.catalogue_sha256})
    if catalogues:
        rows.append(f"<tr><td>catalogue sha256</td><td>{esc(', '.join(catalogues))}</td></tr>")
    return ('<h2 id="provenance">Provenance</h2><table class="figs">' + "".join(rows) + "</table>")


def render_page(run, *, title: str | None = None) -> str:
    """The whole page of ``run`` (an :class:`engine.results.Run`) as one self-contained HTML string."""
    from engine.results import decision_summary

    meta = run.meta
    counts = run.counts()
    order = _claim_order()
    marks = decision_marks(run.records)
    cache = PictureCache()
    title = title or f"MI-Atlas claims run {run.name}"
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{esc(title)}</title><style>{STYLE}</style></head>')
    state = "incomplete" if meta.get("incomplete") or meta.get("interrupted") else "complete"
    body = [f'<body data-run="{esc(run.name)}" data-state="{state}"><main>', f"<h1>{esc(title)}</h1>",
            f'<p class="muted">Commit <code>{esc(meta.get("git_commit", "?"))}</code>, engine '
            f'{esc(meta.get("engine_version", "?"))}, plan {esc(meta.get("plan", "?"))}, started '
            f'{esc(meta.get("started", "?"))}, {esc(meta.get("duration_s", "?"))} s.</p>']
    if meta.get("interrupted"):
        body.append('<div class="banner" id="incomplete"><b>Interrupted run</b>: it ended before writing claims.json; '
                    "these are the verdicts it had appended to the registry, without a baseline comparison.</div>")
    if meta.get("incomplete"):
        why = "; ".join(map(str, meta.get("incomplete_reasons") or [])) or "it did not finish cleanly"
        body.append(f'<div class="banner" id="incomplete"><b>Incomplete run</b> ({esc(why)}): these are the verdicts '
                    "it made before it ended; <code>latest</code> was not moved to it and "
                    "<code>mi-atlas baselines pin</code> refuses it.</div>")
    body.append("<nav class=\"small\"><a href=\"#changes\">changes</a><a href=\"#matrix\">matrix</a>"
                "<a href=\"#claims\">claims</a><a href=\"#provenance\">provenance</a></nav>")
    body.append("<p>" + " ".join(f"{verdict_badge(v)} {n}" for v, n in counts.items()) + " records (claim x model x "
                f"protocol).</p><p class=\"small\">{esc(decision_summary(run.records))}.</p>")
    body.append(_changes(run))
    body.append('<h2 id="matrix">Verdicts</h2><p class="small muted">Each cell links to its card; '
                "<sup>D<i>n</i></sup>: records that share one piece of evidence (one decision, counted once).</p>")
    body.append(verdict_matrix(run.records, order=order))
    body.append('<h2 id="claims">Claims</h2><p class="small muted">Pictures are drawn from what each record stores in '
                "claims.json. Sequential looks: a staged record stores each look's outcome (its <code>looks</code> "
                "figure: stages per family, the look it stopped at, the level), listed with its figures, not "
                "drawn.</p>")
    for row in _records_sorted(run.records, order):
        body.append(_card(row, cache, marks))
    body.append(_provenance(run))
    body.append(f"</main><script>{CHECK_SCRIPT}</script></body></html>")
    return head + "".join(body) + "\n"


def write_page(run_dir: str | Path, run) -> Path:
    """Render and write ``run_dir/report.html`` atomically; returns the path."""
    from engine.files import write_atomic

    path = Path(run_dir) / PAGE_FILE
    write_atomic(path, render_page(run))
    return path


def write_page_quietly(run_dir: str | Path, run) -> list[str]:
    """:func:`write_page` for ``engine.results.write_run``'s ``finally``: a problem is one line, never raised."""
    try:
        write_page(run_dir, run)
        return []
    except Exception as exc:  # noqa: BLE001 - the run's other files are written whatever happens here
        lines = str(exc).strip().splitlines()
        return [f"{Path(run_dir) / PAGE_FILE}: not written ({type(exc).__name__}: {lines[0][:300] if lines else ''})"]


__all__ = ["PAGE_FILE", "render_page", "write_page", "write_page_quietly", "verdict_matrix", "draw_record",
           "decisive_png", "anchor", "Picture", "Drawn", "PictureCache", "STYLE", "COLOURS"]
