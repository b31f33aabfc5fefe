"""cropi from Python: the CLI's pipeline as functions over the same objects (docs/python.md).

Every function here composes what the ``cropi`` commands run: a config is a
:class:`~cropi.config.RunConfig` (:func:`make_config` merges sections and dotted keys like
``cropi ... --set``), a run is a :class:`~cropi.curriculum.phases.Run` over a run directory, and
rollouts, scores, selections and the curriculum are :func:`~cropi.curriculum.phases.phase_rollouts`,
:func:`~cropi.curriculum.scoring.phase_score`, :func:`~cropi.curriculum.scoring.phase_select` and
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

from cropi.config import DataConfig, RunConfig, from_dict, read_config_data, to_dict
from cropi.data.schema import PromptRecord
from cropi.utils.errors import CropiError

if TYPE_CHECKING:  # torch-heavy: imported by the functions that need them
    import pandas as pd
    import pyarrow as pa

    from cropi.curriculum.phases import Run
    from cropi.rollout.store import PromptRollouts

__all__ = ["Selection", "load_backends", "make_config", "merge_sections", "open_run", "resolve_model",
           "run_curriculum", "sample_rollouts", "set_dotted",
           "score_pool", "select_prompts"]

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


def make_config(base: RunConfig | str | Path | Mapping[str, Any] | None = None, *,
                sets: Mapping[str, Any] | None = None, **sections: Any) -> RunConfig:
    """A validated :class:`RunConfig`, lowest to highest precedence:

    1. ``base``: a RunConfig, a YAML file (as ``cropi run CONFIG``) or a mapping; default: the defaults;
    2. ``sections``: top-level keys (``name="x"``) or whole sections merged key by key
       (``rollout={"k_pool": 4}``);
    3. ``sets``: dotted keys, like ``--set`` (``{"train.steps_per_stage": 5}``).

    The optional engines the config names (``rollout.backend=vllm``, ``score.backend=ray``) are
    imported, as the CLI does.
    """
    if base is None:
        data = to_dict(RunConfig())
    elif isinstance(base, RunConfig):
        data = to_dict(base)
    elif isinstance(base, Mapping):
        data = merge_sections(to_dict(RunConfig()), base)
    else:
        data = merge_sections(to_dict(RunConfig()), read_config_data(base))
    data = merge_sections(data, sections)
    for dotted, value in (sets or {}).items():
        set_dotted(data, dotted, value)
    cfg = from_dict(RunConfig, data)
    load_backends(cfg)
    return cfg


def load_backends(cfg: RunConfig) -> None:
    """Import the optional engines ``cfg`` names; each registers itself with the layer it serves."""
    if cfg.rollout.backend == "vllm":
        import cropi.scale.vllm  # noqa: F401
    if cfg.score.backend == "ray":
        import cropi.scale.ray_score  # noqa: F401


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
    run = Run(dataclasses.replace(config, data=data), overwrite=overwrite, **where)
    run.__dict__["data"] = sets  # the cached_property, filled with the records given
    return run


def _as_run(run: Run | RunConfig) -> Run:
    return open_run(run) if isinstance(run, RunConfig) else run


def _derived(run: Run, **changes: Mapping[str, Any]) -> Run:
    """The same run directory and data with some config fields changed (section -> fields)."""
    from cropi.curriculum.phases import Run

    cfg = run.cfg
    for section, fields in changes.items():
        fields = {k: v for k, v in fields.items() if v is not None}
        if fields:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **fields)})
    if cfg is run.cfg:
        return run
    out = Run(cfg, overwrite=run.overwrite, root=run.dir.root, rollouts_root=run.dir.rollouts_root)
    if "data" in run.__dict__:
        out.__dict__["data"] = run.__dict__["data"]
    return out


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


def score_pool(run: Run | RunConfig, stage: int = 0, *,
               format: TableFormat = "pandas") -> pd.DataFrame | pa.Table:  # noqa: A002
    """Per-target influence scores of every pool prompt at the weights of ``stage``, as
    ``cropi score``: one row per pool prompt (id, source, level, pass_rate, zero_grad,
    ``score_<target>``; NaN for prompts whose rewards are all equal).

    Samples the rollouts first when missing; a stage already scored is read back. Fused scores
    and ranks depend on the budget of a selection: :func:`select_prompts` returns them.
    """
    from cropi.curriculum.phases import phase_rollouts
    from cropi.curriculum.scoring import phase_score
    from cropi.influence.scores import read_scores

    run = _as_run(run)
    run.model_path(stage)  # a stage out of range or without its checkpoint fails before any work
    sets = phase_rollouts(run)
    phase_score(run, stage, sets)
    run.save_config()
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
    ``score.fusion``) for that budget. Writes ``selection.json``; a stored selection made
    differently is refused unless the run was opened with ``overwrite=True``.
    """
    from cropi.curriculum.scoring import load_run_rollouts, phase_select
    from cropi.select import get_policy

    run = _as_run(run)
    name = policy or run.cfg.select.policy
    get_policy(name)  # an unknown name fails here, naming the registered ones
    try:  # a policy select.policy accepts is recorded in config.yaml, as `cropi select --policy`
        dataclasses.replace(run.cfg.select, policy=name)
        in_config = True
    except CropiError:  # a policy registered from Python: passed to the selection only
        in_config = False
    run = _derived(run, select={"ratio": ratio, "policy": name if in_config else None},
                   score={"fusion": fusion})
    run.check_stage(stage)
    pool = load_run_rollouts(run)["pool"]
    info = phase_select(run, stage, pool, policy=name)
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
    Returns ``{"run_dir", "seconds", "final_model"}`` (and ``"report"`` with ``report=True``)."""
    from cropi.curriculum.loop import run_curriculum as _run_curriculum

    run = _as_run(run)
    summary = _run_curriculum(run)
    run.save_config()
    if report:
        from cropi.report import build_report

        summary["report"] = str(build_report(run.dir.root))
    return summary
