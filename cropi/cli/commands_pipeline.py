"""Commands of the method's pipeline: rollout, score, select, eval, run, compare."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cropi.cli.app import app
from cropi import api
from cropi.cli.common import (ConfigArg, EvalEveryOpt, ModelOpt, NameOpt, OutOpt, OverwriteOpt, PoolOpt,
                              ScorerOpt, SetOpt, StageOpt, StagesOpt, StepsOpt, SuiteOpt, TargetOpt, TestOpt,
                              VerboseOpt, WaitOpt, console, data_flags, names_help, report_config_changes,
                              resolve_config, setup_env, user_errors)
from cropi.cli.show import print_eval, print_pass_rates, print_scores, print_selection
from cropi.curriculum.names import arm_names
from cropi.utils.errors import CropiError


@app.command()
@user_errors
def rollout(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
            model: ModelOpt = None, suite: SuiteOpt = None, pool: PoolOpt = None,
            target: TargetOpt = None,
            k_pool: Annotated[Optional[int], typer.Option(help="responses per pool prompt [default: 8]")] = None,
            k_target: Annotated[Optional[int], typer.Option(help="responses per target prompt [default: 8]")] = None,
            temperature: Annotated[Optional[float], typer.Option(help="sampling temperature [default: 0.5]")] = None,
            top_p: Annotated[Optional[float], typer.Option(help="nucleus sampling threshold [default: 1.0]")] = None,
            max_new_tokens: Annotated[Optional[int], typer.Option(help="maximum response tokens [default: 64]")] = None,
            batch_size: Annotated[Optional[int], typer.Option(help="sequences decoded together [default: 64]; "
                                                                "rollout.chunk_rows sets the responses per call")] = None,
            seed: Annotated[Optional[int], typer.Option(help="sampling seed [default: 0]")] = None,
            set_: SetOpt = None, overwrite: OverwriteOpt = False, wait: WaitOpt = False,
            verbose: VerboseOpt = False) -> None:
    """Sample the initial policy (beta) once: K responses per prompt, rewards, log-probs.

    Writes RUN/rollouts/pool and RUN/rollouts/targets/NAME (Parquet + manifest). Resumable: rerun
    the same command after an interruption and finished prompts are not recomputed.
    """
    setup_env(verbose)
    cfg = resolve_config(config, set_, name=name, out_dir=out_dir, model__path=model,
                       rollout__k_pool=k_pool, rollout__k_target=k_target,
                       rollout__temperature=temperature, rollout__top_p=top_p,
                       rollout__max_new_tokens=max_new_tokens, rollout__batch_size=batch_size,
                       rollout__seed=seed, **data_flags(suite, pool, target, None))
    run = api.open_run(cfg, overwrite=overwrite)
    sets = api.sample_rollouts(run)
    report_config_changes(run)
    print_pass_rates(sets)
    console.print(f"rollouts in {run.dir.root / 'rollouts'}")


ProjOpt = Annotated[Optional[str], typer.Option(help=f"projector: {names_help('projection.kind')} [default: countsketch]")]


@app.command()
@user_errors
def score(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
          model: ModelOpt = None, suite: SuiteOpt = None, pool: PoolOpt = None,
          target: TargetOpt = None, stage: StageOpt = 0, projector: ProjOpt = None,
          k: Annotated[Optional[int], typer.Option(help="projected dimension [default: 8192]")] = None,
          sparse_ratio: Annotated[Optional[float], typer.Option(help="coordinates kept before the JL map (sparse-jl) [default: 1.0]")] = None,
          params: Annotated[Optional[str], typer.Option(help="gradient parameters: all, lora or filter [default: all]")] = None,
          exclude: Annotated[Optional[str], typer.Option(help="regex of parameter names to drop (params=filter), e.g. 'embed|norm'")] = None,
          fusion: Annotated[Optional[str], typer.Option(help=f"fusion of several targets at selection time: {names_help('score.fusion')} [default: rrf]")] = None,
          scorer: ScorerOpt = None,
          backend: Annotated[Optional[str], typer.Option(help=f"{names_help('score.backend')}: local = this process, ray = shards over Ray workers [default: local]")] = None,
          workers: Annotated[Optional[int], typer.Option(help="ray: number of workers/shards (0 = one per GPU, else per CPU) [default: 0]")] = None,
          set_: SetOpt = None, overwrite: OverwriteOpt = False, wait: WaitOpt = False,
          verbose: VerboseOpt = False) -> None:
    """Score every pool prompt by POPI influence on the target sets at the stage's weights.

    Needs the rollouts (runs them first if missing). Writes RUN/stages/stage_NNN/features/ (a
    resumable memmap store per set) and scores.parquet (one score column per target, made by
    score.scorer). A stage scored with another --scorer is refused, or with --overwrite rescored
    from its stored features without new gradients. The printed
    ranking fuses the targets for a selection at select.ratio; `cropi select` fuses for its own
    budget. With `--backend ray` each worker fills one id range of every store (RAY_ADDRESS or
    score.ray_address picks the cluster; without one a local cluster starts); a worker that dies
    is retried and resumes its own shard only.
    """
    setup_env(verbose)
    cfg = resolve_config(config, set_, name=name, out_dir=out_dir, model__path=model,
                       projection__kind=projector, projection__k=k, projection__sparse_ratio=sparse_ratio,
                       gradient__params=params, gradient__exclude=exclude, score__fusion=fusion,
                       score__scorer=scorer, score__backend=backend, score__workers=workers,
                       **data_flags(suite, pool, target, None))
    run = api.open_run(cfg, overwrite=overwrite)
    timings = api.score_stage(run, stage)
    report_config_changes(run)
    if timings is not None:
        t = timings.as_dict()
        console.print(f"scored {t['n_prompts']} prompts ({t['n_zero_grad']} with all-equal rewards) in "
                      f"{t['total_s']:.1f} s: gradients {t['grad_s']:.1f} s, projection {t['project_s']:.1f} s, "
                      f"store {t['store_s']:.2f} s")
    print_scores(run, stage)


@app.command()
@user_errors
def select(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
           suite: SuiteOpt = None, pool: PoolOpt = None, target: TargetOpt = None,
           stage: StageOpt = 0,
           policy: Annotated[Optional[str], typer.Option(help=f"selection policy: {names_help('select.policy')} [default: influence]")] = None,
           ratio: Annotated[Optional[float], typer.Option(help="fraction of the pool kept [default: 0.10]")] = None,
           fusion: Annotated[Optional[str], typer.Option(help=f"fusion of several targets: {names_help('score.fusion')} [default: rrf]")] = None,
           scorer: ScorerOpt = None,
           set_: SetOpt = None, overwrite: OverwriteOpt = False, wait: WaitOpt = False,
           verbose: VerboseOpt = False) -> None:
    """Select the stage's training subset and write RUN/stages/stage_NNN/selection.json.

    The influence policy fuses the stored per-target scores for this selection's budget (with rrf:
    each target's top N, N = round(ratio * pool)). A stage that already has a selection made with
    another policy, budget or fusion is refused unless --overwrite.
    """
    setup_env(verbose)
    cfg = resolve_config(config, set_, name=name, out_dir=out_dir, select__policy=policy,
                       select__ratio=ratio, score__fusion=fusion, score__scorer=scorer,
                       **data_flags(suite, pool, target, None))
    run = api.open_run(cfg, overwrite=overwrite)
    sel = api.select_prompts(run, stage)  # another --scorer (with --overwrite): rescored from stored features
    report_config_changes(run)
    print_selection(sel.info)


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
    from cropi.data.io import load_prompts
    from cropi.utils.io import atomic_write_json

    setup_env(verbose)
    cfg = resolve_config(config, set_, resume=False, model__path=model, eval__greedy=greedy,
                         eval__samples=samples, eval__max_items=max_items,
                         eval__max_new_tokens=max_new_tokens, **data_flags(suite, None, None, test))
    tests = ({n: load_prompts(p, cfg.data.converter, cfg.data.max_prompt_chars) for n, p in cfg.data.tests.items()}
             if test else None)
    result = api.evaluate_model(cfg, tests)
    print_eval(result)
    if output:
        atomic_write_json(output, result)
        console.print(f"wrote {output}")


@app.command("run")
@user_errors
def run_cmd(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
            model: ModelOpt = None, suite: SuiteOpt = None, pool: PoolOpt = None,
            target: TargetOpt = None, test: TestOpt = None, stages: StagesOpt = None,
            steps_per_stage: StepsOpt = None, eval_every: EvalEveryOpt = None,
            policy: Annotated[Optional[str], typer.Option(help=f"selection policy: {names_help('select.policy')} [default: influence]")] = None,
            ratio: Annotated[Optional[float], typer.Option(help="fraction of the pool per stage [default: 0.10]")] = None,
            set_: SetOpt = None, overwrite: OverwriteOpt = False, wait: WaitOpt = False,
            verbose: VerboseOpt = False) -> None:
    """The method end to end: beta rollouts once, then per stage score, select, train (GRPO), evaluate.

    Every phase is skipped when done, so rerunning the same command (or just `cropi run --name
    NAME`: the run's stored config is the base) resumes after an interruption and reproduces the
    same selections. Without test sets (a --pool of your own and no --test) evaluation is skipped.
    Ends with a report in RUN/report/.
    """
    setup_env(verbose)
    cfg = resolve_config(config, set_, name=name, out_dir=out_dir, model__path=model,
                         curriculum__stages=stages, train__steps_per_stage=steps_per_stage,
                         curriculum__eval_every=eval_every, select__policy=policy, select__ratio=ratio,
                         **data_flags(suite, pool, target, test))
    run = api.open_run(cfg, overwrite=overwrite)
    summary = api.run_curriculum(run, report=True)
    report_config_changes(run)
    console.print(f"done in {summary['seconds'] / 60:.1f} min; final model {summary['final_model']}; "
                  f"report {summary['report']}/report.md")


@app.command()
@user_errors
def compare(config: ConfigArg = None, name: NameOpt = None, out_dir: OutOpt = None,
            arms: Annotated[str, typer.Option(help=f"comma-separated arms: {', '.join(arm_names())} (cropi-paper is skipped next to cropi when score.scorer is already paper)")] = "cropi,full,random,learnability",
            seeds: Annotated[str, typer.Option(help="comma-separated training seeds")] = "0,1",
            model: ModelOpt = None, suite: SuiteOpt = None, pool: PoolOpt = None,
            target: TargetOpt = None, test: TestOpt = None, stages: StagesOpt = None,
            steps_per_stage: StepsOpt = None, eval_every: EvalEveryOpt = None,
            ratio: Annotated[Optional[float], typer.Option(help="fraction of the pool per stage for the selecting arms [default: 0.10]")] = None,
            shared_rollouts: Annotated[bool, typer.Option("--shared-rollouts", help="one beta draw for every seed (cheaper smoke runs; the intervals are then conditional on that draw)")] = False,
            set_: SetOpt = None, overwrite: OverwriteOpt = False, wait: WaitOpt = False,
            verbose: VerboseOpt = False) -> None:
    """Run CROPI and baselines with the same seeds, step budget and evaluation schedule, every
    seed on its own beta rollouts (rollout seed rollout.seed + seed), then report each arm's
    step-level acceleration over full-data GRPO.

    Resumable: rerun the same command to continue; results are written as each run finishes.
    """
    setup_env(verbose)
    cfg = resolve_config(config, set_, name=name, out_dir=out_dir, model__path=model,
                         curriculum__stages=stages, train__steps_per_stage=steps_per_stage,
                         curriculum__eval_every=eval_every, select__ratio=ratio,
                         **data_flags(suite, pool, target, test))
    arm_list = [a.strip() for a in arms.split(",") if a.strip()]
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CropiError(f"--seeds {seeds!r} must be comma-separated integers") from None
    root = api.compare(cfg, arm_list, seed_list, overwrite=overwrite, shared_rollouts=shared_rollouts)
    folder = root / "report"
    console.print(f"report: {folder / 'report.md'} and {folder / 'report.html'}")


