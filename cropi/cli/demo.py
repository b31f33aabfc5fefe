"""`cropi demo`: the main job on the embedded default model, then its tables and report."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cropi.cli.app import app
from cropi import api
from cropi.cli.common import (ModelOpt, OutOpt, OverwriteOpt, SetOpt, StagesOpt, StepsOpt, VerboseOpt,
                              WaitOpt, console, report_config_changes, resolve_config, setup_env, user_errors)
from cropi.cli.show import print_eval_curve, print_pass_rates, print_scores, print_selection

# Sized for 2 CPU cores: the demo ran 10.3 min on an idle 2-core machine (README, "Results").
DEMO_DEFAULTS: dict[str, Any] = {
    "rollout.k_pool": 8, "rollout.k_target": 8, "rollout.max_new_tokens": 40,
    "curriculum.stages": 2, "curriculum.eval_every": 5, "train.steps_per_stage": 10,
    "train.prompts_per_step": 2, "train.samples_per_prompt": 8, "train.max_new_tokens": 40,
    "eval.samples": 0, "eval.max_items": 50, "eval.max_new_tokens": 40, "eval.untargeted": "stage_end",
}


@app.command()
@user_errors
def demo(name: Annotated[str, typer.Option(help="run name")] = "demo",
         out_dir: OutOpt = None, suite: Annotated[str, typer.Option(help="built-in suite")] = "default-small",
         model: ModelOpt = None, stages: StagesOpt = None, steps_per_stage: StepsOpt = None,
         set_: SetOpt = None, overwrite: OverwriteOpt = False, wait: WaitOpt = False,
         verbose: VerboseOpt = False) -> None:
    """The main job on the embedded default: CROPI on SmolLM2-135M-Instruct and the default-small
    suite, 2 stages, then a report (about 10 min on 2 idle CPU cores); resumable: rerun to continue.
    """
    from cropi.curriculum.phases import load_run_rollouts
    from cropi.select import read_selection
    from cropi.utils.io import read_jsonl

    setup_env(verbose)
    given = {"name": name, "out_dir": out_dir, "model.path": model, "data.suite": suite,
             "curriculum.stages": stages, "train.steps_per_stage": steps_per_stage}
    cfg = resolve_config(None, set_, **{**DEMO_DEFAULTS, **{k: v for k, v in given.items() if v is not None}})
    run = api.open_run(cfg, overwrite=overwrite)
    summary = api.run_curriculum(run, report=True)
    report_config_changes(run)
    print_pass_rates(load_run_rollouts(run))
    for m in range(cfg.curriculum.stages):
        if run.dir.scores(m).exists():
            print_scores(run, m)
        print_selection(read_selection(run.dir.selection(m)))
    print_eval_curve([r for r in read_jsonl(run.dir.root / "metrics.jsonl") if r.get("event") == "eval"])
    console.print(f"[bold]done[/] in {summary['seconds'] / 60:.1f} min. Report: {summary['report']}/report.html"
                  f" (and report.md); run directory {run.dir.root}")
