"""The docs stand alone and their numbers can be checked.

- No file of the package, the docs or the benchmarks cites notes that are not in the repository.
- Every ``docs/concepts.md#anchor`` (or other ``.md#anchor``) pointer names an existing heading.
- Every Markdown table with measured numbers in README.md and docs/*.md says where they come from
  (``<!-- results: ... -->`` right above it, rules in benchmarks/results/README.md), and tables
  sourced from a committed file agree with it.
- Every committed result file has the header of ``cropi.bench.results.write_result``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cropi.bench.results import HEADER_KEYS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = ROOT / "benchmarks" / "results"

FORBIDDEN = re.compile(r"method\.md|architecture\.md|pilot\.md|feasibility\.md|shared/docs", re.I)
SCANNED = ("cropi", "docs", "benchmarks")
TEXT_SUFFIXES = {".py", ".md", ".json", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".html"}

NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
MEASURED = re.compile(r"\d\.\d|\d\s?x\b|\d\s?%")
COMMENT = re.compile(r"^<!--\s*results:\s*(.*?)\s*-->$")


# ------------------------------------------------------------------------------ citations
def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in SCANNED:
        files += [p for p in (ROOT / top).rglob("*")
                  if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts]
    return files


def test_no_citation_of_notes_outside_the_repository() -> None:
    hits = []
    for path in _scanned_files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "cite docs/concepts.md (or another page of docs/) instead:\n" + "\n".join(hits)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", md.read_text(), flags=re.M)}


def test_section_pointers_exist() -> None:
    pointer = re.compile(r"([\w./-]*?([\w-]+\.md))#([\w-]+)")
    bad = []
    for path in _scanned_files():
        for m in pointer.finditer(path.read_text(errors="replace")):
            name, anchor = m.group(2), m.group(3)
            target = ROOT / "README.md" if name == "README.md" else ROOT / "docs" / name
            if not target.exists() or anchor not in _anchors(target):
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not bad, "pointers to missing sections:\n" + "\n".join(bad)


def test_concepts_states_the_method() -> None:
    text = (ROOT / "docs" / "concepts.md").read_text()
    for needle in ("A_k     = (R_k - mu) / (sigma + 1e-4)", "rho_{k,t}(theta)", "g~(s) = P S g(s)",
                   "fused(s) = sum over targets v", "acceleration = s_base / s_arm",
                   "arXiv 2510.26491", "2.66x"):
        assert needle in text, f"docs/concepts.md lost {needle!r}"


# ------------------------------------------------------------------------------ tables
@dataclass
class Table:
    doc: Path
    line: int                  # 1-based line of the header row
    headers: list[str]
    rows: list[list[str]]
    comment: str | None        # the text after "results:", or None
    above: str                 # the text between the previous table/heading and the table


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_tables(text: str, doc: Path = Path("<text>")) -> list[Table]:
    lines = text.splitlines()
    tables, i, block_start, in_code = [], 0, 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("#"):
            block_start = i
        is_table = (not in_code and line.startswith("|") and i + 1 < len(lines)
                    and re.fullmatch(r"\|?[\s:|-]+\|?", lines[i + 1].strip() or "x") is not None
                    and "-" in lines[i + 1])
        if not is_table:
            i += 1
            continue
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        m = COMMENT.match(lines[j].strip()) if j >= 0 else None
        start = i + 2
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        tables.append(Table(doc, i + 1, _cells(line), [_cells(r) for r in lines[start:end]],
                            m.group(1) if m else None, "\n".join(lines[block_start:i])))
        block_start = end
        i = end
    return tables


def _numbers(cell: str) -> list[tuple[float, int]]:
    """(value, decimals) of each number in a cell; 8,192 -> (8192, 0)."""
    out = []
    for m in NUMBER.finditer(cell.replace("*", "")):
        s = m.group(0).replace(",", "")
        out.append((float(s), len(s.split(".")[1]) if "." in s else 0))
    return out


def _rounds_to(value: float, cited: float, decimals: int) -> bool:
    return abs(value - cited) <= 0.5 * 10 ** -decimals + 1e-9 * max(1.0, abs(cited))


def _matches(cited: float, decimals: int, values: list[float], percent: bool) -> bool:
    cands = values + ([100 * v for v in values] if percent else [])
    return any(_rounds_to(v, cited, decimals) for v in cands)


def _json_values(obj: Any) -> list[float]:
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)] if math.isfinite(obj) else []
    if isinstance(obj, str):
        return [v for v, _ in _numbers(obj)]
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in _json_values(x)] + \
               [v for k in obj for v, _ in _numbers(str(k))]
    if isinstance(obj, list):
        return [v for x in obj for v in _json_values(x)]
    return []


def _norm(h: str) -> str:
    return re.sub(r"\s+", " ", h.replace("*", "").replace("`", "")).strip().lower()


def _column_match(header: str, candidates: list[str]) -> int | None:
    h = _norm(header)
    for k, c in enumerate(candidates):
        c = _norm(c)
        if c == h or c.startswith(h) or h.startswith(c):
            return k
    return None


def check_against_json(table: Table, data: Any, columns: list[str] | None) -> list[str]:
    values = _json_values(data)
    cols = range(1, len(table.headers))
    if columns:
        cols = [k for k in cols if any(_norm(table.headers[k]).startswith(_norm(c)) for c in columns)]
        assert cols, f"{table.doc.name}:{table.line}: no column matches {columns}"
    errors = []
    for row in table.rows:
        for k in cols:
            cell = row[k] if k < len(row) else ""
            for cited, dec in _numbers(cell):
                if not _matches(cited, dec, values, "%" in cell):
                    errors.append(f"row {row[0]!r}, column {table.headers[k]!r}: {cited} not in the file")
    return errors


def check_against_report(table: Table, report_text: str) -> list[str]:
    sources = parse_tables(report_text)
    errors = []
    for row in table.rows:
        label = _norm(row[0])
        found = [(s, r) for s in sources for r in s.rows if r and _norm(r[0]) == label]
        if not found:
            errors.append(f"row {row[0]!r} is in no table of the report")
            continue
        src, src_row = found[0]
        compared = 0
        for k in range(1, len(table.headers)):
            sk = _column_match(table.headers[k], src.headers)
            if sk is None or sk == 0:
                continue
            compared += 1
            cell, scell = row[k] if k < len(row) else "", src_row[sk] if sk < len(src_row) else ""
            svalues = [v for v, _ in _numbers(scell)]
            for cited, dec in _numbers(cell):
                if not _matches(cited, dec, svalues, False):
                    errors.append(f"row {row[0]!r}, column {table.headers[k]!r}: {cell!r} vs report {scell!r}")
        if not compared:
            errors.append(f"row {row[0]!r}: no column header in common with the report")
    return errors


def _doc_tables() -> list[Table]:
    return [t for doc in DOCS for t in parse_tables(doc.read_text(), doc)]


def _measured(table: Table) -> bool:
    return any(MEASURED.search(c) for r in table.rows for c in r[1:])


def _tid(t: Table) -> str:
    return f"{t.doc.relative_to(ROOT)}:{t.line}"


@pytest.mark.parametrize("table", [t for t in _doc_tables() if _measured(t) or t.comment],
                         ids=_tid)
def test_table_numbers_have_a_source(table: Table) -> None:
    where = _tid(table)
    assert table.comment is not None, (
        f"{where}: a table of measured numbers needs a `<!-- results: ... -->` comment right above it "
        "(benchmarks/results/README.md)")
    kind = table.comment
    if kind.startswith("unsourced"):
        assert "rerun:" in kind, f"{where}: an unsourced table must name the rerun command"
        assert "result file not kept" in " ".join(table.above.lower().split()), (
            f"{where}: say visibly above the table that the result file was not kept")
        return
    if kind.startswith("paper"):
        assert "2510.26491" in kind, f"{where}: cite the paper as arXiv 2510.26491"
        return
    path_str, _, rest = kind.partition(" ")
    path = ROOT / path_str
    assert path.is_file(), f"{where}: source {path_str} is not in the repository"
    if path.suffix == ".json":
        cols = re.match(r"columns:\s*(.*)", rest.strip())
        columns = [c.strip() for c in cols.group(1).split(",")] if cols else None
        errors = check_against_json(table, json.loads(path.read_text()), columns)
    elif path.suffix == ".md":
        errors = check_against_report(table, path.read_text())
    else:
        pytest.fail(f"{where}: unknown source kind {path_str}")
    assert not errors, f"{where} disagrees with {path_str}:\n" + "\n".join(errors)


def test_result_files_have_the_header() -> None:
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        missing = [k for k in HEADER_KEYS if k not in data]
        assert not missing, f"{path.name} lacks header keys {missing} (cropi.bench.results.write_result)"
        assert data["benchmark"] == path.stem, path.name
        assert {"commit", "dirty"} <= set(data["git"]), path.name
        assert {"cpu_model", "cores", "load_avg_start", "idle_at_start", "torch_threads", "torch"} \
            <= set(data["machine"]), path.name


# ------------------------------------------------------------------------------ the checker itself
_DOC = """
## A section

Some text. Round-1 measurement, result file not kept.

<!-- results: unsourced; rerun: python x.py -->
| method | s / prompt | share |
|---|---|---|
| a | 3.78 | 4.0 % |

<!-- results: benchmarks/results/x.json -->
| method | s / prompt | share | speed-up |
|---|---|---|---|
| countsketch k = 8,192 | 3.78 | 4.0 % | 741x |
"""


def test_checker_parses_tables_and_comments() -> None:
    tables = parse_tables(_DOC)
    assert [t.comment for t in tables] == ["unsourced; rerun: python x.py",
                                           "benchmarks/results/x.json"]
    assert "result file not kept" in tables[0].above
    assert "result file not kept" not in tables[1].above
    assert tables[1].rows == [["countsketch k = 8,192", "3.78", "4.0 %", "741x"]]


def test_checker_rounds_and_rejects() -> None:
    table = parse_tables(_DOC)[1]
    good = {"rows": [{"method": "countsketch k=8192", "s_per_prompt": 3.7841, "project_share": 0.0398,
                      "speedup_vs_naive": 741.2}]}
    assert check_against_json(table, good, None) == []
    bad = {"rows": [{"s_per_prompt": 3.80, "project_share": 0.0398, "speedup_vs_naive": 741.2}]}
    errors = check_against_json(table, bad, None)
    assert len(errors) == 1 and "3.78" in errors[0]
    assert check_against_json(table, bad, ["share", "speed"]) == []


def test_checker_matches_report_rows_and_columns() -> None:
    report = ("| arm | final targeted (mean ± sd) | acceleration |\n|---|---|---|\n"
              "| cropi | 0.430 ± 0.141 | < 1 (gap 0.004) |\n")
    doc = parse_tables("| arm | final targeted | acceleration |\n|---|---|---|\n"
                       "| cropi | 0.43 ± 0.141 | < 1 (gap 0.004) |\n")[0]
    assert check_against_report(doc, report) == []
    wrong = parse_tables("| arm | final targeted |\n|---|---|\n| cropi | 0.300 ± 0.141 |\n")[0]
    assert check_against_report(wrong, report)
    missing = parse_tables("| arm | final targeted |\n|---|---|\n| full | 0.430 |\n")[0]
    assert check_against_report(missing, report)
