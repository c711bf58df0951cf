"""Progress output: one line per step, on stderr, so stdout stays parseable."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def info(msg: str) -> None:
    if not _quiet:
        print(msg, file=sys.stderr, flush=True)


def notice(msg: str) -> None:
    """Always shown: a one-line notice (fallbacks, skipped work)."""
    print(f"pibake: {msg}", file=sys.stderr, flush=True)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Log a build step with its duration: ``==> name`` ... ``    name: 1.2s``."""
    info(f"==> {name}")
    start = time.monotonic()
    yield
    info(f"    {name}: {time.monotonic() - start:.1f}s")
