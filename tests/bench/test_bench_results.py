"""cropi.bench.results: the result files every benchmark writes (header, then its numbers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cropi.bench import results


def test_write_result_puts_the_header_first_and_reads_back(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = results.write_result("x", {"rows": [[1, 2.5]]}, tmp_path / "r")
    assert path == tmp_path / "r" / "x.json" == results.result_path("x", tmp_path / "r")
    data = json.loads(path.read_text())
    assert list(data)[:len(results.HEADER_KEYS)] == list(results.HEADER_KEYS)
    assert data["schema"] == results.SCHEMA and data["benchmark"] == "x"
    assert data["env"]["OMP_NUM_THREADS"] == "1" and data["rows"] == [[1, 2.5]]
    assert {"commit", "dirty"} <= set(data["git"])
    assert {"cpu_model", "cores", "load_avg_start", "idle_at_start", "torch_threads", "torch"} \
        <= set(data["machine"])
    assert results.load_result("x", tmp_path / "r") == data
    assert results.load_result("missing", tmp_path / "r") is None
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_header_keys_are_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        results.write_result("x", {"date": "today"}, tmp_path)
    assert not (tmp_path / "x.json").exists()


def test_the_default_folder_follows_the_module_global(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    assert results.result_path("y") == tmp_path / "y.json"
    assert results.lock_path("y") == tmp_path / ".y.lock"
    assert results.write_result("y", {}).parent == tmp_path


def test_benchmarks_write_next_to_themselves() -> None:
    root = Path(__file__).resolve().parents[2]
    if os.environ.get("CROPI_BENCH_RESULTS"):
        pytest.skip("CROPI_BENCH_RESULTS is set")
    assert results.RESULTS == root / "benchmarks" / "results"


def test_print_table(capsys: pytest.CaptureFixture[str]) -> None:
    results.print_table(["name", "s"], [["a", 1.23456], ["bb", 123456.7]])
    assert capsys.readouterr().out.splitlines() == ["name       s", "----  ------",
                                                    "   a   1.235", "  bb  123457"]
