"""Progress of glassbox's long jobs: tqdm bars when tqdm is installed (notebook widgets in
Jupyter through tqdm.auto), plain lines on stderr otherwise, nothing with progress=False."""

from __future__ import annotations

import sys


class Progress:
    """Receives the Rust side's calls (glassbox_train::Progress): one bar per stage."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars = {}
        try:
            from tqdm.auto import tqdm  # noqa: F401

            self._tqdm = tqdm
        except ImportError:
            self._tqdm = None

    def begin(self, stage: str, label: str, total: int, done: int) -> None:
        if not self.enabled:
            return
        self.end(stage)
        if self._tqdm is not None:
            self.bars[stage] = self._tqdm(total=total, initial=done, desc=label, leave=False)
        else:
            print(f"{label}: {total} to do", file=sys.stderr)

    def advance(self, stage: str, n: int) -> None:
        bar = self.bars.get(stage)
        if bar is not None:
            bar.update(n)

    def status(self, stage: str, text: str) -> None:
        bar = self.bars.get(stage)
        if bar is not None:
            bar.set_postfix_str(text, refresh=False)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def end(self, stage: str) -> None:
        bar = self.bars.pop(stage, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for stage in list(self.bars):
            self.end(stage)


def make(progress) -> "Progress | None":
    """`progress`: True (bars), False (silent) or an object with Progress's methods."""
    if progress is True:
        return Progress(True)
    if progress is False or progress is None:
        return None
    return progress
