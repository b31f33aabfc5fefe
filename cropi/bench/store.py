"""The resumable result store of a comparison benchmark (benchmarks/acceleration.py).

One result file (:mod:`cropi.bench.results`: the usual header, then ``{"format": 1, "runs": {arm:
{seed: record}}, "shared_events": [...]}``) holds the compact record
(:func:`cropi.report.compact.export_run`) of every finished arm x seed, and the comparison's own
events (beta's shared ``rollouts``, ROOT/metrics.jsonl) that a report charges on the wall-clock
axis. Several processes (one per seed) update it under its lock. The file is committed: an arm x
seed with a record is never run again; :meth:`RunStore.restore` writes it back into a comparison
directory for the report instead, on this machine or another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cropi.bench.results import lock_path, machine_kind, result_path, write_result
from cropi.report.compact import restore_run
from cropi.utils.errors import CropiError
from cropi.utils.io import atomic_write_text, read_jsonl
from cropi.utils.locking import locked

FORMAT = 1


def dtype_settings(cfg: Any) -> dict[str, Any]:
    """A run config's settings that pick a number type by the CPU when left ``auto`` (None for the
    autocast)."""
    return {"rollout.dtype": cfg.rollout.dtype, "train.generation_dtype": cfg.train.generation_dtype,
            "gradient.autocast_bf16": cfg.gradient.autocast_bf16}


def resolved_dtypes(settings: Mapping[str, Any] | None, bf16_native: bool) -> dict[str, str]:
    """``settings`` (:func:`dtype_settings`) as a CPU with or without native bf16 resolves them:
    ``auto`` (None for the autocast) is bf16 there and fp32 elsewhere, as ``bf16_is_fast``
    decides for every one of them."""
    auto = "bf16" if bf16_native else "fp32"
    settings = settings or dict.fromkeys(("rollout.dtype", "train.generation_dtype", "gradient.autocast_bf16"))
    out = {}
    for key, value in settings.items():
        if key == "gradient.autocast_bf16":
            value = auto if value is None else ("bf16" if value else "fp32")
        out[key] = auto if value in (None, "auto") else str(value)
    return out


def store_name(name: str) -> str:
    """The store's stem for a benchmarks/acceleration.py ``--name``: results/acceleration_runs_NAME.json."""
    return f"acceleration_runs_{name}"


class RunStore:
    """The store in result file ``FOLDER/STEM.json`` (FOLDER: :data:`cropi.bench.results.RESULTS`)."""

    def __init__(self, stem: str, folder: Path | None = None) -> None:
        self.stem, self.folder = stem, folder

    @property
    def path(self) -> Path:
        return result_path(self.stem, self.folder)

    def load(self) -> dict[str, Any]:
        """The whole file (header included); {} when there is none."""
        path = self.path
        return json.loads(path.read_text()) if path.exists() else {}

    def runs(self) -> dict[str, dict[str, Any]]:
        """arm -> seed (str) -> compact record ({} when none)."""
        return self.load().get("runs", {})

    def _write(self, runs: dict[str, Any], shared: list[dict[str, Any]],
               draws: dict[str, list[dict[str, Any]]] | None = None) -> Path:
        payload = {"format": FORMAT, "runs": runs, "shared_events": shared}
        if draws:
            payload["draw_events"] = draws
        return write_result(self.stem, payload, self.folder)

    def save_record(self, arm: str, seed: int, record: dict[str, Any]) -> Path:
        """Add one arm x seed to the file (read-modify-write under its lock), stamped with the
        kind of machine it ran on (``machine``: :func:`cropi.bench.results.machine_kind`)."""
        with locked(lock_path(self.stem, self.folder)):
            old = self.load()
            runs = old.get("runs", {})
            runs.setdefault(arm, {})[str(seed)] = {**record, "machine": machine_kind()}
            return self._write(runs, old.get("shared_events", []), old.get("draw_events"))

    def check_machine(self, settings: Mapping[str, Any] | None = None) -> None:
        """Refuse (one-line CropiError) to add runs made on this machine to records made on a CPU
        whose bf16 support would make a run of the comparison compute in another number type: a
        seed's arms would no longer share their draw's numerics. ``settings``: the comparison's
        dtype settings (:func:`dtype_settings`); each ``auto`` among them follows the CPU, so with
        none left ``auto`` any CPU is accepted (None: treat every one as ``auto``). Records from
        before the stamp are not checked."""
        here = machine_kind()
        for arm, seeds in self.runs().items():
            for seed, record in seeds.items():
                there = record.get("machine")
                if there is None:
                    continue
                a, b = (resolved_dtypes(settings, m["bf16_native"]) for m in (there, here))
                if a != b:
                    which = ", ".join(f"{k} {a[k]} there, {b[k]} here" for k in a if a[k] != b[k])
                    raise CropiError(
                        f"a stored run's CPU has bf16_native {there.get('bf16_native')} "
                        f"({there.get('cpu_capability')}), this one {here['bf16_native']} "
                        f"({here['cpu_capability']}): its runs would compute in another dtype ({which})",
                        file=self.path, field=f"runs.{arm}.{seed}.machine.bf16_native",
                        fix="continue on a machine like the stored runs', fix every dtype setting "
                            "(e.g. --set rollout.dtype=fp32 --set train.generation_dtype=fp32 "
                            "--set gradient.autocast_bf16=false), or pass --mixed-machines")

    def save_shared(self, root: Path) -> None:
        """Keep the comparison's own events (ROOT/metrics.jsonl) in an existing file, so that a
        report rebuilt elsewhere charges their seconds on the wall-clock axis."""
        events = read_jsonl(Path(root) / "metrics.jsonl")
        draws = {str(seed): read_jsonl(path) for seed, path in _draw_metrics(Path(root))}
        if not events and not draws:
            return
        with locked(lock_path(self.stem, self.folder)):
            old = self.load()
            draws = {**old.get("draw_events", {}), **draws} if old else draws
            if old and (old.get("shared_events") != events or old.get("draw_events", {}) != draws):
                self._write(old.get("runs", {}), events or old.get("shared_events", []), draws)

    def restore(self, root: Path, arms: list[str], seeds: list[int]) -> list[str]:
        """Restore into comparison ROOT the records of arm x seed whose run directory is absent
        (and the shared events, when ROOT has none); returns the arm x seed restored or present
        (``"arm/seed"``)."""
        root = Path(root)
        store = self.load()
        runs = store.get("runs", {})
        metrics = root / "metrics.jsonl"
        if store.get("shared_events") and not metrics.exists():
            atomic_write_text(metrics, "".join(json.dumps(e) + "\n" for e in store["shared_events"]))
        for seed, events in store.get("draw_events", {}).items():  # each seed's own beta draw
            path = root / "draws" / f"seed_{seed}" / "metrics.jsonl"
            if events and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in events))
        done = []
        for arm in arms:
            for seed in seeds:
                record = runs.get(arm, {}).get(str(seed))
                run = root / "arms" / arm / f"seed_{seed}"
                if record is not None:
                    done.append(f"{arm}/{seed}")
                    if not (run / "metrics.jsonl").exists():
                        restore_run(record, run)
        return done


def _draw_metrics(root: Path) -> list[tuple[int, Path]]:
    """(seed, metrics.jsonl) of each seed's own beta draw under ``ROOT/draws/seed_S``."""
    folder = root / "draws"
    if not folder.is_dir():
        return []
    out = []
    for path in folder.glob("seed_*/metrics.jsonl"):
        try:
            out.append((int(path.parent.name.removeprefix("seed_")), path))
        except ValueError:
            continue
    return sorted(out)
