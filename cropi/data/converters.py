"""Small named converters from common dataset layouts to the cropi schema.

- ``verl``:  verl RL parquet rows (``prompt`` messages, ``reward_model.ground_truth``,
             ``data_source``, optional ``extra_info.index``); rows written by
             :func:`cropi.integrations.verl.export_selection_verl` keep their cropi id, source, level and
             meta in ``extra_info.cropi_*``
- ``gsm8k``: GSM8K rows (``question``, ``answer`` ending with ``#### 42``)

Each converter maps one raw row (and its 1-based row number) to a raw cropi dict, which then goes
through :func:`cropi.data.schema.validate_record`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cropi.utils.errors import CropiError

Converter = Callable[[dict[str, Any], int, str | None], dict[str, Any]]


def _verl_info(raw: dict[str, Any]) -> dict[str, Any]:
    info = raw.get("extra_info")
    return info if isinstance(info, dict) else {}


def verl_row_id(raw: dict[str, Any], row: int) -> str:
    """The cropi id of a verl row (``row`` is 1-based, the last resort).

    ``extra_info.cropi_id`` when present (rows cropi exported), else ``<data_source>-<id>`` with
    the row's ``id`` or ``extra_info.index``, else ``<data_source>-<row>``.
    """
    info = _verl_info(raw)
    if info.get("cropi_id") is not None:
        return str(info["cropi_id"])
    source = raw.get("data_source") or "verl"
    rid = raw.get("id") or info.get("index")
    return f"{source}-{rid}" if rid is not None else f"{source}-{row}"


def _from_verl(raw: dict[str, Any], row: int, file: str | None) -> dict[str, Any]:
    rm = raw.get("reward_model")
    if not isinstance(rm, dict) or rm.get("ground_truth") is None:
        raise CropiError(
            "is missing or has no 'ground_truth'", file=file, row=row, field="reward_model",
            fix="verl rows need reward_model.ground_truth",
        )
    info = _verl_info(raw)
    gt = rm["ground_truth"]
    if hasattr(gt, "tolist"):
        gt = gt.tolist()
    if isinstance(gt, list):
        gt = gt[0] if gt else ""
    out = {"id": verl_row_id(raw, row), "prompt": raw.get("prompt"), "answer": gt,
           "source": raw.get("data_source") or "verl", "level": raw.get("level"),
           "meta": {"verifier": "math", "ability": raw.get("ability")}}
    if info.get("cropi_id") is not None:  # exported by cropi: restore what the row carries
        out["source"] = info.get("cropi_source") or out["source"]
        out["level"] = info.get("cropi_level")
        out["meta"] = info.get("cropi_meta") or out["meta"]  # a JSON string; validated later
    return out


_GSM8K_TAIL = re.compile(r"####\s*(.+?)\s*$", re.S)


def _from_gsm8k(raw: dict[str, Any], row: int, file: str | None) -> dict[str, Any]:
    q, a = raw.get("question"), raw.get("answer")
    if not isinstance(q, str) or not q.strip():
        raise CropiError("is missing or empty", file=file, row=row, field="question")
    if not isinstance(a, str):
        raise CropiError("is missing", file=file, row=row, field="answer")
    m = _GSM8K_TAIL.search(a)
    if not m:
        raise CropiError(
            "has no '#### <final answer>' tail", file=file, row=row, field="answer",
            fix="GSM8K answers end with '#### 42'",
        )
    gold = m.group(1).replace(",", "").strip()
    rid = raw.get("id", f"gsm8k-{row}")
    return {"id": str(rid), "prompt": q, "answer": gold, "source": raw.get("source", "gsm8k"),
            "level": raw.get("level"), "meta": {"verifier": "math", "solution": a}}


def _identity(raw: dict[str, Any], row: int, file: str | None) -> dict[str, Any]:
    return raw


CONVERTERS: dict[str, Converter] = {"cropi": _identity, "verl": _from_verl, "gsm8k": _from_gsm8k}


def get_converter(name: str) -> Converter:
    if name not in CONVERTERS:
        raise CropiError(f"unknown converter {name!r}", fix=f"use one of {', '.join(CONVERTERS)}")
    return CONVERTERS[name]


def detect_converter(raw: dict[str, Any]) -> str:
    """Guess the layout of a row: cropi, verl or gsm8k."""
    if "reward_model" in raw and "prompt" in raw:
        return "verl"
    if "question" in raw and "answer" in raw and "prompt" not in raw:
        return "gsm8k"
    return "cropi"
