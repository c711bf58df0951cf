"""The build cache (``~/.cache/pibake``, or $PIBAKE_CACHE) and atomic writes.

Nothing appears under a final name until it is complete: files and folders are
built under a temporary sibling name and renamed into place, so an interrupted
build leaves the previous good entry (or nothing) behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
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


def entry(folder: Path, files: tuple[str, ...]) -> dict[str, Any] | None:
    """The meta.json of a complete cache entry, or None: an entry missing one of
    ``files`` or with an unreadable meta.json is a miss, never a crash."""
    try:
        data = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all((folder / f).is_file() for f in files):
        return None
    return data


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the lock of one cache entry: two builds sharing the cache (two
    terminals, ``make -j``) never build the same entry at once; the second waits
    and then finds it complete."""
    from builder import log

    with exclusive(_lock_path(folder), f"waiting for another build of cache entry "
                   f"{folder.parent.name}/{folder.name[:12]}", log.notice):
        yield


@contextmanager
def exclusive(lock_file: Path, waiting: str, say: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file``; when another process holds it,
    ``say(waiting)`` once and wait for it."""
    with open(lock_file, "a") as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def _lock_path(folder: Path) -> Path:
    """Locks live apart (``<cache>/locks/``), so an entry's folder holds only the
    entry and a failed build leaves nothing beside it."""
    locks = folder.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / f"{folder.parent.name}-{folder.name}.lock"


def use(folder: Path, files: tuple[str, ...],
        build: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """The entry's meta.json (and True) when it is complete, else ``build()``'s
    (and False), under the entry's lock. An incomplete entry is rebuilt with a
    notice. The entry's last use is recorded for ``pibake cache``."""
    with locked(folder):
        meta = entry(folder, files)
        if meta is None and folder.exists():
            from builder import log

            log.notice(f"cache entry {folder.parent.name}/{folder.name[:12]} is incomplete; "
                       "rebuilding it")
        cached = meta is not None
        if meta is None:
            meta = build()
        touch(folder)
    return meta, cached


def touch(folder: Path) -> None:
    """Record a use of an entry (its meta.json's mtime is the last use)."""
    with suppress(OSError):
        os.utime(folder / "meta.json", (time.time(), time.time()))


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


# ".name.tmp-PID", ".name.old-PID", or a TemporaryDirectory's ".role.tmp-PID-xxxx"
_STALE_RE = re.compile(r"^\..*\.(?:tmp|old)-(\d+)(?:-[^-]*)?$")


def clean_stale(root: Path) -> None:
    """Remove temporaries left by a killed build (``.*.tmp-PID`` whose PID is gone)."""
    if not root.exists():
        return
    for entry in root.iterdir():
        found = _STALE_RE.match(entry.name)
        if found is None or Path(f"/proc/{found.group(1)}").exists():
            continue  # not a temporary, or its build is still running
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


# --- listing and pruning -----------------------------------------------------

# folder under the cache -> the kind of entry it holds
KINDS = {"rootfs": "base", "roles": "role", "kernels": "kernel", "bases": "download"}


@dataclass(frozen=True)
class Entry:
    kind: str          # base | role | kernel | download
    key: str
    path: Path
    size: int          # bytes on disk
    last_use: float    # seconds since the epoch


def entries(root: Path | None = None) -> list[Entry]:
    """Every complete-looking entry in the cache (temporaries and locks skipped)."""
    root = root or cache_dir()
    found = []
    for folder, kind in KINDS.items():
        top = root / folder
        if not top.is_dir():
            continue
        for path in sorted(top.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            found.append(Entry(kind, path.name, path, _disk_usage(path), _last_use(path)))
    return found


def _disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _last_use(path: Path) -> float:
    meta = path / "meta.json"
    with suppress(OSError):
        return meta.stat().st_mtime
    return path.stat().st_mtime


def prune(keep: set[str], root: Path | None = None) -> list[Entry]:
    """Remove base, role and download entries whose key is not in ``keep``;
    kernel kits stay (``pibake boot`` uses them, no plan does). An entry another
    build holds locked is left alone."""
    removed = []
    for e in entries(root):
        if e.kind == "kernel" or e.key in keep:
            continue
        with open(_lock_path(e.path), "a") as fd:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            old = e.path.with_name(f".{e.path.name}.old-{os.getpid()}")
            os.replace(e.path, old)
            shutil.rmtree(old, ignore_errors=True)
        removed.append(e)
    return removed
