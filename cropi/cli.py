"""The ``cropi`` command line. Every command reads an optional YAML config, then flags, then
``--set section.key=value`` overrides (see ``cropi config`` for every key)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cropi.utils.errors import CropiError
from cropi.cli_common import (build_config, config_reference, console, parse_pairs, setup_env,
                              user_errors)

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="CROPI: curriculum RL with off-policy influence guidance for RLVR.")

ConfigArg = Annotated[Optional[str], typer.Argument(help="YAML run config (optional; flags override it)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override any config key: --set rollout.k_pool=4 (repeatable)")]
NameOpt = Annotated[Optional[str], typer.Option(help="run name: the run directory is OUT_DIR/NAME")]
OutOpt = Annotated[Optional[str], typer.Option(help="parent folder of run directories [default: runs]")]
ModelOpt = Annotated[Optional[str], typer.Option(help="model: 'default' (embedded SmolLM2-135M-Instruct), a folder or a hub id")]
SuiteOpt = Annotated[Optional[str], typer.Option(help="built-in task suite (see `cropi suites`)")]
PoolOpt = Annotated[Optional[str], typer.Option(help="training pool file (.jsonl/.parquet/HF folder); replaces the suite's pool")]
TargetOpt = Annotated[Optional[list[str]], typer.Option("--target", help="target set NAME=FILE (repeatable); replaces the suite's targets")]
TestOpt = Annotated[Optional[list[str]], typer.Option("--test", help="test set NAME=FILE (repeatable); names starting with 'target' count as targeted")]
StageOpt = Annotated[int, typer.Option(help="curriculum stage (0 = scored at the initial model)")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="recompute outputs whose spec differs instead of failing")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="log at INFO level")]


def _data_flags(suite: str | None, pool: str | None, target: list[str] | None,
                test: list[str] | None) -> dict[str, Any]:
    flags: dict[str, Any] = {"data.suite": suite, "data.pool": pool}
    if target:
        flags["data.targets"] = parse_pairs(target, "--target")
    if test:
        flags["data.tests"] = parse_pairs(test, "--test")
    if pool and not suite:
        flags["data.suite"] = None
    return flags


def _run(cfg: Any, overwrite: bool = False) -> Any:
    from cropi.curriculum.phases import Run

    return Run(cfg, overwrite=overwrite)


@app.command()
@user_errors
def doctor() -> None:
    """Versions, device, threads, the default model's cache and which optional extras import."""
    from cropi.doctor import collect_report

    setup_env()
    table = Table("item", "value", title="cropi doctor")
    for key, value in collect_report().items():
        table.add_row(key, str(value))
    console.print(table)


@app.command("config")
@user_errors
def config_cmd(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Print every config key with its default and help; with CONFIG, print the resolved config."""
    from cropi.config import dump_config

    typer.echo(dump_config(build_config(config, set_)) if config or set_ else config_reference())


@app.command()
@user_errors
def suites(write: Annotated[Optional[str], typer.Option(help="write SUITE's files to this folder")] = None,
           suite: Annotated[str, typer.Option(help="suite to write")] = "default",
           seed: Annotated[int, typer.Option(help="generation seed")] = 0) -> None:
    """List the built-in task suites, or write one as JSONL files (pool, targets/, tests/)."""
    from cropi.data.suites import build_suite, list_suites, write_suite

    setup_env()
    if write:
        s = build_suite(suite, seed)
        write_suite(s, write)
        console.print(f"wrote suite {suite!r} (seed {seed}) to {write}: pool {len(s.pool)}, "
                      f"targets {', '.join(f'{k}={len(v)}' for k, v in s.targets.items())}, "
                      f"tests {', '.join(f'{k}={len(v)}' for k, v in s.tests.items())}")
        return
    table = Table("suite", "description")
    for name, desc in list_suites().items():
        table.add_row(name, desc)
    console.print(table)


@app.command()
@user_errors
def rollout(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
            model: ModelOpt = None, suite: SuiteOpt = None, pool: PoolOpt = None,
            target: TargetOpt = None,
            k_pool: Annotated[Optional[int], typer.Option(help="responses per pool prompt [default: 8]")] = None,
            k_target: Annotated[Optional[int], typer.Option(help="responses per target prompt [default: 32]")] = None,
            temperature: Annotated[Optional[float], typer.Option(help="sampling temperature [default: 1.0]")] = None,
            top_p: Annotated[Optional[float], typer.Option(help="nucleus sampling threshold [default: 1.0]")] = None,
            max_new_tokens: Annotated[Optional[int], typer.Option(help="maximum response tokens [default: 64]")] = None,
            batch_size: Annotated[Optional[int], typer.Option(help="sequences per generation batch [default: 64]")] = None,
            seed: Annotated[Optional[int], typer.Option(help="sampling seed [default: 0]")] = None,
            set_: SetOpt = None, overwrite: OverwriteOpt = False, verbose: VerboseOpt = False) -> None:
    """Sample the initial policy (beta) once: K responses per prompt, rewards, log-probs.

    Writes RUN/rollouts/pool and RUN/rollouts/targets/NAME (Parquet + manifest). Resumable: rerun
    the same command after an interruption and finished prompts are not recomputed.
    """
    from cropi.curriculum.phases import phase_rollouts

    setup_env(verbose)
    cfg = build_config(config, set_, name=name, out_dir=out_dir, model__path=model,
                       rollout__k_pool=k_pool, rollout__k_target=k_target,
                       rollout__temperature=temperature, rollout__top_p=top_p,
                       rollout__max_new_tokens=max_new_tokens, rollout__batch_size=batch_size,
                       rollout__seed=seed, **_data_flags(suite, pool, target, None))
    run = _run(cfg, overwrite)
    sets = phase_rollouts(run)
    _print_pass_rates(sets)
    console.print(f"rollouts in {run.dir.root / 'rollouts'}")


def _print_pass_rates(sets: dict[str, list[Any]]) -> None:
    from cropi.curriculum.phases import family_pass_rates

    table = Table("set", "family", "prompts", "pass rate", "all-equal rewards",
                  title="beta pass rates (prompts with all-equal rewards carry no gradient)")
    for set_name, items in sets.items():
        for fam, row in family_pass_rates(items).items():
            table.add_row(set_name, fam, str(row["n"]), f"{row['pass_rate']:.3f}", f"{row['zero_var']:.0%}")
    console.print(table)


ProjOpt = Annotated[Optional[str], typer.Option(help="projector: countsketch, sparse-jl, factorized or none [default: countsketch]")]


@app.command()
@user_errors
def score(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
          model: ModelOpt = None, suite: SuiteOpt = None, pool: PoolOpt = None,
          target: TargetOpt = None, stage: StageOpt = 0, projector: ProjOpt = None,
          k: Annotated[Optional[int], typer.Option(help="projected dimension [default: 8192]")] = None,
          sparse_ratio: Annotated[Optional[float], typer.Option(help="coordinates kept before the JL map (sparse-jl) [default: 1.0]")] = None,
          params: Annotated[Optional[str], typer.Option(help="gradient parameters: all, lora or filter [default: all]")] = None,
          exclude: Annotated[Optional[str], typer.Option(help="regex of parameter names to drop (params=filter), e.g. 'embed|norm'")] = None,
          fusion: Annotated[Optional[str], typer.Option(help="fusion of several targets: rrf, max or mean [default: rrf]")] = None,
          backend: Annotated[Optional[str], typer.Option(help="local (this process) or ray (shards over Ray workers) [default: local]")] = None,
          workers: Annotated[Optional[int], typer.Option(help="ray: number of workers/shards (0 = one per GPU, else per CPU) [default: 0]")] = None,
          set_: SetOpt = None, overwrite: OverwriteOpt = False, verbose: VerboseOpt = False) -> None:
    """Score every pool prompt by POPI influence on the target sets at the stage's weights.

    Needs the rollouts (runs them first if missing). Writes RUN/stages/stage_NNN/features/ (a
    resumable memmap store per set) and scores.parquet (cosine per target, fused score, rank).
    With `--backend ray` each worker fills one id range of every store (RAY_ADDRESS or
    score.ray_address picks the cluster; without one a local cluster starts); a worker that dies
    is retried and resumes its own shard only.
    """
    from cropi.curriculum.phases import phase_rollouts
    from cropi.curriculum.scoring import phase_score

    setup_env(verbose)
    cfg = build_config(config, set_, name=name, out_dir=out_dir, model__path=model,
                       projection__kind=projector, projection__k=k, projection__sparse_ratio=sparse_ratio,
                       gradient__params=params, gradient__exclude=exclude, score__fusion=fusion,
                       score__backend=backend, score__workers=workers,
                       **_data_flags(suite, pool, target, None))
    run = _run(cfg, overwrite)
    sets = phase_rollouts(run)
    timings = phase_score(run, stage, sets)
    if timings is not None:
        t = timings.as_dict()
        console.print(f"scored {t['n_prompts']} prompts ({t['n_zero']} with all-equal rewards) in "
                      f"{t['total_s']:.1f} s: gradients {t['grad_s']:.1f} s, projection {t['project_s']:.1f} s, "
                      f"store {t['store_s']:.2f} s")
    _print_scores(run.dir.scores(stage))


def _print_scores(path: Path, n: int = 5) -> None:
    from cropi.influence.scores import read_scores

    rows = [r for r in read_scores(path).to_pylist() if r["rank"] is not None]
    rows.sort(key=lambda r: r["rank"])
    score_cols = [c for c in (rows[0] if rows else {}) if c.startswith("score_")]
    table = Table("rank", "id", "family", "level", "pass rate", *score_cols, "fused",
                  title=f"top and bottom prompts ({len(rows)} with a gradient) - {path}")
    for r in rows[:n] + rows[-n:] if len(rows) > 2 * n else rows:
        table.add_row(str(r["rank"]), r["id"], r["source"], str(r["level"]), f"{r['pass_rate']:.2f}",
                      *[f"{r[c]:+.4f}" for c in score_cols], f"{r['fused']:.4f}")
    console.print(table)


@app.command()
@user_errors
def select(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
           suite: SuiteOpt = None, pool: PoolOpt = None, target: TargetOpt = None,
           stage: StageOpt = 0,
           policy: Annotated[Optional[str], typer.Option(help="influence, random, pass-rate, learnability or full [default: influence]")] = None,
           ratio: Annotated[Optional[float], typer.Option(help="fraction of the pool kept [default: 0.10]")] = None,
           set_: SetOpt = None, overwrite: OverwriteOpt = False, verbose: VerboseOpt = False) -> None:
    """Select the stage's training subset and write RUN/stages/stage_NNN/selection.json."""
    from cropi.curriculum.scoring import load_run_rollouts, phase_select

    setup_env(verbose)
    cfg = build_config(config, set_, name=name, out_dir=out_dir, select__policy=policy,
                       select__ratio=ratio, **_data_flags(suite, pool, target, None))
    run = _run(cfg, overwrite)
    sel = phase_select(run, stage, load_run_rollouts(run)["pool"])
    _print_selection(sel)


def _print_selection(sel: dict[str, Any]) -> None:
    stats = sel["stats"]
    table = Table("family", "pool", "selected", title=f"selection: {sel['policy']}, {sel['n_selected']} of {stats['n_pool']} prompts")
    for fam, n in stats["source_mix"]["pool"].items():
        table.add_row(fam, str(n), str(stats["source_mix"]["selected"].get(fam, 0)))
    console.print(table)
    pr = stats["pass_rate"]
    console.print(f"beta pass rate: pool mean {pr['mean_pool']:.3f}, selected mean {pr['mean_selected']:.3f}; "
                  f"{stats['n_zero_grad']} prompts with zero gradient excluded")
    if stats.get("overlap_previous"):
        console.print(f"overlap with the previous stage: {stats['overlap_previous']['fraction']:.2f}")


@app.command("eval")
@user_errors
def eval_cmd(config: ConfigArg = None, model: ModelOpt = None, suite: SuiteOpt = None,
             test: TestOpt = None,
             greedy: Annotated[Optional[bool], typer.Option("--greedy/--no-greedy", help="report greedy accuracy [default: on]")] = None,
             samples: Annotated[Optional[int], typer.Option(help="responses per item for mean@k (0 disables) [default: 4]")] = None,
             max_items: Annotated[Optional[int], typer.Option(help="at most this many items per test set")] = None,
             max_new_tokens: Annotated[Optional[int], typer.Option(help="maximum response tokens [default: 64]")] = None,
             output: Annotated[Optional[str], typer.Option("--output", "-o", help="write the JSON result here")] = None,
             set_: SetOpt = None, verbose: VerboseOpt = False) -> None:
    """Accuracy of a model (a folder, 'default', or a run's stage checkpoint folder) on test sets:
    greedy and mean@k sampled, per family and level."""
    from cropi.data.sets import load_sets
    from cropi.model.loading import load_model, load_tokenizer
    from cropi.rollout.collect import make_policy
    from cropi.train.evaluate import evaluate
    from cropi.utils.io import atomic_write_json

    setup_env(verbose)
    cfg = build_config(config, set_, model__path=model, eval__greedy=greedy, eval__samples=samples,
                       eval__max_items=max_items, eval__max_new_tokens=max_new_tokens,
                       **_data_flags(suite, None, None, test))
    data = load_sets(cfg.data) if not test else None
    tests = data.tests if data else {n: _load(p, cfg.data.converter) for n, p in cfg.data.tests.items()}
    tok = load_tokenizer(cfg.model.path)
    policy = make_policy(load_model(cfg.model.path, "fp32", cfg.model.device), tok, cfg.rollout,
                         cfg.model.system_prompt)
    result = evaluate(policy, tests, cfg.eval)
    _print_eval(result)
    if output:
        atomic_write_json(output, result)
        console.print(f"wrote {output}")


def _load(path: str, converter: str) -> Any:
    from cropi.data.io import load_prompts

    return load_prompts(path, converter)


def _print_eval(result: dict[str, Any]) -> None:
    table = Table("test set", "n", "family", "greedy", "mean@k", title="accuracy")
    for set_name, res in result["sets"].items():
        g = res.get("greedy_by_family", {})
        mk = next((k for k in res if k.startswith("mean@") and not k.endswith(("family", "level"))), None)
        m = res.get(f"{mk}_by_family", {}) if mk else {}
        for fam in sorted(set(g) | set(m)):
            table.add_row(set_name, str(res["n"]), fam, _fmt(g.get(fam)), _fmt(m.get(fam)))
    console.print(table)
    for kind in ("targeted", "untargeted"):
        if kind in result:
            console.print(f"{kind} ({result['metric']}): {result[kind]:.3f}")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


StagesOpt = Annotated[Optional[int], typer.Option(help="number of curriculum stages [default: 2]")]
StepsOpt = Annotated[Optional[int], typer.Option(help="GRPO steps per stage [default: 20]")]
EvalEveryOpt = Annotated[Optional[int], typer.Option(help="evaluate every this many RL steps [default: 10]")]


@app.command("run")
@user_errors
def run_cmd(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
            model: ModelOpt = None, suite: SuiteOpt = None, pool: PoolOpt = None,
            target: TargetOpt = None, test: TestOpt = None, stages: StagesOpt = None,
            steps_per_stage: StepsOpt = None, eval_every: EvalEveryOpt = None,
            policy: Annotated[Optional[str], typer.Option(help="selection policy [default: influence]")] = None,
            ratio: Annotated[Optional[float], typer.Option(help="fraction of the pool per stage [default: 0.10]")] = None,
            set_: SetOpt = None, overwrite: OverwriteOpt = False, verbose: VerboseOpt = False) -> None:
    """The method end to end: beta rollouts once, then per stage score, select, train (GRPO), evaluate.

    Every phase is skipped when done, so rerunning the same command resumes after an interruption
    and reproduces the same selections. Ends with a report in RUN/report/.
    """
    from cropi.curriculum.loop import run_curriculum
    from cropi.report import build_report

    setup_env(verbose)
    cfg = build_config(config, set_, name=name, out_dir=out_dir, model__path=model,
                       curriculum__stages=stages, train__steps_per_stage=steps_per_stage,
                       curriculum__eval_every=eval_every, select__policy=policy, select__ratio=ratio,
                       **_data_flags(suite, pool, target, test))
    run = _run(cfg, overwrite)
    summary = run_curriculum(run)
    report = build_report(run.dir.root)
    console.print(f"done in {summary['seconds'] / 60:.1f} min; final model {summary['final_model']}; "
                  f"report {report / 'report.md'}")


@app.command()
@user_errors
def compare(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
            arms: Annotated[str, typer.Option(help="comma-separated arms: cropi, full, random, learnability, pass-rate, influence-once")] = "cropi,full,random,learnability",
            seeds: Annotated[str, typer.Option(help="comma-separated training seeds")] = "0,1",
            model: ModelOpt = None, suite: SuiteOpt = None, pool: PoolOpt = None,
            target: TargetOpt = None, test: TestOpt = None, stages: StagesOpt = None,
            steps_per_stage: StepsOpt = None, eval_every: EvalEveryOpt = None,
            ratio: Annotated[Optional[float], typer.Option(help="fraction of the pool per stage for the selecting arms [default: 0.10]")] = None,
            set_: SetOpt = None, overwrite: OverwriteOpt = False, verbose: VerboseOpt = False) -> None:
    """Run CROPI and baselines with the same seeds, step budget and evaluation schedule on shared
    beta rollouts, then report each arm's step-level acceleration over full-data GRPO.

    Resumable: rerun the same command to continue; results are written as each run finishes.
    """
    from cropi.curriculum.compare import run_compare

    setup_env(verbose)
    cfg = build_config(config, set_, name=name, out_dir=out_dir, model__path=model,
                       curriculum__stages=stages, train__steps_per_stage=steps_per_stage,
                       curriculum__eval_every=eval_every, select__ratio=ratio,
                       **_data_flags(suite, pool, target, test))
    arm_list = [a.strip() for a in arms.split(",") if a.strip()]
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CropiError(f"--seeds {seeds!r} must be comma-separated integers") from None
    from cropi.report import build_report

    root = run_compare(cfg, arm_list, seed_list, overwrite)
    folder = build_report(root)
    console.print(f"report: {folder / 'report.md'} and {folder / 'report.html'}")


@app.command()
@user_errors
def report(run_dir: Annotated[str, typer.Argument(help="a run directory or a `cropi compare` directory")],
           out: Annotated[Optional[str], typer.Option(help="report folder [default: RUN_DIR/report]")] = None) -> None:
    """Markdown + self-contained HTML report with figures: accuracy vs step, acceleration table,
    selection composition, score and pass-rate histograms, stage overlap, time breakdown."""
    from cropi.report import build_report

    setup_env()
    folder = build_report(run_dir, out)
    console.print(f"wrote {folder / 'report.md'} and {folder / 'report.html'}")


@app.command("export-verl")
@user_errors
def export_verl(run_dir: Annotated[str, typer.Argument(help="a cropi run directory")],
                out: Annotated[str, typer.Option(help="parquet file to write")],
                stage: Annotated[Optional[int], typer.Option(help="stage whose selection is exported [default: the latest]")] = None,
                pool: Annotated[bool, typer.Option("--pool", help="export the whole pool instead (the train file for CropiCurriculumSampler)")] = False,
                data_source: Annotated[str, typer.Option(help="verl data_source column (picks verl's reward function)")] = "cropi") -> None:
    """Write a stage's selection (or the whole pool) as verl RLHFDataset parquet.

    Rows keep the cropi id in extra_info.cropi_id, so `CropiCurriculumSampler` (see
    docs/scaling.md) can serve each stage's selection from the pool file inside verl.
    """
    from cropi.scale.verl import export_pool_verl, export_selection_verl, selection_stages

    setup_env()
    if pool:
        n = export_pool_verl(Path(run_dir), Path(out), data_source)
        console.print(f"wrote {n} pool rows to {out}")
        return
    stages = selection_stages(Path(run_dir))
    if stage is None:
        if not stages:
            raise CropiError("has no stage with a selection.json", file=run_dir,
                             fix="run `cropi select` or `cropi run` first")
        stage = stages[-1]
    n = export_selection_verl(Path(run_dir), stage, Path(out), data_source)
    console.print(f"wrote {n} rows of stage {stage}'s selection to {out}")


@app.command()
@user_errors
def demo(name: Annotated[str, typer.Option(help="run name")] = "demo",
         out_dir: OutOpt = None, suite: Annotated[str, typer.Option(help="built-in suite")] = "default-small",
         model: ModelOpt = None, stages: StagesOpt = None, steps_per_stage: StepsOpt = None,
         set_: SetOpt = None, overwrite: OverwriteOpt = False, verbose: VerboseOpt = False) -> None:
    """The main job on the embedded default: CROPI on SmolLM2-135M-Instruct and the default-small
    suite, 2 stages, then a report (about 20 min on 2 idle CPU cores); resumable: rerun to continue.
    """
    from cropi.curriculum.loop import run_curriculum
    from cropi.curriculum.scoring import load_run_rollouts
    from cropi.report import build_report
    from cropi.select import read_selection
    from cropi.utils.io import read_json

    setup_env(verbose)
    given = {"name": name, "out_dir": out_dir, "model.path": model, "data.suite": suite,
             "curriculum.stages": stages, "train.steps_per_stage": steps_per_stage}
    cfg = build_config(None, set_, **{**DEMO_DEFAULTS, **{k: v for k, v in given.items() if v is not None}})
    run = _run(cfg, overwrite)
    summary = run_curriculum(run)
    _print_pass_rates(load_run_rollouts(run))
    for m in range(cfg.curriculum.stages):
        if run.dir.scores(m).exists():
            _print_scores(run.dir.scores(m))
        _print_selection(read_selection(run.dir.selection(m)))
    evals = [r for r in _read_metrics(run.dir.root) if r.get("event") == "eval"]
    table = Table("step", "stage", "targeted", "untargeted", title="accuracy on the held-out test sets")
    for r in evals:
        table.add_row(str(r["step"]), str(r["stage"]), _fmt(r.get("targeted")), _fmt(r.get("untargeted")))
    console.print(table)
    report = build_report(run.dir.root)
    console.print(f"[bold]done[/] in {summary['seconds'] / 60:.1f} min. Report: {report / 'report.html'}"
                  f" (and report.md); run directory {run.dir.root}")


def _read_metrics(root: Path) -> list[dict[str, Any]]:
    path = root / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# Sized for 2 CPU cores: 32.5 min measured with torch on 1 thread (README, "Results").
DEMO_DEFAULTS: dict[str, Any] = {
    "rollout.k_pool": 8, "rollout.k_target": 8, "rollout.max_new_tokens": 40,
    "gradient.autocast_bf16": True,
    "curriculum.stages": 2, "curriculum.eval_every": 5, "train.steps_per_stage": 10,
    "train.prompts_per_step": 2, "train.samples_per_prompt": 8, "train.max_new_tokens": 40,
    "eval.samples": 0, "eval.max_items": 50, "eval.max_new_tokens": 40,
}


def main() -> None:
    app()


if __name__ == "__main__":
    main()
