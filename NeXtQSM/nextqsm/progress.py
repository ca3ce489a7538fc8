"""Progress reporting for the CLI (tqdm bar on stderr) and the worker (``PROGRESS <0..1> <stage>`` lines)."""
from __future__ import annotations

import sys
from typing import Callable


class TqdmProgress:
    """Callable ``(fraction, stage)`` driving one tqdm bar (0..100 %); use as a context manager."""

    def __init__(self, desc: str = "", disable: bool | None = None):
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=desc, unit="%", file=sys.stderr, disable=disable,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self._n = 0

    def __call__(self, frac: float, stage: str) -> None:
        n = int(round(100 * frac))
        if n > self._n:
            self.bar.update(n - self._n)
            self._n = n
        self.bar.set_postfix_str(stage, refresh=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def line_progress(stream=None) -> Callable[[float, str], None]:
    """Progress callback printing machine-readable ``PROGRESS <frac> <stage>`` lines (flushed)."""
    out = stream or sys.stdout

    def cb(frac: float, stage: str) -> None:
        print(f"PROGRESS {frac:.4f} {stage}", file=out, flush=True)

    return cb


def scaled(progress: Callable[[float, str], None] | None, start: float, stop: float, prefix: str = ""):
    """Map a sub-task's 0..1 progress into [start, stop] of the parent's."""
    if progress is None:
        return None

    def cb(frac: float, stage: str) -> None:
        progress(start + (stop - start) * frac, f"{prefix}{stage}")

    return cb
