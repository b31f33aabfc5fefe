"""Rich progress bars (on stderr) with item and token rates."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console = Console(stderr=True)


class Tracker:
    """Advances a bar and shows items/s and tokens/s since the start."""

    def __init__(self, progress: Progress, task: Any, unit: str) -> None:
        self.progress, self.task, self.unit = progress, task, unit
        self.start = time.perf_counter()
        self.items = 0
        self.tokens = 0

    def advance(self, items: int = 1, tokens: int = 0) -> None:
        self.items += items
        self.tokens += tokens
        dt = max(time.perf_counter() - self.start, 1e-9)
        rate = f"{self.items / dt:.2f} {self.unit}/s"
        if self.tokens:
            rate += f"  {self.tokens / dt:.0f} tok/s"
        self.progress.update(self.task, advance=items, rate=rate)


@contextlib.contextmanager
def track(description: str, total: int, unit: str = "prompts", completed: int = 0,
          transient: bool = False) -> Iterator[Tracker]:
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn()]
    with Progress(*columns, console=_console, transient=transient) as progress:
        task = progress.add_task(description, total=total, completed=completed, rate="")
        yield Tracker(progress, task, unit)
