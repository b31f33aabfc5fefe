"""Mirror of metrics.jsonl into TensorBoard event files (RUN/tensorboard/), when tensorboard is installed.

Every numeric value of an event becomes a scalar ``<event>/<key>`` (nested dicts joined with
``/``) at the event's ``step`` (``stage`` when it has none). metrics.jsonl stays the record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SKIP = ("time", "step", "stage")


def scalars(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for every int/float leaf of ``values`` (bools and step counters skipped)."""
    for key, val in values.items():
        tag = f"{prefix}{key}"
        if isinstance(val, dict):
            yield from scalars(val, f"{tag}/")
        elif isinstance(val, (int, float)) and not isinstance(val, bool) and (prefix or key not in _SKIP):
            yield tag, float(val)


class TensorBoardLog:
    """Lazily opens a SummaryWriter; a no-op when tensorboard cannot be imported."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writer: Any = None
        self._available = True

    def _get(self) -> Any:
        if self._writer is None and self._available:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: metrics go to metrics.jsonl only")
                self._available = False
                return None
            self._writer = SummaryWriter(str(self.folder))
        return self._writer

    def log(self, event: str, values: dict[str, Any]) -> None:
        writer = self._get()
        if writer is None:
            return
        step = int(values.get("step", values.get("stage", 0)) or 0)
        for tag, val in scalars(values):
            writer.add_scalar(f"{event}/{tag}", val, step)
        writer.flush()
