"""The one error type for mistakes a user can fix (bad file, bad field, bad config).

The CLI prints it on one line and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path


class CropiError(Exception):
    """A user-correctable error. The message says where (file, row, field) and how to fix it."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        parts = []
        if file is not None:
            parts.append(str(file))
        if row is not None:
            parts.append(f"row {row}")
        if field is not None:
            parts.append(f"field '{field}'")
        where = ": ".join([", ".join(parts)]) if parts else ""
        text = f"{where}: {message}" if where else message
        if fix:
            text = f"{text} ({fix})"
        super().__init__(" ".join(text.split()))
        self.file, self.row, self.field, self.fix = file, row, field, fix
