"""cropi from Python: the CLI's pipeline as functions over the same objects (docs/python.md).

Every function here composes what the ``cropi`` commands run: a config is a
:class:`~cropi.config.RunConfig` (:func:`make_config` merges sections and dotted keys like
``cropi ... --set``), a run is a :class:`~cropi.curriculum.phases.Run` over a run directory, and
rollouts, scores, selections and the curriculum are :func:`~cropi.curriculum.phases.phase_rollouts`,
:func:`~cropi.curriculum.score_phase.phase_score`, :func:`~cropi.curriculum.select_phase.phase_select` and
:func:`~cropi.curriculum.loop.run_curriculum`. A run made here continues with the CLI (and back)
when its data are named in the config (files or ``hf:`` names); sets given as Python lists are
recorded in ``config.yaml`` as ``python:...`` placeholders, which the CLI cannot reload.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from cropi.config import DataConfig, RunConfig, from_dict, load_config, read_config_data, to_dict
from cropi.data.schema import PromptRecord
from cropi.utils.errors import CropiError

if TYPE_CHECKING:  # torch-heavy: imported by the functions that need them
    import pandas as pd
    import pyarrow as pa

    from cropi.curriculum.phases import Run
    from cropi.influence.pipeline import Timings
    from cropi.rollout.store import PromptRollouts

__all__ = ["Selection", "compare", "evaluate_model", "make_config", "merge_sections", "open_run",
           "parse_sets", "resolve_model", "run_curriculum", "sample_rollouts", "score_pool", "score_stage",
           "select_prompts", "set_dotted", "write_report"]

TableFormat = Literal["pandas", "arrow"]


# ----------------------------------------------------------------------------- config and run
def merge_sections(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base`` section by section (only the keys ``over`` names change;
    ``targets`` and ``tests`` are replaced whole)."""
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), dict) and key not in ("targets", "tests")
        out[key] = merge_sections(out[key], value) if nested else (dict(value) if isinstance(value, Mapping) else value)
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``dotted = "a.b"`` (as ``--set a.b=value``)."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise CropiError(f"{dotted!r} does not name a config field", field=dotted)
    cur[keys[-1]] = value


def parse_sets(items: Sequence[str] | None) -> list[tuple[str, Any]]:
    """``["a.b=VALUE", ...]`` (as ``--set``) to ``[("a.b", value), ...]``; values are parsed as YAML."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise CropiError(f"--set {item!r} is not KEY=VALUE", fix="e.g. --set rollout.k_pool=4")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def make_config(base: RunConfig | str | Path | Mapping[str, Any] | None = None, *,
                sets: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None, resume: bool = False,
                **sections: Any) -> RunConfig:
    """A validated :class:`RunConfig`: the one config layering of cropi (the CLI uses it too).
    Lowest to highest precedence:

    0. with ``resume``: the stored ``config.yaml`` of the run that ``out_dir``/``name`` (as the
       layers below set them) designate, when that run exists; else the defaults;
    1. ``base``: a RunConfig, a YAML file (as ``cropi run CONFIG``) or a mapping;
    2. ``sections``: top-level keys (``name="x"``) or whole sections merged key by key
       (``rollout={"k_pool": 4}``);
    3. ``sets``: dotted keys applied in order, like ``--set`` (``{"train.steps_per_stage": 5}``;
       a value None sets None).

    Names (policy, scorer, projector, backends) are checked against the registries.
    """
    if isinstance(base, RunConfig):
        user: dict[str, Any] = to_dict(base)
    elif isinstance(base, Mapping):
        user = dict(base)
    elif base is not None:
        load_config(base)  # validates the file on its own, with its path in any error
        user = read_config_data(base)
    else:
        user = {}
    pairs = list(sets.items() if isinstance(sets, Mapping) else sets or [])
    data = _layered(to_dict(RunConfig()), user, sections, pairs)
    stored = Path(str(data["out_dir"])) / str(data["name"]) / "config.yaml"
    if resume and stored.is_file():
        data = _layered(to_dict(load_config(stored)), user, sections, pairs)
    cfg = from_dict(RunConfig, data)
    from cropi.curriculum.names import check_names

    check_names(cfg)
    return cfg


def _layered(data: dict[str, Any], user: Mapping[str, Any], sections: Mapping[str, Any],
             pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    data = merge_sections(merge_sections(data, user), sections)
    for dotted, value in pairs:
        set_dotted(data, dotted, value)
    return data


def resolve_model(path: str = "default") -> str:
    """A model folder for ``path`` ('default': the embedded SmolLM2-135M-Instruct, converted once)."""
    from cropi.model.loading import resolve_model_path

    return resolve_model_path(path)


def _placeholder(records: Sequence[PromptRecord]) -> str:
    from cropi.data.io import dataset_fingerprint

    return f"python:{len(records)} records {dataset_fingerprint(list(records))[:12]}"


def open_run(config: RunConfig, *, pool: Sequence[PromptRecord] | None = None,
             targets: Mapping[str, Sequence[PromptRecord]] | None = None,
             tests: Mapping[str, Sequence[PromptRecord]] | None = None,
             root: str | Path | None = None, rollouts_root: str | Path | None = None,
             overwrite: bool = False) -> Run:
    """The run directory ``config.out_dir/config.name`` (or ``root``) as the CLI opens it.

    ``rollouts_root``: beta's rollouts of another run (its ``run.dir.rollouts_root``), shared as
    ``cropi compare`` shares them between arms; they are reused when they were made with the same
    model, data and rollout settings (checked), else this run refuses them.

    Data come from ``config.data`` (suite, files, ``hf:`` names) unless ``pool`` is given: then
    the run uses these records, the ``targets`` and ``tests`` given with them (none when omitted;
    scoring needs at least one target set), and ``config.yaml`` records them as ``python:``
    placeholders. ``overwrite``: recompute outputs whose spec differs instead of failing.
    """
    from cropi.curriculum.phases import Run
    from cropi.data.sets import DataSets

    if pool is None and (targets is not None or tests is not None):
        raise CropiError("targets or tests given without a pool",
                         fix="give pool= with them, or name every set in config.data")
    where = {"root": Path(root) if root else None,
             "rollouts_root": Path(rollouts_root) if rollouts_root else None}
    if pool is None:
        return Run(config, overwrite=overwrite, **where)
    from cropi.data.sets import _check_verifiers

    sets = DataSets(list(pool), {n: list(v) for n, v in (targets or {}).items()},
                    {n: list(v) for n, v in (tests or {}).items()})
    for name, records in {"pool": sets.pool, **sets.targets, **sets.tests}.items():
        if not records:
            raise CropiError(f"set {name!r} holds no records", fix="give at least one prompt")
        _check_verifiers(records, name)
    data = DataConfig(suite=None, seed=config.data.seed, pool=_placeholder(sets.pool),
                      targets={n: _placeholder(v) for n, v in sets.targets.items()},
                      tests={n: _placeholder(v) for n, v in sets.tests.items()},
                      converter=config.data.converter)
    return Run(dataclasses.replace(config, data=data), overwrite=overwrite, sets=sets, **where)


def _as_run(run: Run | RunConfig) -> Run:
    return open_run(run) if isinstance(run, RunConfig) else run


def _derived(run: Run, **changes: Mapping[str, Any]) -> Run:
    """The same run directory and data with some config fields changed (section -> fields)."""
    cfg = run.cfg
    for section, fields in changes.items():
        fields = {k: v for k, v in fields.items() if v is not None}
        if fields:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)})
    return run if cfg is run.cfg else run.with_config(cfg)


# ----------------------------------------------------------------------------- the pipeline
def sample_rollouts(run: Run | RunConfig) -> dict[str, list[PromptRollouts]]:
    """Beta's rollouts of the pool (``rollout.k_pool`` each) and of every target set
    (``rollout.k_target``): ``{"pool": [...], "targets/NAME": [...]}``, as ``cropi rollout``.

    Sampled once into ``RUN/rollouts/`` (resumable); a later call loads them.
    """
    from cropi.curriculum.phases import phase_rollouts

    run = _as_run(run)
    sets = phase_rollouts(run)
    run.save_config()
    return sets


def score_stage(run: Run | RunConfig, stage: int = 0) -> Timings | None:
    """Score every pool prompt at the weights of ``stage``, as ``cropi score``: samples the
    rollouts first when missing; a stage already scored is skipped (None), one scored with another
    scorer is refused, or with ``overwrite`` rescored from its stored features. Returns the
    timings (prompts, gradient and projection seconds) of the work done."""
    from cropi.curriculum.phases import phase_rollouts
    from cropi.curriculum.score_phase import phase_score

    run = _as_run(run)
    run.model_path(stage)  # a stage out of range or without its checkpoint fails before any work
    sets = phase_rollouts(run)
    timings = phase_score(run, stage, sets)
    run.save_config()
    return timings


def score_pool(run: Run | RunConfig, stage: int = 0, *,
               format: TableFormat = "pandas") -> pd.DataFrame | pa.Table:  # noqa: A002
    """Per-target influence scores of every pool prompt at the weights of ``stage``
    (:func:`score_stage`, then the stored table): one row per pool prompt (id, source, level,
    pass_rate, zero_grad, ``score_<target>``; NaN for prompts whose rewards are all equal).

    Fused scores and ranks depend on the budget of a selection: :func:`select_prompts` returns them.
    """
    from cropi.influence.scores import read_scores

    run = _as_run(run)
    score_stage(run, stage)
    table = read_scores(run.dir.scores(stage))
    return table.to_pandas() if format == "pandas" else table


@dataclass
class Selection:
    """One stage's selection: ``ids`` in selection order (best first for ranked policies).

    ``ranking``: for a scored stage, every pool prompt with its per-target scores, the fused score
    for this selection's budget and fusion, ``rank`` (1 = best; missing for zero-gradient
    prompts) and ``selected``, in rank order; None when the stage was not scored. ``info``: the
    stored ``selection.json`` (policy, budget, ratio, fusion, statistics).
    """

    stage: int
    policy: str
    budget: int
    ids: list[str]
    info: dict[str, Any]
    ranking: Any = None  # pandas.DataFrame or pyarrow.Table

    @property
    def stats(self) -> dict[str, Any]:
        return self.info["stats"]


def select_prompts(run: Run | RunConfig, stage: int = 0, *, policy: str | None = None, ratio: float | None = None,
           fusion: str | None = None, format: TableFormat = "pandas") -> Selection:  # noqa: A002
    """Select the stage's subset with any registered policy (default ``select.policy``), as
    ``cropi select``: the budget is ``round(ratio * pool)`` (default ``select.ratio``), the
    influence policy fuses the stored per-target scores with ``fusion`` (default
    ``score.fusion``) for that budget. A stage scored with another ``score.scorer`` is rescored
    from its stored features first (with ``overwrite``). Writes ``selection.json``; a stored
    selection made differently is refused unless the run was opened with ``overwrite=True``.
    """
    from cropi.curriculum.names import check_names
    from cropi.curriculum.phases import load_run_rollouts
    from cropi.curriculum.score_phase import rescore
    from cropi.curriculum.select_phase import phase_select

    run = _derived(_as_run(run), select={"ratio": ratio, "policy": policy}, score={"fusion": fusion})
    check_names(run.cfg)
    run.check_stage(stage)
    sets = load_run_rollouts(run)
    rescore(run, stage, sets)  # another scorer (with overwrite): rescored from the stored features
    pool = sets["pool"]
    info = phase_select(run, stage, pool)
    run.save_config()
    ranking = _ranking(run, stage, pool, info, format) if run.dir.scores(stage).exists() else None
    return Selection(stage=stage, policy=info["policy"], budget=int(info["budget"]), ids=list(info["ids"]),
                     info=info, ranking=ranking)


def _ranking(run: Run, stage: int, pool: list[PromptRollouts], info: dict[str, Any],
             fmt: TableFormat) -> Any:
    """Per-target scores, fused score and rank of every pool prompt for this selection's budget."""
    import numpy as np
    import pyarrow as pa

    from cropi.influence.scores import read_scores, target_scores
    from cropi.select import fuse, rank_order

    ids = [it.id for it in pool]
    scores = target_scores(read_scores(run.dir.scores(stage)), ids)
    n, method = int(info["budget"]), run.cfg.score.fusion
    fused = fuse(scores, n, method)
    order = rank_order(scores, n, method)
    rank = np.full(len(ids), -1, dtype=np.int64)
    rank[order] = np.arange(1, order.size + 1)
    chosen = set(info["ids"])
    rows = list(order) + [i for i in range(len(ids)) if rank[i] < 0]
    cols: dict[str, Any] = {
        "id": [ids[i] for i in rows], "source": [pool[i].source for i in rows],
        "pass_rate": [pool[i].pass_rate for i in rows],
        **{f"score_{t}": [float(v[i]) for i in rows] for t, v in scores.items()},
        "fused": [float(fused[i]) for i in rows],
        "rank": pa.array([int(rank[i]) if rank[i] > 0 else None for i in rows], pa.int64()),
        "selected": [ids[i] in chosen for i in rows],
    }
    table = pa.table(cols)
    return table.to_pandas() if fmt == "pandas" else table


def run_curriculum(run: Run | RunConfig, *, report: bool = False) -> dict[str, Any]:
    """The method end to end, as ``cropi run``: beta's rollouts once, then per stage score, select,
    train (TRL GRPO) and evaluate. Every phase is skipped when done, so a second call resumes.
    Returns ``{"run_dir", "seconds", "final_model"}`` (and ``"report"``, the report folder, with
    ``report=True``)."""
    from cropi.curriculum.loop import run_curriculum as _run_curriculum

    run = _as_run(run)
    summary = _run_curriculum(run)
    run.save_config()
    if report:
        summary["report"] = str(write_report(run.dir.root))
    return summary


def compare(config: RunConfig, arms: Sequence[str], seeds: Sequence[int], *, overwrite: bool = False,
            shared_rollouts: bool = False, report: bool = True) -> Path:
    """CROPI and baselines (arms: ``cropi.curriculum.names.arm_names()``) with the same seeds, step
    budget and evaluation schedule, as ``cropi compare``; every seed samples its own beta draw
    (``shared_rollouts``: one draw for all seeds, cheaper); resumable. Returns the comparison
    folder (with its report when ``report``)."""
    from cropi.curriculum.compare import run_compare

    root = run_compare(config, list(arms), list(seeds), overwrite, shared_rollouts)
    if report:
        write_report(root)
    return root


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Markdown + HTML report of a run or a comparison (default folder ``RUN_DIR/report``), as
    ``cropi report``. Returns the report folder."""
    from cropi.report import build_report

    return Path(build_report(run_dir, out))


def evaluate_model(config: RunConfig, tests: Mapping[str, Sequence[PromptRecord]] | None = None
                   ) -> dict[str, Any]:
    """Accuracy of ``config.model.path`` on test sets (default: those ``config.data`` names), greedy
    and mean@k as ``config.eval`` says, per family and level, as ``cropi eval``."""
    from cropi.curriculum.phases import load_policy
    from cropi.data.sets import load_sets
    from cropi.evaluation import evaluate

    sets = {n: list(v) for n, v in tests.items()} if tests is not None else load_sets(config.data).tests
    if not sets:
        raise CropiError("no test set to evaluate on", field="data.tests",
                         fix="give --test NAME=FILE or a built-in --suite")
    policy = load_policy(config.model.path, config)
    return evaluate(policy, sets, config.eval)


def verify_run(run_dir: str | Path) -> Any:
    """Check a run's (or comparison's) stores against their done records without writing
    anything, as ``cropi verify``: returns a :class:`cropi.curriculum.verify.RunCheck` whose
    ``problems`` say what is damaged and what a rerun would compute again (``ok`` when nothing)."""
    from cropi.curriculum.verify import verify_run as _verify_run

    return _verify_run(run_dir)
