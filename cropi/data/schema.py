"""One schema for a verifiable prompt, and its validation.

A record has:

- ``id``      stable string, unique within a set
- ``prompt``  chat messages ``[{"role": ..., "content": ...}, ...]`` (a plain string is accepted
              and becomes one user message)
- ``answer``  the gold answer, a string
- ``source``  task family or dataset name (e.g. ``chain_sum``, ``gsm8k``)
- ``level``   difficulty label (optional, string)
- ``meta``    free-form JSON object; ``meta["verifier"]`` names the verifier (default ``math``)

A prompt longer than ``max_chars`` characters (all messages together; default
:data:`MAX_PROMPT_CHARS`, the config key ``data.max_prompt_chars``) is refused at load time, before any model work. The model's own token limit is checked once its
tokenizer is loaded (``cropi.model.limits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cropi.utils.errors import CropiError

ROLES = ("system", "user", "assistant")
Messages = list[dict[str, str]]

MAX_PROMPT_CHARS = 100_000
"""Default limit on a prompt's characters (all messages). About 25k tokens of English: far more
than any context a verifiable-reward prompt needs, far less than what exhausts memory."""
@dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: Messages
    answer: str
    source: str
    level: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Where the record was read from (None for generated suites): for error messages only, not
    # part of the record's identity, its dict or its fingerprint.
    file: str | None = field(default=None, compare=False, repr=False)
    row: int | None = field(default=None, compare=False, repr=False)

    @property
    def verifier(self) -> str:
        return str(self.meta.get("verifier", "math"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": [dict(m) for m in self.prompt],
            "answer": self.answer,
            "source": self.source,
            "level": self.level,
            "meta": self.meta,
        }


def _where(file: str | None, row: int | None, field_name: str) -> dict[str, Any]:
    return {"file": file, "row": row, "field": field_name}


def _messages(value: Any, file: str | None, row: int | None, max_chars: int) -> Messages:
    if isinstance(value, str):
        if not value.strip():
            raise CropiError("is empty", **_where(file, row, "prompt"), fix="give the question text")
        out = [{"role": "user", "content": value}]
        _check_length(out, file, row, max_chars)
        return out
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise CropiError(
            f"must be a string or a non-empty list of chat messages, got {type(value).__name__}",
            **_where(file, row, "prompt"),
            fix='e.g. [{"role": "user", "content": "What is 2+3?"}]',
        )
    out: Messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise CropiError(
                f"message {i} must be an object with 'role' and 'content'",
                **_where(file, row, "prompt"),
            )
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise CropiError(
                f"message {i} has role {role!r}",
                **_where(file, row, "prompt"),
                fix=f"use one of {', '.join(ROLES)}",
            )
        if not isinstance(content, str):
            raise CropiError(f"message {i} content must be a string", **_where(file, row, "prompt"))
        out.append({"role": str(role), "content": content})
    if out[-1]["role"] != "user":
        raise CropiError(
            "the last message must have role 'user'", **_where(file, row, "prompt"),
            fix="the model answers the last user message",
        )
    _check_length(out, file, row, max_chars)
    return out


def _check_length(messages: Messages, file: str | None, row: int | None, limit: int) -> None:
    n = sum(len(m["content"]) for m in messages)
    if n > limit:
        raise CropiError(
            f"is {n:,} characters long, over the limit of {limit:,}", **_where(file, row, "prompt"),
            fix=f"shorten or drop this prompt, or raise the limit with --set data.max_prompt_chars={n}",
        )


def validate_record(raw: Any, *, file: str | None = None, row: int | None = None,
                    max_chars: int = MAX_PROMPT_CHARS) -> PromptRecord:
    """Turn one raw mapping into a :class:`PromptRecord` or raise a one-line :class:`CropiError`
    (a prompt over ``max_chars`` characters too)."""
    if not isinstance(raw, dict):
        raise CropiError(
            f"expected a JSON object, got {type(raw).__name__}", file=file, row=row,
            fix="one object per line with id, prompt, answer, source",
        )
    for name in ("id", "prompt", "answer", "source"):
        if name not in raw or raw[name] is None:
            raise CropiError("is missing", **_where(file, row, name), fix=_FIELD_HELP[name])
    rid = raw["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
        raise CropiError("must be a non-empty string", **_where(file, row, "id"))
    answer = raw["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise CropiError(
            f"must be a string or number, got {type(answer).__name__}", **_where(file, row, "answer")
        )
    if not str(answer).strip():
        raise CropiError("is empty", **_where(file, row, "answer"), fix="give the gold answer")
    source = raw["source"]
    if not isinstance(source, str) or not source.strip():
        raise CropiError("must be a non-empty string", **_where(file, row, "source"))
    level = raw.get("level")
    if level is not None and not isinstance(level, (str, int)):
        raise CropiError("must be a string, an integer or null", **_where(file, row, "level"))
    meta = raw.get("meta") or {}
    if isinstance(meta, str):
        import json

        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as exc:
            raise CropiError(f"is not valid JSON ({exc.msg})", **_where(file, row, "meta")) from None
    if not isinstance(meta, dict):
        raise CropiError("must be a JSON object", **_where(file, row, "meta"))
    return PromptRecord(
        id=str(rid).strip(),
        prompt=_messages(raw["prompt"], file, row, max_chars),
        answer=str(answer).strip(),
        source=source.strip(),
        level=None if level is None else str(level),
        meta=meta,
        file=None if file is None else str(file),
        row=row,
    )


def check_unique_ids(records: list[PromptRecord], file: str | None = None) -> None:
    seen: dict[str, int] = {}
    for i, rec in enumerate(records, start=1):
        row = rec.row if rec.row is not None else i  # the file's line for JSONL, else the position
        if rec.id in seen:
            raise CropiError(
                f"duplicate id {rec.id!r} (first seen in row {seen[rec.id]})",
                file=file, row=row, field="id", fix="ids must be unique within a set",
            )
        seen[rec.id] = row


_FIELD_HELP = {
    "id": "give every row a unique string id",
    "prompt": "give the question as a string or a list of chat messages",
    "answer": "give the gold answer the verifier compares against",
    "source": "name the task family or dataset, e.g. 'gsm8k'",
}
