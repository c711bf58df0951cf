"""Downloaded base images: fetch once, verify, unpack, cache by sha256.

``fetch()`` turns a catalog entry (url + sha256) into a raw disk image at
``<cache>/bases/<sha256>/<name>.img``. The downloaded file is checked against
the sha256 before anything is unpacked, and nothing appears under its final
name until it is complete. A dropped connection is resumed with an HTTP Range
request; an interrupted run leaves ``bases/<sha256>.part``, which the next run
resumes. A cached, verified image is used without touching the network.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import re
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import requests
import urllib3

from builder import log
from builder.cache import atomic_dir, cache_dir, locked, sha256_file
from builder.errors import DownloadError

MARKER = "verified"
CHUNK = 1 << 20
# Pauses before each retry of a dropped connection; retries count only
# attempts that made no progress, so a slow but moving download never gives up.
BACKOFF: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
TIMEOUT = (15.0, 60.0)  # connect, read (seconds)

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FIX_URL = "check the url in the base catalog or cluster.yaml"
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})  # retried like a dropped connection


def fetch(
    url: str, sha256: str, *, name: str, cache: Path | None = None, progress: bool = True
) -> Path:
    """Return the verified, unpacked disk image for ``url``, downloading it if needed."""
    sha256 = sha256.lower()
    if not _SHA_RE.match(sha256):
        raise DownloadError(f"base '{name}': sha256 '{sha256}' is not 64 hex digits; "
                            "fix the sha256 in the base catalog or cluster.yaml")
    if not _NAME_RE.match(name):
        raise DownloadError(f"base '{name}': not a valid base name "
                            "(use letters, digits, '.', '_', '-')")
    bases = (cache if cache is not None else cache_dir()) / "bases"
    entry = bases / sha256
    image = entry / f"{name}.img"
    if _is_cached(entry, image):
        return image
    bases.mkdir(parents=True, exist_ok=True)
    with locked(entry):   # the cache's per-entry lock: one download of this base at a time
        if _is_cached(entry, image):  # another pibake finished it while we waited
            return image
        try:
            return _fetch_locked(url, sha256, name, bases, entry, image, progress)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(f"base '{name}': no space left on device in {bases}; "
                                    "free some space and build again") from exc
            raise


def _is_cached(entry: Path, image: Path) -> bool:
    return (entry / MARKER).is_file() and image.is_file()


def _fetch_locked(
    url: str, sha256: str, name: str, bases: Path, entry: Path, image: Path, progress: bool
) -> Path:
    local = _local_path(url, name)
    if local is not None:
        if not local.is_file():
            raise DownloadError(f"base '{name}': {local}: no such file; {_FIX_URL}")
        source = local
    else:
        source = bases / f"{sha256}.part"
        _download(url, source, name, progress)
    got = sha256_file(source)
    if got != sha256:
        if local is None:
            source.unlink(missing_ok=True)
        raise DownloadError(
            f"base '{name}': checksum mismatch: expected {sha256}, got {got}; the file at {url} "
            "is not the one the catalog names (fix the sha256 or the url)")
    try:
        with log.step(f"unpack base '{name}'"), atomic_dir(entry) as tmp:
            _unpack(source, tmp / image.name, name, move=local is None)
            (tmp / MARKER).write_text(f"sha256 {sha256}\nurl {url}\nimage {image.name}\n")
    except DownloadError:
        if local is None:  # verified yet unusable: fetching it again cannot help
            source.unlink(missing_ok=True)
        raise
    if local is None:
        source.unlink(missing_ok=True)
    return image


def _local_path(url: str, name: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" or len(parts.scheme) == 1:  # plain path (or a drive letter)
        return Path(url).expanduser()
    raise DownloadError(f"base '{name}': unsupported url scheme '{parts.scheme}' in {url}; "
                        "use http(s)://, file:// or a local path")


# -- HTTP with resume ---------------------------------------------------------


class _Dropped(Exception):
    """The transfer stopped early; ``reason`` is a short human text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _RangeDone(Exception):
    """A 416 answer to a Range request: the .part already holds the whole file."""


def _download(url: str, part: Path, name: str, progress: bool) -> None:
    failures = 0
    bar = _Progress(name, progress)
    with log.step(f"download base '{name}'"):
        while True:
            have = part.stat().st_size if part.exists() else 0
            try:
                _attempt(url, part, have, name, bar)
                return
            except _RangeDone:
                # The server says the .part already holds every byte.
                return
            except _Dropped as exc:
                now = part.stat().st_size if part.exists() else 0
                total = bar.total
                failures = 0 if now > have else failures + 1
                if failures > len(BACKOFF):
                    at = f"at {now} of {total} bytes" if total is not None else f"at {now} bytes"
                    if now == 0 and bar.total is None:
                        raise DownloadError(
                            f"base '{name}': download failed: cannot reach {url} after "
                            f"{len(BACKOFF)} retries: {exc.reason}; check the network and "
                            "the url in the base catalog or cluster.yaml") from None
                    raise DownloadError(
                        f"base '{name}': connection dropped after {len(BACKOFF)} retries {at}: "
                        f"{exc.reason}; run the build again to resume") from None
                if failures:
                    time.sleep(BACKOFF[failures - 1])


def _attempt(url: str, part: Path, have: int, name: str, bar: _Progress) -> None:
    # identity: byte counts and Range offsets must be those of the file itself
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = requests.get(url, headers=headers, stream=True, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise _Dropped(_reason(exc)) from exc
    with resp:
        if resp.status_code == 416 and have:
            raise _RangeDone()
        if resp.status_code in _TRANSIENT:
            raise _Dropped(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise DownloadError(f"base '{name}': download failed: HTTP {resp.status_code} "
                                f"for {url}; {_FIX_URL}")
        # A 200 to a Range request means the server ignores Range: start over.
        start = _range_start(resp) if resp.status_code == 206 else 0
        if resp.status_code == 206 and start != have:
            part.unlink(missing_ok=True)
            raise _Dropped(f"the server answered a request for bytes {have}- with {start}-")
        length = _int_header(resp, "Content-Length")
        total = start + length if length is not None else None
        bar.start(start, total)
        got = start
        with open(part, "r+b" if start else "wb") as f:
            f.seek(start)
            f.truncate()
            # read1 hands over whatever has arrived, so a drop loses no received bytes
            try:
                while chunk := resp.raw.read1(CHUNK, decode_content=False):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(got)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Dropped(_reason(exc)) from exc
        if total is not None and got < total:
            raise _Dropped("connection closed by the server before the end")
        bar.done()


def _range_start(resp: requests.Response) -> int:
    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else -1


def _int_header(resp: requests.Response, key: str) -> int | None:
    value = resp.headers.get(key, "")
    return int(value) if value.isdigit() else None


def _reason(exc: BaseException) -> str:
    """A short reason for a network error (requests' own texts run to 300 chars)."""
    text = str(exc)
    if "IncompleteRead" in text or "Connection broken" in text:
        return "connection closed by the server before the end"
    m = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", text)
    if m:
        return m.group(1).strip().rstrip(".")
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__


class _Progress:
    """A bar on a terminal, else one line per 10% (so CI logs stay short)."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name = name
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.total: int | None = None
        self.last_decile = -1

    def start(self, have: int, total: int | None) -> None:
        self.total = total
        self.last_decile = (have * 10 // total) if total else -1

    def update(self, got: int) -> None:
        if not self.enabled or not self.total:
            return
        if self.tty:
            pct = got * 100 // self.total
            filled = pct * 30 // 100
            sys.stderr.write(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {pct:3d}% "
                             f"{got / 2**20:.1f}/{self.total / 2**20:.1f} MiB")
            sys.stderr.flush()
            return
        decile = got * 10 // self.total
        if decile > self.last_decile:
            self.last_decile = decile
            log.info(f"    base '{self.name}': {decile * 10}% of {self.total / 2**20:.1f} MiB")

    def done(self) -> None:
        if self.enabled and self.tty and self.total:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- unpacking ----------------------------------------------------------------

_MAGIC = ((b"PK\x03\x04", "zip"), (b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b", "gz"))


def _kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "img"


def _unpack(source: Path, dest: Path, name: str, *, move: bool) -> None:
    kind = _kind(source)
    try:
        if kind == "img":
            if move:
                os.replace(source, dest)
            else:
                with open(source, "rb") as src:
                    _copy_sparse(src, dest)
        elif kind == "xz":
            with lzma.open(source, "rb") as src:
                _copy_sparse(src, dest)
        elif kind == "gz":
            with gzip.open(source, "rb") as src:
                _copy_sparse(src, dest)
        else:
            with zipfile.ZipFile(source) as zf:
                images = sorted(n for n in zf.namelist() if n.lower().endswith(".img"))
                if len(images) != 1:
                    found = ", ".join(images) or "none"
                    raise DownloadError(f"base '{name}': the zip holds {len(images)} .img files "
                                        f"({found}), expected exactly one; point the url at "
                                        "a single image")
                with zf.open(images[0]) as src:
                    _copy_sparse(src, dest)
    except (lzma.LZMAError, zlib.error, zipfile.BadZipFile, EOFError, gzip.BadGzipFile) as exc:
        raise DownloadError(f"base '{name}': cannot unpack the {kind} file: {exc}; "
                            f"{_FIX_URL}") from exc


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _copy_sparse(src: _Reader, dest: Path) -> None:
    """Copy, leaving holes for all-zero blocks: Pi images are mostly empty space."""
    zero = bytes(CHUNK)
    size = 0
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            if chunk == zero[: len(chunk)]:
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            size += len(chunk)
        out.truncate(size)
