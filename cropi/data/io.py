"""Read and write prompt sets: JSONL, Parquet and HF ``datasets`` saved to disk.

Rows are 1-based in error messages (the first record is row 1).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cropi.data.converters import detect_converter, get_converter
from cropi.data.schema import PromptRecord, check_unique_ids, validate_record
from cropi.utils.errors import CropiError
from cropi.utils.hashing import fingerprint
from cropi.utils.io import atomic_path
from cropi.utils.text import decode_utf8, looks_like_utf16, not_utf8

log = logging.getLogger(__name__)


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        raise CropiError(
            "is a folder but not a saved HF dataset", file=path,
            fix="pass a .jsonl or .parquet file, or a folder written by Dataset.save_to_disk",
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise CropiError(
        f"has an unknown extension {suffix!r}", file=path, fix="use .jsonl, .parquet or an HF dataset folder"
    )


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` per non-blank line; the file must be UTF-8 (a BOM is dropped)."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = decode_utf8(raw, path, first_line=lineno, line_is_row=True)
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                if looks_like_utf16(raw):  # UTF-16 without a BOM decodes as UTF-8 with NUL bytes
                    raise not_utf8(raw, raw.index(b"\x00"), path, first_line=lineno,
                                   line_is_row=True) from None
                raise CropiError(
                    f"is not valid JSON ({exc.msg} at column {exc.colno})", file=path, row=lineno,
                    fix="one JSON object per line",
                ) from None


def _iter_table(path: Path, fmt: str) -> Iterator[tuple[int, Any]]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise CropiError(f"cannot be read as Parquet ({exc})", file=path) from None
    else:
        import datasets

        try:
            obj = datasets.load_from_disk(str(path))
        except Exception as exc:  # missing arrow files, bad JSON metadata, version mismatches
            raise CropiError(f"cannot be read as a saved HF dataset ({type(exc).__name__}: {exc})",
                             file=path, fix="write it again with Dataset.save_to_disk") from None
        if isinstance(obj, datasets.DatasetDict):
            raise CropiError(
                f"holds several splits ({', '.join(obj)})", file=path, fix="pass one split's folder"
            )
        rows = obj.to_list()
    yield from enumerate(rows, start=1)


def load_prompts(path: str | Path, converter: str = "auto") -> list[PromptRecord]:
    """Load and validate a prompt set. ``converter``: auto, cropi, verl or gsm8k."""
    path = Path(path)
    if not path.exists():
        raise CropiError("does not exist", file=path, fix="check the path")
    fmt = _detect_format(path)
    it = _iter_jsonl(path) if fmt == "jsonl" else _iter_table(path, fmt)
    records: list[PromptRecord] = []
    conv_name = None if converter == "auto" else converter
    for row, raw in it:
        if not isinstance(raw, dict):
            raise CropiError(f"expected an object, got {type(raw).__name__}", file=path, row=row)
        if conv_name is None:
            conv_name = detect_converter(raw)
        conv = get_converter(conv_name)
        records.append(validate_record(conv(raw, row, str(path)), file=str(path), row=row))
    if not records:
        raise CropiError("holds no records", file=path, fix="give at least one prompt")
    check_unique_ids(records, file=str(path))
    log.info("loaded %d prompts from %s (%s, %s)", len(records), path, fmt, conv_name)
    return records


def _flat_row(rec: PromptRecord) -> dict[str, Any]:
    d = rec.to_dict()
    d["meta"] = json.dumps(d["meta"], sort_keys=True)
    return d


def save_prompts(records: list[PromptRecord], path: str | Path) -> None:
    """Write a prompt set atomically; the format follows the extension (.jsonl or .parquet)."""
    path = Path(path)
    fmt = _detect_format(path) if path.suffix else "jsonl"
    with atomic_path(path) as tmp:
        if fmt == "jsonl":
            with tmp.open("w", encoding="utf-8") as fh:
                for rec in records:
                    fh.write(json.dumps(rec.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([_flat_row(r) for r in records]), tmp)
        else:
            raise CropiError("cannot write this format", file=path, fix="use .jsonl or .parquet")


def save_hf_dataset(records: list[PromptRecord], path: str | Path) -> None:
    import datasets

    datasets.Dataset.from_list([_flat_row(r) for r in records]).save_to_disk(str(path))


def dataset_fingerprint(records: list[PromptRecord]) -> str:
    """Content hash of a prompt set (order-sensitive: order fixes positions in stores)."""
    return fingerprint([r.to_dict() for r in records])
