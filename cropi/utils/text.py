"""Decode user files as UTF-8, with an error that says where the first bad byte is.

Every text file a user hands to cropi (prompt sets as JSONL, run configs as YAML) must be UTF-8.
A UTF-8 byte-order mark is accepted and dropped; anything else that does not decode becomes a
one-line :class:`CropiError` naming the file, the line and the byte, instead of a traceback.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from cropi.utils.errors import CropiError

UTF8_FIX = "save the file as UTF-8"
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def strip_utf8_bom(raw: bytes) -> bytes:
    """``raw`` without a leading UTF-8 byte-order mark (editors on Windows often write one)."""
    return raw[len(codecs.BOM_UTF8):] if raw.startswith(codecs.BOM_UTF8) else raw


def looks_like_utf16(raw: bytes) -> bool:
    """A UTF-16 byte-order mark at the start, or NUL bytes (UTF-16 text of ASCII characters)."""
    return raw.startswith(_UTF16_BOMS) or b"\x00" in raw


def not_utf8(raw: bytes, bad_at: int, file: str | Path, *, first_line: int = 1,
             line_is_row: bool = False) -> CropiError:
    """The error for ``raw`` (read from ``file``, starting at line ``first_line``) whose byte at
    offset ``bad_at`` does not decode as UTF-8.

    ``line_is_row``: report the line as the record's row (JSONL); else it is named in the message.
    """
    line = first_line + raw.count(b"\n", 0, bad_at)
    start = raw.rfind(b"\n", 0, bad_at) + 1
    column = len(raw[start:bad_at].decode("utf-8", errors="replace")) + 1  # in characters
    if raw.startswith(_UTF16_BOMS):
        what = "is UTF-16 text, not UTF-8: it starts with a UTF-16 byte-order mark"
    elif b"\x00" in raw:
        what = "is UTF-16 text, not UTF-8: it holds NUL bytes"
    else:
        byte = raw[bad_at] if bad_at < len(raw) else 0
        at = f"column {column}" if line_is_row else f"line {line}, column {column}"
        what = f"is not UTF-8: byte 0x{byte:02x} at {at} cannot be decoded"
    return CropiError(what, file=file, row=line if line_is_row else None, fix=UTF8_FIX)


def decode_utf8(raw: bytes, file: str | Path, *, first_line: int = 1, line_is_row: bool = False) -> str:
    """``raw`` decoded as UTF-8 (a leading UTF-8 BOM dropped), or a :func:`not_utf8` error."""
    try:
        return strip_utf8_bom(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        skipped = len(raw) - len(strip_utf8_bom(raw))
        raise not_utf8(raw, exc.start + skipped, file, first_line=first_line,
                       line_is_row=line_is_row) from None


def read_text_utf8(path: str | Path) -> str:
    """The text of a whole user file (e.g. a YAML config), decoded by :func:`decode_utf8`."""
    path = Path(path)
    if path.is_dir():
        raise CropiError("is a folder, not a file", file=path, fix="give the file's path")
    return decode_utf8(path.read_bytes(), path)
