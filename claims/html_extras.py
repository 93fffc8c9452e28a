"""pytest-html extras for claim tests: ``pytest claims --html=FILE`` shows each claim test's verdicts and its
deciding picture on its row, and the verdict matrix in the summary.

Registered from the root ``conftest.py`` (``pytest_plugins``), next to ``claims.plugin``. Inert unless pytest-html
is installed and ``--html`` is given: nothing is drawn, no extra is attached and no pytest-html hook is registered
(``pytest_html_results_summary`` is an optional hook, on an object registered only then).

* ``pytest_runtest_makereport`` (a wrapper around ``claims.plugin``'s, which puts the test's new verdict records on
  the report as ``claim_records``): for a report that carries records, ``report.extras`` gets one HTML extra (the
  verdict per protocol, the reason, the key figure, the decisions' statements) and one PNG extra per measured
  record (its deciding picture, :func:`engine.report_html.decisive_png`). Extras are plain dicts, so they travel
  with the report from an xdist worker to the controller that writes the HTML file.
* :class:`MatrixSummary` (registered on the controller when ``--html`` is given) collects the records of every
  report and, in ``pytest_html_results_summary``, gives the summary the verdict matrix (claims x models, seed |
  rigorous, the five outcomes coloured, records sharing one decision marked) and the run's decision line.

A picture or matrix that cannot be drawn is one line in its place, never a failed test or session.
"""

from __future__ import annotations

import html
import json

import pytest


def _active(config: pytest.Config) -> bool:
    """pytest-html is installed and asked for (``--html``)."""
    return bool(config.getoption("htmlpath", default=None)) and config.pluginmanager.hasplugin("html")


def _records(report) -> list:
    from engine.verdicts import VerdictRecord

    return [VerdictRecord.from_dict(json.loads(text)) for text in getattr(report, "claim_records", None) or ()]


def row_html(records) -> str:
    """The verdicts of one test's records as a small HTML table (protocol, verdict, reason, key figure)."""
    from engine.report_html import STYLE, verdict_badge
    from engine.verdicts import fmt

    rows = []
    for r in records:
        figure = f"{r.key} = {fmt(r.measured, 80)}" if r.key and r.key in r.figures else ""
        statements = "".join(f"<li>{html.escape(str(e.get('statement', '')))}</li>" for e in r.evidence)
        rows.append(f"<tr><td>{html.escape(r.claim_id)} {html.escape(r.model)}</td><td>{html.escape(r.protocol)}"
                    f"</td><td>{verdict_badge(r.verdict.value)}</td><td>{html.escape(r.reason)}"
                    + (f"<ul>{statements}</ul>" if statements else "")
                    + (f"<br><i>projected n per family to decide: {r.n_to_decide}</i>" if r.n_to_decide else "")
                    + f"</td><td>{html.escape(figure)}</td></tr>")
    return (f"<style>{_scoped_style(STYLE)}</style><div class=\"mi-atlas\"><table><tr><th>claim</th><th>protocol"
            "</th><th>verdict</th><th>why</th><th>key figure</th></tr>" + "".join(rows) + "</table></div>")


def _scoped_style(style: str) -> str:
    """The page's verdict badge styles only (pytest-html keeps its own look for the rest)."""
    keep = [line for line in style.splitlines() if line.startswith((".v", "text-decoration:none"))]
    return "\n".join(keep)


def extras_for(records) -> list[dict]:
    """pytest-html extras for one report's records: the verdict table, then one deciding picture per record."""
    from pytest_html import extras

    from engine.report_html import decisive_png
    from engine.verdicts import Verdict

    out = [extras.html(row_html(records))]
    for r in records:
        if r.verdict is Verdict.UNTESTED:
            continue
        try:
            png = decisive_png(r)
        except Exception as exc:  # noqa: BLE001 - a picture that cannot be drawn is a line, not a failed test
            out.append(extras.html(f"<p>{html.escape(r.claim_id)} {html.escape(r.protocol)}: picture not drawn "
                                   f"({html.escape(type(exc).__name__)}: {html.escape(str(exc)[:200])})</p>"))
            continue
        if png:
            out.append(extras.png(png, name=f"{r.claim_id} {r.model} {r.protocol}: {r.verdict.value}"))
    return out


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if _active(item.config):
        records = _records(report)
        if records:
            report.extras = list(getattr(report, "extras", None) or []) + extras_for(records)
    return report


class MatrixSummary:
    """Controller-side: the records of every report (from every worker), the verdict matrix in the summary."""

    def __init__(self):
        self.records: list = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.records.extend(_records(report))

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix, summary, postfix, session):  # noqa: ARG002 - pytest-html's names
        if not self.records:
            return
        try:
            from engine.report_html import STYLE, verdict_matrix
            from engine.results import decision_summary

            matrix = verdict_matrix(self.records, href=lambda claim_id, model: "#results-table")
            prefix.append(f"<style>{_scoped_style(STYLE)}\n.mi-atlas td,.mi-atlas th{{border:1px solid #d0d7de;"
                          f"padding:2px 5px}}</style><div class=\"mi-atlas\"><h3>MI-Atlas verdicts</h3>{matrix}"
                          f"<p>{html.escape(decision_summary(self.records))}</p></div>")
        except Exception as exc:  # noqa: BLE001 - the summary is information; the report is written regardless
            prefix.append(f"<p>MI-Atlas verdict matrix not drawn ({html.escape(type(exc).__name__)}: "
                          f"{html.escape(str(exc)[:200])})</p>")


def pytest_configure(config: pytest.Config) -> None:
    if _active(config) and not hasattr(config, "workerinput"):
        config.pluginmanager.register(MatrixSummary(), "mi-atlas-html-summary")
