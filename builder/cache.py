"""The build cache (``~/.cache/pibake``, or $PIBAKE_CACHE) and atomic writes.

Nothing appears under a final name until it is complete: files and folders are
built under a temporary sibling name and renamed into place, so an interrupted
build leaves the previous good entry (or nothing) behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    env = os.environ.get("PIBAKE_CACHE")
    if env:
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "pibake"
    root.mkdir(parents=True, exist_ok=True)
    return root


def key_of(*parts: Any) -> str:
    """A stable content key: sha256 over the JSON of ``parts`` (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def sha256_file(path: Path, bufsize: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_file(final: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``final``, else delete it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``final``, else it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_stale(root: Path) -> None:
    """Remove temporaries left by a killed build (``.*.tmp-PID`` whose PID is gone)."""
    if not root.exists():
        return
    for entry in root.iterdir():
        name = entry.name
        if not name.startswith(".") or (".tmp-" not in name and ".old-" not in name):
            continue
        # ".x.tmp-PID" or, from tempfile, ".x.tmp-PID-RANDOM": the PID follows the marker
        pid = re.split(r"\.(?:tmp|old)-", name, maxsplit=1)[-1].split("-", 1)[0]
        if pid.isdigit() and Path(f"/proc/{pid}").exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
