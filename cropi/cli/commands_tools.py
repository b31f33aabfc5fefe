"""Commands around the pipeline: doctor, config, suites, report, verify, export-verl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cropi.cli.app import app
from cropi import api
from cropi.cli.common import (ConfigArg, OutOpt, SetOpt, config_reference, console, resolve_config, setup_env,
                              user_errors)
from cropi.utils.errors import CropiError


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

    typer.echo(dump_config(resolve_config(config, set_, resume=False)) if config or set_ else config_reference())


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
def report(run_dir: Annotated[str, typer.Argument(help="a run directory or a `cropi compare` directory")],
           out: Annotated[Optional[str], typer.Option(help="report folder [default: RUN_DIR/report]")] = None) -> None:
    """Markdown + self-contained HTML report with figures: accuracy vs step, acceleration table,
    selection composition, score and pass-rate histograms, stage overlap, time breakdown."""
    setup_env()
    folder = api.write_report(run_dir, out)
    console.print(f"wrote {folder / 'report.md'} and {folder / 'report.html'}")


@app.command()
@user_errors
def verify(run: Annotated[str, typer.Argument(help="a run NAME (under --out-dir), or a run or `cropi compare` directory")],
           out_dir: OutOpt = None,
           all_: Annotated[bool, typer.Option("--all", help="list the checks that passed too")] = False) -> None:
    """Check a run's stores (rollouts, feature stores, score tables, checkpoints, state) against
    their done records and say what a rerun would compute again. Writes nothing. Exit 0 when
    everything matches, 1 when something is damaged or unfinished."""
    from cropi.config import RunConfig

    setup_env()
    path = Path(run)
    if not path.is_dir():
        path = Path(out_dir or RunConfig().out_dir) / run
    result = api.verify_run(path)
    marks = {"ok": "[green]ok[/]     ", "note": "[blue]note[/]   ", "recompute": "[yellow]redo[/]   ",
             "damaged": "[red]damaged[/]"}
    for f in result.findings:
        if all_ or f.kind != "ok":
            where = f.path.relative_to(path) if f.path.is_relative_to(path) else f.path
            console.print(f"{marks[f.kind]} {where}: {f.detail}" + (f" -> {f.action}" if f.action else ""),
                          highlight=False, soft_wrap=True)
    n_ok = sum(f.kind == "ok" for f in result.findings)
    if result.ok:
        console.print(f"{path}: every store matches its records ({n_ok} checks passed)")
        return
    console.print(f"{path}: {len(result.problems)} problem(s); {n_ok} checks passed")
    raise typer.Exit(1)


@app.command("export-verl")
@user_errors
def export_verl(run_dir: Annotated[str, typer.Argument(help="a cropi run directory")],
                out: Annotated[str, typer.Option(help="parquet file to write")],
                stage: Annotated[Optional[int], typer.Option(help="stage whose selection is exported [default: the latest]")] = None,
                pool: Annotated[bool, typer.Option("--pool", help="export the whole pool instead (the train file for CropiCurriculumSampler)")] = False,
                data_source: Annotated[str, typer.Option(help="verl data_source column (picks verl's reward function)")] = "cropi") -> None:
    """Write a stage's selection (or the whole pool) as verl RLHFDataset parquet.

    The pool comes from the data section of the run's own config.yaml. Rows keep the cropi id in
    extra_info.cropi_id, so `CropiCurriculumSampler` (see docs/scaling.md) can serve each stage's
    selection from the pool file inside verl.
    """
    from cropi.integrations.verl import export_pool_verl, export_selection_verl, selection_stages

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
