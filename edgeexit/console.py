"""Terminal output shared by every command: rich progress bars and tables on stderr/stdout."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Tables are wide; when output goes to a file or pipe, rich would assume 80 columns and truncate.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class _SilentProgress:
    """Same calls as rich's Progress, doing nothing (progress=False, or scripted use)."""

    def add_task(self, description: str, total: float | None = None) -> int:
        return 0

    def update(self, task: int, **kwargs: object) -> None:
        return None


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress | _SilentProgress]:
    if not enabled:
        yield _SilentProgress()
        return
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    with bar:
        yield bar


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    out = Table(title=title, title_justify="left", min_width=len(title) + 2)
    for i, name in enumerate(columns):
        out.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*("-" if v is None else escape(str(v)) for v in row))  # labels may hold "[...]"
    return out
