"""The report's section on what each stage's selection picks (``selection.json``'s
``stats.analysis``, :mod:`cropi.select.analysis`): a table and a figure per stage, and the
difficulty of the selections across stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cropi.report import figures
from cropi.report.render import Document, Heading, Image, Paragraph, Table
from cropi.report.runs import RunData
from cropi.select.analysis import measure_order

ANALYSIS_HEADERS = ["measure", "selected [95 % CI]", "with gradient", "selected - with gradient [95 % CI], p",
                    "random picks (95 %)", "pool", "selected - pool [95 % CI], p"]
TREND_HEADERS = ["stage", "policy", "n", "beta pass rate (selected / with gradient)",
                 "current pass rate (selected / with gradient)", "level (selected / with gradient)",
                 "beta NLL per token (selected / with gradient)"]


def _diff(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    return f"{c['diff']:+.3f} [{c['diff_lo']:+.3f}, {c['diff_hi']:+.3f}], p = {c['p']:.3g}"


def analysis_rows(analysis: dict[str, Any]) -> list[list[str]]:
    """One row per measure (:data:`ANALYSIS_HEADERS`): the selection's mean [bootstrap interval],
    the prompts with a gradient, the difference with its p-value, where random picks from them
    land, the pool and the difference with it."""
    rows = []
    measures = analysis.get("measures", {})
    for name in measure_order(list(measures)):
        row = measures[name]
        g, p = row.get("gradient"), row.get("pool")
        ref = g or p
        if ref is None:
            continue
        rows.append([name, f"{ref['selected']:.3f} [{ref['selected_lo']:.3f}, {ref['selected_hi']:.3f}]",
                     "-" if g is None else f"{g['group']:.3f}", _diff(g),
                     "-" if g is None else f"[{g['random_lo']:.3f}, {g['random_hi']:.3f}]",
                     "-" if p is None else f"{p['group']:.3f}", _diff(p)])
    return rows


def _pair(analysis: dict[str, Any], name: str) -> str:
    g = analysis.get("measures", {}).get(name, {}).get("gradient")
    return "-" if g is None else f"{g['selected']:.3f} / {g['group']:.3f}" + (" *" if g["p"] < 0.05 else "")


def trend_rows(run: RunData) -> list[list[str]]:
    """Per stage with an analysis (:data:`TREND_HEADERS`): the difficulty of its selection."""
    rows = []
    for stage in run.stages:
        sel = stage.selection
        analysis = ((sel or {}).get("stats") or {}).get("analysis")
        if not analysis:
            continue
        rows.append([str(stage.index), str(sel.get("policy")), str(sel.get("n_selected", len(sel["ids"]))),
                     _pair(analysis, "pass_rate_beta"), _pair(analysis, "pass_rate_current"),
                     _pair(analysis, "level"), _pair(analysis, "entropy_beta")])
    return rows


def analysis_section(doc: Document, run: RunData, out: Path, prefix: str) -> None:
    """Per stage: the analysis table, its figure and notes; then the difficulty across stages.
    Nothing when no stage's selection.json has an analysis (made with ``select.analysis`` off,
    or by an earlier cropi)."""
    stages = [s for s in run.stages if s.selection and (s.selection.get("stats") or {}).get("analysis")]
    if not stages:
        return
    doc.add(Heading("What the selection picks"))
    first = stages[0].selection["stats"]["analysis"]  # type: ignore[index]
    doc.add(Paragraph(
        "Each stage's selection against the pool prompts with a gradient (mixed rewards under beta: "
        "every influence pick has one, so against the whole pool entropy and pass rate differ by "
        "construction) and against the whole pool. Method: " + first["method"] + ". "
        + " ".join(f"{k} (/target): {v}." if k.startswith("similarity") else f"{k}: {v}."
                   for k, v in first.get("definitions", {}).items())))
    for stage in stages:
        analysis = stage.selection["stats"]["analysis"]  # type: ignore[index]
        doc.add(Heading(f"Stage {stage.index}: {stage.selection.get('policy')} "  # type: ignore[union-attr]
                        f"({analysis['n_gradient']} of {analysis['n_pool']} prompts with a gradient)", level=3))
        doc.add(Table(ANALYSIS_HEADERS, analysis_rows(analysis)))
        measures = analysis.get("measures", {})
        path = figures.analysis_figure(out / f"{prefix}_stage_{stage.index:03d}_analysis.png", stage.index,
                                       {k: measures[k] for k in measure_order(list(measures))})
        doc.add(Image(path, f"stage {stage.index}: what the selection picks") if path else None)
        notes = analysis.get("notes") or {}
        if notes:
            doc.add(Paragraph(" ".join(f"{k}: {v}." for k, v in notes.items())))
    doc.add(Heading("Difficulty across stages", level=3))
    doc.add(Table(TREND_HEADERS, trend_rows(run)))
    doc.add(Paragraph("Means over the selected prompts / over the pool prompts with a gradient (* p < 0.05 "
                      "against random picks from them). The current pass rate is the stage's policy's on "
                      "beta's stored responses (self-normalised importance weights; measured where the "
                      "stage re-sampled a prompt), known from stage 1 on when the stage measured drift; "
                      "the GRPO groups' rewards are logged only as means (metrics.jsonl train_log). The "
                      "level is the number in ordinal level labels (L1, d2, ...), absent for categorical "
                      "ones."))


__all__ = ["ANALYSIS_HEADERS", "TREND_HEADERS", "analysis_rows", "analysis_section", "trend_rows"]
