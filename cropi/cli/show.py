"""Tables the commands print (rich)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from cropi.cli.common import console


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_pass_rates(sets: dict[str, list[Any]]) -> None:
    from cropi.curriculum.phases import family_pass_rates

    table = Table("set", "family", "prompts", "pass rate", "all-equal rewards",
                  title="beta pass rates (prompts with all-equal rewards carry no gradient)")
    for set_name, items in sets.items():
        for fam, row in family_pass_rates(items).items():
            table.add_row(set_name, fam, str(row["n"]), f"{row['pass_rate']:.3f}", f"{row['zero_grad']:.0%}")
    console.print(table)


def print_scores(run: Any, stage: int, n: int = 5) -> None:
    """The stage's ranking for a selection at the config's ratio and fusion: the top and bottom
    ``n`` prompts. Prompts outside every target's top list (fused 0 with rrf) are ordered by the
    reciprocal-rank sum of the full per-target rankings (:func:`cropi.select.fusion.rank_order`)."""
    from cropi.influence.scores import read_scores, scorer_spec, target_scores
    from cropi.select import budget, fuse, rank_order

    table_in = read_scores(run.dir.scores(stage))
    rows = table_in.to_pylist()
    ids = [r["id"] for r in rows]
    scores = target_scores(table_in, ids)
    n_sel = budget(len(ids), run.cfg.select.ratio)
    fusion = run.cfg.score.fusion
    fused = fuse(scores, n_sel, fusion)
    order = rank_order(scores, n_sel, fusion)
    table = Table("rank", "id", "family", "level", "pass rate", *[f"score_{t}" for t in scores],
                  f"fused ({fusion}, N={n_sel})",
                  title=f"top and bottom prompts ({order.size} with a gradient; scorer "
                        f"{scorer_spec(table_in)['scorer']}) - {run.dir.scores(stage)}")
    shown = list(enumerate(order, start=1))
    if len(shown) > 2 * n:
        shown = shown[:n] + shown[-n:]
    for rank, i in shown:
        r = rows[i]
        table.add_row(str(rank), r["id"], r["source"], str(r["level"]), f"{r['pass_rate']:.2f}",
                      *[f"{scores[t][i]:+.4f}" for t in scores], f"{fused[i]:.4f}")
    console.print(table)


def print_selection(sel: dict[str, Any]) -> None:
    stats = sel["stats"]
    table = Table("family", "pool", "selected", title=f"selection: {sel['policy']}, {sel['n_selected']} of {stats['n_pool']} prompts")
    for fam, n in stats["source_mix"]["pool"].items():
        table.add_row(fam, str(n), str(stats["source_mix"]["selected"].get(fam, 0)))
    console.print(table)
    pr = stats["pass_rate"]
    zero = stats.get("n_zero_grad")
    console.print(f"beta pass rate: pool mean {pr['mean_pool']:.3f}, selected mean {pr['mean_selected']:.3f}"
                  + (f"; {zero} prompts with zero gradient excluded" if zero is not None else ""))
    if stats.get("overlap_previous"):
        console.print(f"overlap with the previous stage: {stats['overlap_previous']['fraction']:.2f}")
    if stats.get("analysis"):
        print_analysis(stats["analysis"])


def print_analysis(analysis: dict[str, Any]) -> None:
    """A selection's ``analysis``: entropy, pass rates, level and similarities vs the prompts with
    a gradient and the pool, with intervals and p-values (one line per measure)."""
    from cropi.report.selection_analysis import analysis_rows

    console.print(f"what the selection picks, vs the {analysis['n_gradient']} prompts with a gradient "
                  f"and the {analysis['n_pool']} of the pool (selected - group [95 % CI], p):", markup=False)
    for name, sel, grad, diff_g, rand, pool, diff_p in analysis_rows(analysis):
        console.print(f"  {name}: selected {sel}; with gradient {grad}: {diff_g} (random picks {rand}); "
                      f"pool {pool}: {diff_p}", markup=False, highlight=False)
    console.print(f"  {analysis['method']}.", markup=False, highlight=False)
    for key, note in analysis.get("notes", {}).items():
        console.print(f"  {key}: {note}", markup=False, highlight=False)


def print_eval(result: dict[str, Any]) -> None:
    table = Table("test set", "n", "family", "greedy", "mean@k", title="accuracy")
    for set_name, res in result["sets"].items():
        g = res.get("greedy_by_family", {})
        mk = next((k for k in res if k.startswith("mean@") and not k.endswith(("family", "level"))), None)
        m = res.get(f"{mk}_by_family", {}) if mk else {}
        for fam in sorted(set(g) | set(m)):
            table.add_row(set_name, str(res["n"]), fam, fmt(g.get(fam)), fmt(m.get(fam)))
    console.print(table)
    for kind in ("targeted", "untargeted"):
        if kind in result:
            console.print(f"{kind} ({result['metric']}): {result[kind]:.3f} (majority-answer baseline "
                          f"{fmt(result.get(f'{kind}_majority'))}, modal-answer share "
                          f"{fmt(result.get(f'{kind}_modal_share'))})")


def print_eval_curve(evals: list[dict[str, Any]]) -> None:
    table = Table("step", "stage", "targeted", "untargeted", title="accuracy on the held-out test sets")
    for r in evals:
        table.add_row(str(r["step"]), str(r["stage"]), fmt(r.get("targeted")), fmt(r.get("untargeted")))
    console.print(table)


__all__ = ["fmt", "print_analysis", "print_eval", "print_eval_curve", "print_pass_rates",
           "print_scores", "print_selection"]
