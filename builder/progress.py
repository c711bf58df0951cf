"""Progress of a long step: phase, items done of total, elapsed time.

On a terminal one line updates in place; without one (CI, a log file) a line
is printed every ``interval`` seconds, so a five-minute bootstrap is never one
silent line. ``--quiet`` shows none of it. Feed it a child's output lines with
``feed``; a ``Meter`` knows which lines mean which phase and item.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from builder import log


@dataclass
class Progress:
    label: str
    total: int | None = None
    interval: float = 15.0
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    tty: bool | None = None
    phase: str = "start"
    done: int = 0
    extra: str = ""
    _start: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _width: int = 0

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = self._start

    def text(self) -> str:
        elapsed = int(time.monotonic() - self._start)
        count = ""
        if self.done:
            # the total is the preflight's estimate; past it, the count alone
            fits = self.total and self.done <= self.total
            count = f" {self.done}/{self.total}" if fits else f" {self.done}"
        extra = f" {self.extra}" if self.extra else ""
        return f"    {self.label}: {self.phase}{count}{extra}, {elapsed // 60}m{elapsed % 60:02d}s"

    def update(self, phase: str | None = None, done: int | None = None,
               extra: str | None = None) -> None:
        changed = phase is not None and phase != self.phase
        with self._lock:
            if phase is not None and changed:
                self.phase = phase
                self.done = 0
            if done is not None:
                self.done = done
            if extra is not None:
                self.extra = extra
        self.show(force=changed)

    def show(self, force: bool = False) -> None:
        if log.is_quiet():
            return
        now = time.monotonic()
        with self._lock:
            if self.tty:
                line = self.text()
                pad = max(0, self._width - len(line))
                self.stream.write("\r" + line + " " * pad)
                self._width = len(line)
                self.stream.flush()
            elif force or now - self._last >= self.interval:
                self.stream.write(self.text() + "\n")
                self.stream.flush()
                self._last = now

    def finish(self) -> None:
        if self.tty and self._width and not log.is_quiet():
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


@contextmanager
def ticking(progress: Progress, every: float = 1.0) -> Iterator[Progress]:
    """Show ``progress`` at least every ``every`` seconds (TTY) or every
    ``progress.interval`` seconds (no TTY) while the body runs."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            progress.show()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
        progress.finish()


# What apt, dpkg and mmdebstrap print, and the phase each line means.
_PHASES: tuple[tuple[re.Pattern[str], str, bool], ...] = (
    (re.compile(r"^Get:\d+ \S+ \S+ \S+ (\S+)"), "download", True),
    (re.compile(r"^I: extracting archives"), "extract", False),
    (re.compile(r"^I: installing essential packages"), "essential", False),
    (re.compile(r"^Unpacking ([^\s:]+)"), "unpack", True),
    (re.compile(r"^Setting up ([^\s:]+)"), "configure", True),
    (re.compile(r"^I: running --customize-hook"), "customize (initramfs)", False),
    (re.compile(r"^I: creating tarball"), "tarball", False),
)


@dataclass
class Meter:
    """Turns apt/dpkg/mmdebstrap output lines into phase and count updates."""

    progress: Progress
    seen: dict[str, set[str]] = field(default_factory=dict)
    on_phase: Callable[[str, float], None] | None = None
    configure_seconds: dict[str, float] = field(default_factory=dict)
    _phase_start: float = field(default_factory=time.monotonic)
    _configuring: tuple[str, float] | None = None

    def _end_configure(self, now: float) -> None:
        """A package's configure time runs from its "Setting up" line to the
        next line that starts something else (under emulation the maintainer
        scripts, triggers and depmod are where the minutes go)."""
        if self._configuring is not None:
            name, since = self._configuring
            self.configure_seconds[name] = self.configure_seconds.get(name, 0.0) + now - since
            self._configuring = None

    def slowest(self, count: int = 5) -> list[tuple[str, float]]:
        ranked = sorted(self.configure_seconds.items(), key=lambda kv: -kv[1])
        return ranked[:count]

    def feed(self, line: str) -> None:
        line = line.strip()
        for pattern, phase, counts in _PHASES:
            m = pattern.match(line)
            if m:
                now = time.monotonic()
                self._end_configure(now)
                if phase == "configure":
                    self._configuring = (m.group(1), now)
                if phase != self.progress.phase:
                    now = time.monotonic()
                    if self.on_phase is not None:
                        self.on_phase(self.progress.phase, now - self._phase_start)
                    self._phase_start = now
                names = self.seen.setdefault(phase, set())
                if counts:
                    names.add(m.group(1))   # a package unpacked twice counts once
                self.progress.update(phase=phase, done=len(names))
                return

    def close(self) -> None:
        self._end_configure(time.monotonic())
        if self.on_phase is not None:
            self.on_phase(self.progress.phase, time.monotonic() - self._phase_start)
