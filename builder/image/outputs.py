"""The files that go next to an image: checksum, block map, compressed copy, manifest.

Each is written under a temporary name and renamed into place, so a failed or
interrupted build never leaves a checksum or manifest for an image that is not
there (or a half-compressed copy that looks complete).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Any

from builder.cache import atomic_file, sha256_file
from builder.errors import BuildError
from builder.run import run, which


class Compression(StrEnum):
    none = "none"
    zstd = "zstd"
    xz = "xz"


SUFFIX = {Compression.zstd: ".zst", Compression.xz: ".xz"}


def image_mode(has_secrets: bool) -> int:
    """File mode for an image and its compressed copy: private when it holds secrets."""
    return 0o600 if has_secrets else 0o644


def _side_mode(img: Path) -> int:
    """A side file is as private as its image (an image with secrets is 0600)."""
    return 0o600 if img.stat().st_mode & 0o077 == 0 else 0o644


def _sibling(img: Path, suffix: str) -> Path:
    return img.with_name(img.name + suffix)


def write_sha256(img: Path) -> str:
    """Write ``<img>.sha256`` as ``sha256sum -c`` reads it; return the hex digest."""
    if not img.is_file():
        raise BuildError(f"{img}: image not found; cannot write its checksum")
    digest = sha256_file(img)
    with atomic_file(_sibling(img, ".sha256"), mode=_side_mode(img)) as tmp:
        tmp.write_text(f"{digest}  {img.name}\n")
    return digest


def write_bmap(img: Path) -> Path:
    """Write ``<img>.bmap`` (mapped ranges and their checksums) for ``bmaptool copy``."""
    if not img.is_file():
        raise BuildError(f"{img}: image not found; cannot write its block map")
    bmaptool = which("bmaptool", "bmap-tools")
    final = _sibling(img, ".bmap")
    with atomic_file(final, mode=_side_mode(img)) as tmp:
        run([bmaptool, "--quiet", "create", "-o", tmp, img], what="bmaptool create")
    return final


def write_checksums(img: Path) -> tuple[str, Path]:
    """``write_sha256`` and ``write_bmap`` side by side: each reads the whole
    image, and hashing releases the GIL, so on two cores this halves the wait."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        bmap = pool.submit(write_bmap, img)
        digest = write_sha256(img)
        return digest, bmap.result()


def _private_file(path: Path, mode: int) -> None:
    # Created with its final mode before the compressor writes a byte, so a
    # copy of an image with secrets is never readable by others.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))


def compress(img: Path, method: Compression | str, *, mode: int | None = None) -> Path | None:
    """Write ``<img>.zst`` or ``<img>.xz`` and its ``.sha256``; None for ``none``.

    The copy gets ``mode``, or the image's own mode when not given.
    """
    try:
        method = Compression(method)
    except ValueError:
        known = ", ".join(c.value for c in Compression)
        raise BuildError(f"compression {method!r} is not known (known: {known})") from None
    if method is Compression.none:
        return None
    if not img.is_file():
        raise BuildError(f"{img}: image not found; cannot compress it")
    perm = img.stat().st_mode & 0o777 if mode is None else mode
    final = _sibling(img, SUFFIX[method])
    with atomic_file(final, mode=perm) as tmp:
        _private_file(tmp, perm)
        if method is Compression.zstd:
            zstd = which("zstd", "zstd")
            run([zstd, "-q", "-f", "-T0", "-3", "-o", tmp, img], what="zstd")
        else:
            xz = which("xz", "xz-utils")
            # xz has no output-file option; the shell redirect keeps tmp's mode.
            run(["sh", "-c", 'exec "$0" -T0 -6 -c -- "$1" > "$2"', xz, img, tmp], what="xz")
    write_sha256(final)
    return final


def write_manifest(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    """Write ``data`` as JSON (sorted keys, two-space indent, final newline)."""
    try:
        text = json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise BuildError(f"{path}: manifest data is not JSON: {exc}") from None
    with atomic_file(path, mode=mode) as tmp:
        tmp.write_text(text, encoding="utf-8")
