"""Rich progress bars for indexing: one bar for slides, one for the current slide's patches (with patches/s)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StageProgress:
    """Slides and patches progress on stderr; a no-op when disabled (tests, --json, non-TTY quiet runs)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress: Progress | None = None
        self._slides = self._patches = None

    def __enter__(self) -> "StageProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_slides(self, total: int) -> None:
        """Begin the slides bar."""
        if self._progress is not None:
            self._slides = self._progress.add_task("slides", total=total, rate="")

    def next_slide(self, slide_id: str) -> None:
        """Show ``slide_id`` as the slide being worked on."""
        if self._progress is not None:
            self._progress.update(self._slides, description=f"slides ({slide_id})")

    def slide_done(self) -> None:
        """Count one more slide finished (indexed, skipped or failed)."""
        if self._progress is not None:
            self._progress.advance(self._slides)

    def start_patches(self, total: int) -> None:
        """Reset the patches bar for a slide of ``total`` patches."""
        if self._progress is None:
            return
        if self._patches is None:
            self._patches = self._progress.add_task("patches", total=total, rate="")
        else:
            self._progress.reset(self._patches, total=total, rate="")

    def more_patches(self, n: int) -> None:
        """Add ``n`` patches to the patches bar's total (a run's slides are prepared as it goes)."""
        if self._progress is None or self._patches is None:
            return
        self._progress.update(self._patches, total=(self._progress.tasks[self._patches].total or 0) + n)

    def advance_patches(self, n: int) -> None:
        """Count ``n`` more patches embedded and show the rate."""
        if self._progress is None or self._patches is None:
            return
        self._progress.advance(self._patches, n)
        speed = self._progress.tasks[self._patches].speed
        self._progress.update(self._patches, rate=f"{speed:,.0f} patches/s" if speed else "")
