"""verl integration on hand-built run directories (no model): parquet export, curriculum sampler.

The tests at the end run against verl's real curriculum interface (verl <= 0.7, which still has
``verl.experimental.dataset.sampler``); they are skipped when it is not importable.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cropi.config import DataConfig, ModelConfig, RunConfig
from cropi.curriculum.rundir import RunDir
from cropi.data.io import load_prompts, save_prompts
from cropi.data.schema import PromptRecord
from cropi.integrations.verl import export_pool_verl, export_selection_verl, selection_stages
from cropi.select import write_selection
from cropi.utils.errors import CropiError

N_POOL = 12
STAGE0 = ["p003", "p000", "p007", "p010", "p005"]
STAGE1 = ["p001", "p011", "p004"]


def _pool(n: int = N_POOL, prefix: str = "p") -> list[PromptRecord]:
    return [PromptRecord(id=f"{prefix}{i:03d}", prompt=[{"role": "user", "content": f"What is {i}+{i}?"}],
                         answer=str(2 * i), source=("arith", "logic")[i % 2],
                         level=None if i % 3 == 0 else str(i % 3),
                         meta={"verifier": "math", "tag": i}) for i in range(n)]


def make_run(root: Path, pool: list[PromptRecord] | None = None, system_prompt: str | None = None,
             stages: dict[int, list[str]] | None = None) -> Path:
    """A run directory: config.yaml naming a pool and a target file, and selections."""
    pool = _pool() if pool is None else pool
    data = root.parent / f"{root.name}_data"
    save_prompts(pool, data / "pool.jsonl")
    save_prompts(_pool(2, "t"), data / "target.jsonl")
    cfg = RunConfig(model=ModelConfig(system_prompt=system_prompt),
                    data=DataConfig(suite=None, pool=str(data / "pool.jsonl"),
                                    targets={"t": str(data / "target.jsonl")}))
    run = RunDir(root)
    run.write_config(cfg)
    for m, ids in ({0: STAGE0} if stages is None else stages).items():
        write_selection(run.selection(m), "influence", len(ids), ids, {})
    return root


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


# --- export ---------------------------------------------------------------------------------
def test_export_selection_rows_in_selection_order(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "verl" / "train.parquet"
    assert export_selection_verl(run_dir, 0, out, data_source="openai/gsm8k") == len(STAGE0)
    rows = pq.read_table(out).to_pylist()
    assert [r["extra_info"]["cropi_id"] for r in rows] == STAGE0
    by_id = {r.id: r for r in _pool()}
    for i, row in enumerate(rows):
        rec = by_id[row["extra_info"]["cropi_id"]]
        assert row["data_source"] == "openai/gsm8k"
        assert row["prompt"] == rec.prompt
        assert row["ability"] == "math"
        assert row["reward_model"] == {"style": "rule", "ground_truth": rec.answer}
        info = row["extra_info"]
        assert (info["index"], info["split"], info["cropi_stage"]) == (i, "train", 0)
        assert (info["cropi_source"], info["cropi_level"]) == (rec.source, rec.level)
        assert json.loads(info["cropi_meta"]) == rec.meta


def test_export_round_trips_through_the_verl_converter(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel.parquet"
    export_selection_verl(run_dir, 0, out)
    by_id = {r.id: r for r in _pool()}
    for converter in ("verl", "auto"):
        back = load_prompts(out, converter=converter)
        assert [r.id for r in back] == STAGE0
        assert back == [by_id[i] for i in STAGE0]  # id, prompt, answer, source, level, meta


def test_export_prepends_the_runs_system_prompt(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run", system_prompt="Answer with a number.")
    out = tmp_path / "sel.parquet"
    export_selection_verl(run_dir, 0, out)
    rows = pq.read_table(out).to_pylist()
    assert all(r["prompt"][0] == {"role": "system", "content": "Answer with a number."} for r in rows)
    back = load_prompts(out, converter="verl")
    by_id = {r.id: r for r in _pool()}
    assert [(r.id, r.answer) for r in back] == [(i, by_id[i].answer) for i in STAGE0]
    assert [r.prompt[1:] for r in back] == [by_id[i].prompt for i in STAGE0]


def test_export_pool_writes_every_prompt_in_pool_order(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pool.parquet"
    assert export_pool_verl(run_dir, out) == N_POOL
    rows = pq.read_table(out).to_pylist()
    assert [r["extra_info"]["cropi_id"] for r in rows] == [r.id for r in _pool()]
    assert {r["extra_info"]["cropi_stage"] for r in rows} == {None}


def test_export_is_atomic(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out" / "sel.parquet"
    export_selection_verl(run_dir, 0, out)
    before = out.read_bytes()

    def broken(table: Any, where: Any, **kw: Any) -> None:
        Path(where).write_bytes(b"half a parquet file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        export_selection_verl(run_dir, 0, out)
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["sel.parquet"]  # no stray temp file


def test_export_errors(run_dir: Path, tmp_path: Path) -> None:
    write_selection(RunDir(run_dir).selection(2), "random", 2, ["p001", "p002"], {})
    with pytest.raises(CropiError, match=r"stage 1 has no selection.*\[0, 2\]"):
        export_selection_verl(run_dir, 1, tmp_path / "a.parquet")
    with pytest.raises(CropiError, match=r"a\.jsonl.*extension '\.jsonl'"):
        export_selection_verl(run_dir, 0, tmp_path / "a.jsonl")
    bare = tmp_path / "bare"
    write_selection(RunDir(bare).selection(0), "random", 1, ["p001"], {})
    with pytest.raises(CropiError, match="has no config.yaml"):
        export_selection_verl(bare, 0, tmp_path / "a.parquet")
    write_selection(RunDir(run_dir).selection(3), "random", 2, ["p001", "zzz"], {})
    with pytest.raises(CropiError, match=r"selection\.json.*1 of 2 selected ids are not in the run's pool.*zzz"):
        export_selection_verl(run_dir, 3, tmp_path / "a.parquet")
    write_selection(RunDir(run_dir).selection(4), "random", 0, [], {})
    with pytest.raises(CropiError, match="selects no prompts"):
        export_selection_verl(run_dir, 4, tmp_path / "a.parquet")
    assert not list(tmp_path.glob("a.*"))
    assert selection_stages(run_dir) == [0, 2, 3, 4]


# --- sampler --------------------------------------------------------------------------------
class FrameDataset:
    """Stands in for verl's RLHFDataset: rows in an HF ``datasets.Dataset`` named ``dataframe``."""

    def __init__(self, path: Path) -> None:
        import datasets

        self.dataframe = datasets.Dataset.from_list(pq.read_table(path).to_pylist())

    def __len__(self) -> int:
        return len(self.dataframe)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataframe[i]


@pytest.fixture()
def dataset(run_dir: Path, tmp_path: Path) -> FrameDataset:
    """The run's whole pool exported for verl, in a scrambled row order."""
    out = tmp_path / "pool.parquet"
    export_pool_verl(run_dir, out)
    table = pq.read_table(out)
    pq.write_table(table.take([(5 * i + 3) % N_POOL for i in range(N_POOL)]), out)
    return FrameDataset(out)


def _cfg(run_dir: Path, **opts: Any) -> dict[str, Any]:
    seed = opts.pop("seed", None)
    return {"seed": seed, "dataloader_num_workers": 0, "sampler": {"cropi_run_dir": str(run_dir), **opts}}


def _sampler(dataset: Any, run_dir: Path, **opts: Any) -> Any:
    from cropi.integrations.verl import CropiCurriculumSampler

    return CropiCurriculumSampler(data_source=dataset, data_config=_cfg(run_dir, **opts))


def _ids(dataset: FrameDataset, indices: list[int]) -> list[str]:
    return [dataset[i]["extra_info"]["cropi_id"] for i in indices]


def test_sampler_yields_the_selection_shuffled_and_cycles(dataset: FrameDataset, run_dir: Path) -> None:
    sampler = _sampler(dataset, run_dir, seed=1)
    assert (sampler.stage, len(sampler)) == (0, len(STAGE0))
    drawn = list(itertools.islice(iter(sampler), 3 * len(STAGE0)))
    cycles = [_ids(dataset, drawn[i:i + len(STAGE0)]) for i in range(0, len(drawn), len(STAGE0))]
    assert all(sorted(c) == sorted(STAGE0) for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1  # reshuffled per cycle
    assert sampler.order(0) == sampler.order(0) and sampler.order(0) != sampler.order(1)


def test_sampler_order_is_fixed_by_the_seed(dataset: FrameDataset, run_dir: Path) -> None:
    def draw(**opts: Any) -> list[int]:
        return list(itertools.islice(iter(_sampler(dataset, run_dir, **opts)), 20))

    assert draw(seed=3) == draw(seed=3)
    assert draw(seed=3) != draw(seed=4)
    assert draw(seed=4, cropi_seed=3) == draw(seed=3)  # the sampler's own seed wins
    assert draw() == draw(seed=0)


def test_update_switches_to_a_newer_stage(dataset: FrameDataset, run_dir: Path) -> None:
    sampler = _sampler(dataset, run_dir, seed=0)
    it = iter(sampler)
    first = _ids(dataset, [next(it) for _ in range(2)])
    assert set(first) <= set(STAGE0)
    sampler.update(batch=None)  # nothing new: no change
    assert sampler.stage == 0 and sampler.state_dict() == {"stage": 0, "cycle": 0, "offset": 2}
    write_selection(RunDir(run_dir).selection(1), "influence", len(STAGE1), STAGE1, {})
    sampler.update(batch=None)
    assert (sampler.stage, len(sampler)) == (1, len(STAGE1))
    after = _ids(dataset, [next(it) for _ in range(2 * len(STAGE1))])  # the same iterator
    assert sorted(after[:3]) == sorted(STAGE1) and sorted(after[3:]) == sorted(STAGE1)


def test_pinned_stage_ignores_newer_selections(dataset: FrameDataset, run_dir: Path) -> None:
    write_selection(RunDir(run_dir).selection(1), "influence", len(STAGE1), STAGE1, {})
    assert _sampler(dataset, run_dir).stage == 1  # default: the latest stage
    sampler = _sampler(dataset, run_dir, cropi_stage=0)
    write_selection(RunDir(run_dir).selection(2), "influence", 1, ["p002"], {})
    sampler.update()
    assert sampler.stage == 0 and sorted(_ids(dataset, sampler.indices)) == sorted(STAGE0)


def test_state_dict_resumes_the_same_sequence(dataset: FrameDataset, run_dir: Path) -> None:
    a = _sampler(dataset, run_dir, seed=5)
    it = iter(a)
    for _ in range(7):
        next(it)
    state = a.state_dict()
    rest = [next(it) for _ in range(9)]
    b = _sampler(dataset, run_dir, seed=5)
    b.load_state_dict(json.loads(json.dumps(state)))
    assert list(itertools.islice(iter(b), 9)) == rest


def test_sampler_in_a_torch_dataloader(dataset: FrameDataset, run_dir: Path) -> None:
    from torch.utils.data import DataLoader

    sampler = _sampler(dataset, run_dir, seed=2)
    loader = DataLoader(list(range(len(dataset))), batch_size=2, sampler=sampler, num_workers=0,
                        drop_last=True)
    assert len(loader) == len(STAGE0) // 2
    batches = [b.tolist() for b in itertools.islice(iter(loader), 5)]
    assert sorted(_ids(dataset, sum(batches, [])[:5])) == sorted(STAGE0)


def test_ids_fall_back_to_the_verl_converter_rule(tmp_path: Path) -> None:
    """A pool loaded from plain verl rows has ids ``<data_source>-<index>``; so does the sampler."""
    rows = [{"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": f"q{i}"}],
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(i)},
             "extra_info": {"index": 100 + i, "split": "train"}} for i in range(6)]
    pool = load_prompts(_write_rows(rows, tmp_path / "gsm8k.parquet"))
    run_dir = make_run(tmp_path / "run", pool=pool,
                       stages={0: ["openai/gsm8k-104", "openai/gsm8k-101"]})
    sampler = _sampler(rows, run_dir)
    assert sorted(sampler.indices) == [1, 4]


def _write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_sampler_errors(dataset: FrameDataset, run_dir: Path, tmp_path: Path) -> None:
    from cropi.integrations.verl import CropiCurriculumSampler

    with pytest.raises(CropiError, match="data.sampler.cropi_run_dir.*is not set"):
        CropiCurriculumSampler(dataset, {"sampler": {}})
    with pytest.raises(CropiError, match="dataloader_num_workers.*is 8.*set it to 0"):
        CropiCurriculumSampler(dataset, {**_cfg(run_dir), "dataloader_num_workers": 8})
    with pytest.raises(CropiError, match="does not exist"):
        _sampler(dataset, tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CropiError, match="has no stage with a selection.json"):
        _sampler(dataset, empty)
    with pytest.raises(CropiError, match="stage_007.*selection.json.*does not exist"):
        _sampler(dataset, run_dir, cropi_stage=7)
    small = [dataset[i] for i in range(len(dataset)) if dataset[i]["extra_info"]["cropi_id"] != "p007"]
    with pytest.raises(CropiError, match=r"stage_000.*1 of 5 selected ids are not in the verl dataset.*p007"):
        _sampler(small, run_dir)
    with pytest.raises(CropiError, match="dataset rows 0 and 1 both map to cropi id"):
        _sampler([dataset[0], dataset[0]], run_dir)
    sampler = _sampler(dataset, run_dir)  # a bad newer stage fails loudly at update()
    write_selection(RunDir(run_dir).selection(1), "influence", 1, ["nope"], {})
    with pytest.raises(CropiError, match="stage_001.*not in the verl dataset"):
        sampler.update()


# --- against verl's real curriculum interface (verl <= 0.7) ----------------------------------
def _verl_sampler_module() -> Any:
    return pytest.importorskip("verl.experimental.dataset.sampler",
                               reason="needs verl <= 0.7 (the curriculum sampler interface)")


def test_real_verl_interface(run_dir: Path, tmp_path: Path) -> None:
    """Create the sampler the way verl 0.7's ``create_rl_sampler`` does, from verl's own data
    config, over verl's own RLHFDataset reading the exported pool, then call ``update`` as its
    trainer does after a step."""
    verl_sampler = _verl_sampler_module()
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.utils.import_utils import load_extern_object

    import cropi.integrations.verl_sampler as ours

    assert ours.VERL_BASE
    config_dir = Path(verl_sampler.__file__).parents[2] / "trainer" / "config" / "data"
    data_config = OmegaConf.merge(OmegaConf.load(config_dir / "legacy_data.yaml"), {
        "dataloader_num_workers": 0, "seed": 11, "filter_overlong_prompts": False,
        "cache_dir": str(tmp_path / "cache"),
        "sampler": {"class_path": "pkg://cropi.integrations.verl", "class_name": "CropiCurriculumSampler",
                    "cropi_run_dir": str(run_dir)},
    })
    OmegaConf.set_struct(data_config, True)
    train = tmp_path / "pool.parquet"
    export_pool_verl(run_dir, train)
    try:
        from verl.utils.dataset.rl_dataset import RLHFDataset
    except ImportError as exc:  # the dataset module needs more of verl's stack than the sampler
        pytest.skip(f"verl's RLHFDataset is not importable: {exc}")
    dataset = RLHFDataset(data_files=str(train), tokenizer=None, config=data_config)

    # the curriculum branch of verl 0.7's create_rl_sampler
    cls = load_extern_object(data_config.sampler.class_path, data_config.sampler.class_name)
    sampler = cls(data_source=dataset, data_config=data_config)
    assert isinstance(sampler, verl_sampler.AbstractSampler)
    assert isinstance(sampler, verl_sampler.AbstractCurriculumSampler)
    assert data_config.get("dataloader_num_workers", 8) == 0

    drawn = list(itertools.islice(iter(sampler), len(STAGE0)))
    assert sorted(dataset[i]["extra_info"]["cropi_id"] for i in drawn) == sorted(STAGE0)
    assert sampler.seed == 11
    write_selection(RunDir(run_dir).selection(1), "influence", len(STAGE1), STAGE1, {})
    batch = DataProto.from_single_dict({"dummy_tensor": torch.zeros(2, 1)})
    sampler.update(batch=batch)
    assert (sampler.stage, len(sampler)) == (1, len(STAGE1))
