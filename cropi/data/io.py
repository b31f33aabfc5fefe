"""Read and write prompt sets: JSONL, Parquet, HF ``datasets`` saved to disk, and Hugging Face
datasets by name (``hf:NAME[:CONFIG[:SPLIT]][?FIELD=COLUMN&...]``, through ``datasets.load_dataset``
and its cache; offline, a dataset loaded once online is read from the cache).

Rows are 1-based in error messages (the first record is row 1).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cropi.data.converters import detect_converter, get_converter
from cropi.data.schema import MAX_PROMPT_CHARS, PromptRecord, check_unique_ids, validate_record
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


HF_PREFIX = "hf:"
COLUMN_FIELDS = ("id", "prompt", "answer", "source", "level", "verifier")
"""cropi fields a ``hf:`` column map may name (``?prompt=problem&answer=solution``)."""


@dataclass(frozen=True)
class HFDatasetSpec:
    """A Hugging Face dataset by name: ``hf:NAME[:CONFIG[:SPLIT]][?FIELD=COLUMN&...]``.

    ``split`` defaults to ``train`` and may be a slice (``train[:500]``); an empty config
    (``hf:NAME::test``) is the dataset's default. ``columns`` maps cropi fields (id, prompt,
    answer, source, level, verifier) to dataset columns; ``source`` and ``verifier`` may also be
    literal values (used when the dataset has no such column).
    """

    name: str
    config: str | None = None
    split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.columns.items())
        return f"{HF_PREFIX}{self.name}:{self.config or ''}:{self.split}" + (f"?{query}" if query else "")


def is_hf_spec(path: str | Path) -> bool:
    """True for a ``hf:`` dataset name (a string, never a :class:`~pathlib.Path`)."""
    return isinstance(path, str) and path.startswith(HF_PREFIX)


def parse_hf_spec(spec: str) -> HFDatasetSpec:
    """Parse ``hf:NAME[:CONFIG[:SPLIT]][?FIELD=COLUMN&...]`` (see :class:`HFDatasetSpec`)."""
    body, _, query = spec[len(HF_PREFIX):].partition("?")
    parts = body.split(":", 2)
    name = parts[0].strip()
    if not name:
        raise CropiError("names no dataset", file=spec, fix="e.g. hf:openai/gsm8k:main:train")
    config = parts[1].strip() or None if len(parts) > 1 else None
    split = parts[2].strip() if len(parts) > 2 and parts[2].strip() else "train"
    columns: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in COLUMN_FIELDS or not value.strip():
            raise CropiError(f"has a bad column map entry {item!r}", file=spec,
                             fix=f"FIELD=COLUMN with FIELD one of {', '.join(COLUMN_FIELDS)}, "
                                 "e.g. ?prompt=problem&answer=solution")
        columns[key.strip()] = value.strip()
    return HFDatasetSpec(name, config, split, columns)


def _iter_hf(spec: HFDatasetSpec) -> Iterator[tuple[int, Any]]:
    """Rows of ``datasets.load_dataset(name, config, split=split)`` (the ``datasets`` cache)."""
    import datasets

    try:
        obj = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    except Exception as exc:  # offline without a cache entry, unknown config or split, no network
        offline = datasets.config.HF_HUB_OFFLINE
        raise CropiError(
            f"cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            file=str(spec),
            fix=("HF_HUB_OFFLINE=1 reads only the local datasets cache: load it once with the network "
                 "(HF_HUB_OFFLINE=0), or check the name, config and split") if offline
            else "check the dataset name, config and split",
        ) from None
    if not isinstance(obj, datasets.Dataset):
        raise CropiError(f"is not one split ({type(obj).__name__})", file=str(spec),
                         fix="name a split: hf:NAME:CONFIG:SPLIT")
    yield from enumerate(obj.to_list(), start=1)


def _column_converter(spec: HFDatasetSpec) -> Any:
    """A converter that builds cropi rows from ``spec.columns`` (prompt and answer required)."""
    cols = spec.columns
    missing = [f for f in ("prompt", "answer") if f not in cols]
    if missing:
        raise CropiError(f"has a column map without {' and '.join(missing)}", file=str(spec),
                         fix="map at least prompt and answer, e.g. ?prompt=problem&answer=solution")
    default_source = spec.name.rsplit("/", 1)[-1]

    def get(raw: dict[str, Any], key: str, row: int, literal: bool = False) -> Any:
        col = cols[key]
        if col in raw:
            return raw[col]
        if literal:
            return col
        raise CropiError(f"has no column {col!r} (mapped to {key})", file=str(spec), row=row,
                         fix=f"columns: {', '.join(raw)}")

    def convert(raw: dict[str, Any], row: int, file: str | None) -> dict[str, Any]:
        out = {"id": str(get(raw, "id", row)) if "id" in cols else f"{default_source}-{row}",
               "prompt": get(raw, "prompt", row), "answer": get(raw, "answer", row),
               "source": str(get(raw, "source", row, literal=True)) if "source" in cols else default_source,
               "level": get(raw, "level", row) if "level" in cols else None,
               "meta": {"verifier": str(get(raw, "verifier", row, literal=True)) if "verifier" in cols
                        else "math"}}
        if isinstance(out["answer"], (int, float)) and not isinstance(out["answer"], bool):
            out["answer"] = str(out["answer"])
        if out["level"] is not None:
            out["level"] = str(out["level"])
        return out

    return convert


def load_prompts(path: str | Path, converter: str = "auto", max_chars: int = MAX_PROMPT_CHARS) -> list[PromptRecord]:
    """Load and validate a prompt set. ``converter``: auto, cropi, verl or gsm8k; a prompt over
    ``max_chars`` characters is refused (``data.max_prompt_chars``).

    ``path``: a .jsonl/.parquet file, a saved HF dataset folder, or a Hugging Face dataset by name
    ``hf:NAME[:CONFIG[:SPLIT]][?FIELD=COLUMN&...]`` (a column map replaces the converter).
    """
    hf = parse_hf_spec(path) if is_hf_spec(path) else None
    if hf is not None:
        it = _iter_hf(hf)
        fmt = "hf-hub"
    else:
        path = Path(path)
        if not path.exists():
            raise CropiError("does not exist", file=path, fix="check the path")
        fmt = _detect_format(path)
        it = _iter_jsonl(path) if fmt == "jsonl" else _iter_table(path, fmt)
    records: list[PromptRecord] = []
    conv_name = None if converter == "auto" else converter
    column_conv = _column_converter(hf) if hf is not None and hf.columns else None
    if column_conv is not None:
        conv_name = "columns"
    for row, raw in it:
        if not isinstance(raw, dict):
            raise CropiError(f"expected an object, got {type(raw).__name__}", file=path, row=row)
        if conv_name is None:
            conv_name = detect_converter(raw)
        conv = column_conv or get_converter(conv_name)
        records.append(validate_record(conv(raw, row, str(path)), file=str(path), row=row, max_chars=max_chars))
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
