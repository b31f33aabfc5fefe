"""``build_report``: the Markdown + HTML report of a run directory or a comparison directory.

Writes ``<path>/report/``: PNG figures, ``report.md`` (tables, image links) and ``report.html``
(self-contained). The acceleration table comes first.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from cropi.report import figures
from cropi.report.acceleration import describe_smoothing, smooth
from cropi.report.render import Document, Heading, Image, Paragraph, Table, to_html, to_markdown
from cropi.report.runs import Comparison, RunData, load_any, score_stats_from_table, time_breakdown
from cropi.report.selection_analysis import analysis_section
from cropi.report.stats import Panel, bootstrap, comparison_panel, final_diff_t
from cropi.report.summary import (
    ACCEL_HEADERS,
    FORMAT_HEADERS,
    PAIR_HEADERS,
    STATS_HEADERS,
    ArmSummary,
    acceleration_rows,
    format_rows,
    pairwise_rows,
    statistics_rows,
    summarize,
    time_rows,
)
from cropi.utils.io import atomic_write_json, atomic_write_text, disk_errors

log = logging.getLogger(__name__)

DETAIL_ARM = "cropi"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _a_star(summaries: list[ArmSummary], baseline: str | None) -> tuple[float, int] | None:
    for s in summaries:
        if s.arm == baseline and s.accel is not None:
            return s.accel["a_star"], s.accel["s_base"]
    return None


def _intro(doc: Document, cmp: Comparison, summaries: list[ArmSummary],
           smooth_kw: dict[str, Any]) -> None:
    """What was compared, how curves are smoothed, and the acceleration table."""
    if cmp.single_run:
        doc.add(Paragraph(f"Single run {cmp.path}: no baseline, so no acceleration."))
    else:
        meta = cmp.meta
        doc.add(Paragraph(f"Comparison {cmp.path}: arms {', '.join(cmp.arms)}; baseline "
                          f"{cmp.baseline or 'missing'}; {meta.get('steps', '?')} steps, eval "
                          f"every {meta.get('eval_every', '?')}."))
    doc.add(Heading("Step-level acceleration"))
    doc.add(Table(ACCEL_HEADERS, acceleration_rows(summaries)))
    star = _a_star(summaries, cmp.baseline)
    note = (f"a* = {star[0]:.4f}: the baseline ({cmp.baseline}) seed-mean final smoothed targeted "
            f"accuracy, first reached by the baseline at step {star[1]}. " if star else "")
    doc.add(Paragraph(
        note + "Acceleration = (baseline's first step reaching a*) / (arm's first step reaching "
        "a*), on seed-mean targeted curves; per seed: each seed's curve against the same baseline "
        "seed-mean. '< 1 (gap g)': the arm never reaches a* (g = a* - its best smoothed "
        "accuracy); 'reached at step 0': the arm starts at or above a*, no ratio. Smoothing: "
        f"{describe_smoothing(**smooth_kw)}. Final accuracies are raw (unsmoothed) last evals."))


def _statistics_section(doc: Document, cmp: Comparison, panel: Panel | None,
                        boot: dict[str, Any] | None, out: Path) -> None:
    """Area, probability of improvement and accelerations with bootstrap intervals; the
    wall-clock figure; format vs skill."""
    if panel is None or boot is None or cmp.baseline is None:
        return
    doc.add(Heading("Statistics (95 % intervals)"))
    doc.add(Table(STATS_HEADERS, statistics_rows(boot, cmp.baseline)))
    doc.add(Paragraph(
        f"Hierarchical bootstrap ({boot['n_boot']} replicates, percentile intervals): resampled "
        f"{boot['resampled']} ({boot['n_seeds']} paired seeds"
        + (f", {boot['n_items']} targeted test items resampled within their set, the same draw "
           "for every arm, seed and step" if boot["n_items"] else "") + "). "
        "Area: trapezoid area under the raw targeted accuracy curve divided by the step range "
        f"(steps {panel.steps[0]}-{panel.steps[-1]}); Δ area: arm minus {cmp.baseline}, seed "
        "means. Paired t: the t interval of the per-seed area differences (scipy.stats.ttest_1samp), "
        "which with few seeds covers better than the percentile interval. P(improvement): the "
        f"share of paired seeds on which the arm's area beats {cmp.baseline}'s (ties count 1/2). "
        "Acceleration: on the replicate's seed-mean curves, smoothed as above; '< 1' bounds come "
        "from replicates in which the arm never reaches a* ('never': their share). Wall-clock: "
        "the same first steps converted to seconds of work (beta's rollouts and influence "
        "scoring counted for the arms that use them, evaluation excluded for every arm)."
        + (f" Note: {boot['note']}." if boot["note"] else "")
        + " Method: docs/acceleration.md#statistics."))
    pairs = pairwise_rows(boot, cmp.baseline)
    if pairs:
        doc.add(Heading("Every two arms (paired t, 95 %)"))
        doc.add(Table(PAIR_HEADERS, pairs))
        doc.add(Paragraph(
            "Δ targeted area: the row's arm minus the other, per seed, with the t interval over the "
            f"paired seeds. Δ final untargeted (against {cmp.baseline} only): the untargeted "
            "accuracy at the last step (they are evaluated at stage ends), arm minus "
            f"{cmp.baseline}, paired by seed. An interval that contains 0 is no difference measured."))
    if panel.clock is not None:
        acc = panel.accuracy().mean(axis=1)
        clock = panel.clock.mean(axis=1)
        path = figures.wallclock_figure(out / "accuracy_wallclock.png",
                                        {arm: (clock[a], acc[a]) for a, arm in enumerate(panel.arms)},
                                        boot.get("a_star"), order=list(cmp.arms))
        doc.add(Image(path, "targeted accuracy vs wall-clock work") if path else None)
    rows = format_rows(cmp)
    if rows is not None:
        doc.add(Heading("Format vs skill"))
        doc.add(Table(FORMAT_HEADERS, rows))
        doc.add(Paragraph("Strict-format share: completions whose final answer is stated in the "
                          "form the prompt asks for (strict extraction), seed means. A rise in "
                          "accuracy that follows the format share is elicitation rather than skill. "
                          "Majority-answer baseline: the accuracy of always giving the targeted "
                          "sets' most common gold answer; modal-answer share: the items that got "
                          "the answer the policy gives most often (set means). An accuracy near the "
                          "baseline with a modal share near 1 is a policy that collapsed onto one "
                          "answer."))


def _accuracy_section(doc: Document, cmp: Comparison, summaries: list[ArmSummary], out: Path,
                      smooth_kw: dict[str, Any], boot: dict[str, Any] | None = None) -> None:
    star = _a_star(summaries, cmp.baseline)
    if star is not None:
        names = [s.arm for s in summaries if s.accel is not None]
        steps = [s.accel["s_arm"] for s in summaries if s.accel is not None]
        labels = [s.accel["label"] for s in summaries if s.accel is not None]
        path = figures.steps_figure(out / "steps_to_a_star.png", names, steps, labels)
        doc.add(Image(path, "steps to reach a*") if path else None)
    doc.add(Heading("Accuracy"))
    for key in ("targeted", "untargeted"):
        curves = {arm: [r.curve(key) for r in runs] for arm, runs in cmp.arms.items()}
        bands = ({arm: r["band"] for arm, r in boot["arms"].items()}
                 if boot is not None and key == "targeted" else None)
        path = figures.accuracy_figure(out / f"accuracy_{key}.png", key, curves, smooth_kw,
                                       star[0] if star and key == "targeted" else None, bands)
        doc.add(Image(path, f"{key} accuracy") if path else
                Paragraph(f"No {key} evaluation in metrics.jsonl."))


def _overlaps(run: RunData) -> list[tuple[int, float]]:
    """(stage, overlap fraction with the previous stage's selection) for stages that have one."""
    out, previous = [], None
    for stage in run.stages:
        sel = stage.selection
        if sel is None:
            previous = None
            continue
        over = (sel.get("stats") or {}).get("overlap_previous")
        if isinstance(over, dict) and over.get("fraction") is not None:
            out.append((stage.index, float(over["fraction"])))
        elif previous is not None and sel["ids"]:
            out.append((stage.index, len(set(sel["ids"]) & set(previous)) / len(sel["ids"])))
        previous = sel["ids"]
    return out


def _stage_figures(doc: Document, run: RunData, out: Path) -> None:
    """Composition, pass-rate and score histograms of each stage's selection."""
    prefix = _slug(run.arm) + (f"_seed{run.seed}" if run.seed is not None else "")
    for stage in run.stages:
        if stage.selection is None:
            continue
        stats = stage.selection.get("stats") or {}
        doc.add(Heading(f"Stage {stage.index}: {stage.selection.get('policy')}, "
                        f"{stage.selection.get('n_selected', len(stage.selection['ids']))} of "
                        f"{stats.get('n_pool', '?')} prompts", level=3))
        base = out / f"{prefix}_stage_{stage.index:03d}"
        path = figures.composition_figure(Path(f"{base}_composition.png"), stage.index, stats)
        doc.add(Image(path, f"stage {stage.index} composition") if path else None)
        path = figures.histogram_figure(Path(f"{base}_pass_rate.png"),
                                        f"stage {stage.index}: beta pass rate",
                                        stats.get("pass_rate"), "pass rate of beta")
        doc.add(Image(path, f"stage {stage.index} pass rate") if path else None)
        score = stats.get("score")
        if score is None and stage.scores_path is not None:
            score = score_stats_from_table(stage.scores_path, stage.selection["ids"],
                                           stage.selection.get("fusion", "rrf"))
        path = figures.histogram_figure(Path(f"{base}_score.png"),
                                        f"stage {stage.index}: fused score", score, "fused score")
        doc.add(Image(path, f"stage {stage.index} score") if path else None)


def _detail_run(cmp: Comparison) -> RunData:
    arms = list(cmp.arms)
    arm = DETAIL_ARM if DETAIL_ARM in cmp.arms else next(
        (a for a in arms if a != cmp.baseline), arms[0])
    return cmp.arms[arm][0]


def _detail_section(doc: Document, cmp: Comparison, out: Path) -> None:
    """Time table of every arm; selections, overlap and time of the detailed run."""
    doc.add(Heading("Time (seconds, mean over seeds)"))
    headers, rows = time_rows(cmp)
    doc.add(Table(headers, rows))
    doc.add(Paragraph("Training excludes the evaluations run during it (those are under "
                      "evaluation), so total = rollouts + scoring + training + evaluation."))
    run = _detail_run(cmp)
    seed = f", seed {run.seed}" if run.seed is not None else ""
    doc.add(Heading(f"Stages of {run.arm}{seed}"))
    prefix = _slug(run.arm) + (f"_seed{run.seed}" if run.seed is not None else "")
    path = figures.time_figure(out / f"{prefix}_time.png", time_breakdown(run.records))
    doc.add(Image(path, "time breakdown") if path else None)
    path = figures.overlap_figure(out / f"{prefix}_overlap.png", _overlaps(run))
    doc.add(Image(path, "overlap between consecutive stages") if path else None)
    if not any(s.selection for s in run.stages):
        doc.add(Paragraph("No stage has a selection.json."))
    _stage_figures(doc, run, out)
    analysis_section(doc, run, out, prefix)


SETTINGS = ("model.path", "data.suite", "data.pool", "data.targets", "data.tests", "rollout.k_pool",
            "rollout.k_target", "rollout.temperature", "rollout.max_new_tokens", "gradient.params",
            "projection.kind", "projection.k", "score.scorer", "score.fusion", "select.policy",
            "select.ratio", "curriculum.stages", "train.steps_per_stage", "train.prompts_per_step",
            "train.samples_per_prompt", "train.learning_rate", "eval.max_items")
"""Config keys the report shows, read from the run's own config.yaml."""


def _settings_section(doc: Document, path: Path) -> None:
    """The settings the run (or comparison) was made with, from its own config.yaml."""
    config = path / "config.yaml"
    if not config.is_file():
        return
    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    rows = []
    for key in SETTINGS:
        section, name = key.split(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            rows.append([key, str(data[section][name])])
    doc.add(Heading("Settings"))
    doc.add(Paragraph(f"From {config} (arms of a comparison differ only in policy and seed)."))
    doc.add(Table(["key", "value"], rows))


def build_report(path: str | Path, out: str | Path | None = None, *, n_boot: int = 2000,
                 boot_seed: int = 0, **smooth_kw: Any) -> Path:
    """Build the report of a run or comparison directory; returns the report folder.

    ``out`` defaults to ``<path>/report``. ``smooth_kw`` go to :func:`cropi.report.smooth`
    (default: EMA, alpha 0.5), the same for every curve. Writes PNGs, ``report.md`` and
    ``report.html`` (self-contained), each atomically, and for a comparison
    ``statistics.json`` (:func:`cropi.report.stats.bootstrap` with ``n_boot`` replicates,
    ``boot_seed``; 0 replicates: no statistics).
    """
    path = Path(path)
    smooth([0], [0.0], **smooth_kw)  # reject bad smoothing arguments before any work
    cmp = load_any(path)
    out = Path(out) if out is not None else path / "report"
    with disk_errors(out, "the report"):  # every file is atomic; a full disk is one line
        return _write_report(path, out, cmp, n_boot, boot_seed, smooth_kw)


def _write_report(path: Path, out: Path, cmp: Comparison, n_boot: int, boot_seed: int,
                  smooth_kw: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(cmp, smooth_kw)
    panel = comparison_panel(cmp) if n_boot > 0 else None
    boot = None
    if panel is not None and cmp.baseline is not None:
        boot = bootstrap(panel, cmp.baseline, n_boot=n_boot, seed=boot_seed, smooth_kw=smooth_kw)
        untargeted = comparison_panel(cmp, "untargeted")
        if untargeted is not None:
            boot["untargeted_final_diff_t"] = final_diff_t(untargeted, cmp.baseline)
        atomic_write_json(out / "statistics.json", boot)
    doc = Document(title=f"cropi report: {path.resolve().name}")
    _intro(doc, cmp, summaries, smooth_kw)
    _statistics_section(doc, cmp, panel, boot, out)
    _settings_section(doc, path)
    _accuracy_section(doc, cmp, summaries, out, smooth_kw, boot)
    if cmp.arms:
        _detail_section(doc, cmp, out)
    atomic_write_text(out / "report.md", to_markdown(doc, out))
    atomic_write_text(out / "report.html", to_html(doc))
    log.info("wrote the report of %s to %s", path, out)
    return out
