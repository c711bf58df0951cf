"""Bit-identical rebuilds: one timestamp for every build of the same sources.

Measured before this module: two builds of one host a minute apart differed
in 271 bytes, all timestamps: FAT entries written by mtools and ext4 inodes
written by debugfs in the host stage, plus, for a role built again, every
inode's ctime and atime (mke2fs -d copies them from the build tree, where
ctime is the time of extraction and atime moves as mke2fs reads; e2fsprogs
1.47.0 does not clamp them).

So: ``SOURCE_DATE_EPOCH`` is pinned for the whole build (the project's last
commit time, or a fixed date outside git); mtools, mkfs.vfat --invariant,
initramfs-tools and shadow honour it; e2fsprogs gets it as
``E2FSPROGS_FAKE_TIME``. Before a role's partition images are made, the tree
drops files that record the build itself (caches keyed by inode or build
time) and every time is clamped to the epoch; after mke2fs, one debugfs pass
sets every used inode's ctime and atime to the epoch.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from builder.errors import BuildError
from builder.run import run, which

# 2024-01-01T00:00:00Z: used outside git, where no commit time says when the sources changed.
FALLBACK_EPOCH = 1704067200

# Files that record the build rather than the sources: their bytes change
# from one build to the next and nothing needs them on first boot (each is
# recreated by the program that owns it).
UNREPRODUCIBLE = (
    "var/cache/ldconfig/aux-cache",     # inode numbers and ctimes of the build tree
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "var/lib/dpkg/statoverride-old",
    "var/lib/systemd/random-seed",
    "var/lib/dbus/machine-id",
)
UNREPRODUCIBLE_DIRS = (
    "var/cache/man",            # man-db's index: build time and hash order
    "var/cache/fontconfig",     # caches stamped with directory mtimes
)


def source_date_epoch(root: Path) -> int:
    """$SOURCE_DATE_EPOCH, else the last commit time of ``root``'s repository,
    else FALLBACK_EPOCH."""
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if env:
        if not env.isdigit():
            raise BuildError(f"SOURCE_DATE_EPOCH={env!r}: not a number of seconds since "
                             "1970; unset it or give e.g. 1704067200")
        return int(env)
    try:
        out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%ct"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return int(out) if out.isdigit() else FALLBACK_EPOCH


def pin_source_date_epoch(root: Path) -> int:
    """Export SOURCE_DATE_EPOCH (and e2fsprogs' spelling of it) for every
    tool this build runs; return it."""
    epoch = source_date_epoch(root)
    os.environ["SOURCE_DATE_EPOCH"] = str(epoch)
    os.environ["E2FSPROGS_FAKE_TIME"] = str(epoch)
    return epoch


def drop_unreproducible(tree: Path) -> None:
    for rel in UNREPRODUCIBLE:
        path = tree / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    for rel in UNREPRODUCIBLE_DIRS:
        folder = tree / rel
        if folder.is_dir() and not folder.is_symlink():
            for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
                for name in filenames:
                    os.unlink(os.path.join(dirpath, name))
                for name in dirnames:
                    full = os.path.join(dirpath, name)
                    if os.path.islink(full):
                        os.unlink(full)
                    else:
                        os.rmdir(full)


def clamp_times(tree: Path, epoch: int) -> None:
    """Every mtime to min(mtime, epoch) in whole seconds, atime = mtime.

    Package files keep their (older) release times; files written during the
    build get the epoch. Directories are done after their contents.
    """
    limit = epoch * 1_000_000_000

    def stamp(path: str, st: os.stat_result) -> None:
        mtime = min(st.st_mtime_ns // 1_000_000_000 * 1_000_000_000, limit)
        if st.st_mtime_ns != mtime or st.st_atime_ns != mtime:
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)

    for dirpath, dirnames, filenames in os.walk(tree, topdown=False):
        for name in [*filenames, *dirnames]:
            full = os.path.join(dirpath, name)
            stamp(full, os.lstat(full))
    stamp(os.fspath(tree), os.lstat(tree))


_FREE_RE = re.compile(r"^\s*Free inodes:\s*(.*)$")
_COUNT_RE = re.compile(r"^Inode count:\s*(\d+)$")


def used_inodes(img: Path) -> list[int]:
    """Inode numbers marked in use, from dumpe2fs' per-group free lists."""
    dumpe2fs = which("dumpe2fs", "e2fsprogs")
    text = run([dumpe2fs, img], capture=True, what="dumpe2fs").stdout.decode(errors="replace")
    count = 0
    free: set[int] = set()
    for line in text.splitlines():
        if m := _COUNT_RE.match(line):
            count = int(m.group(1))
        elif m := _FREE_RE.match(line):
            for part in m.group(1).split(","):
                part = part.strip()
                if not part:
                    continue
                lo, _, hi = part.partition("-")
                free.update(range(int(lo), int(hi or lo) + 1))
    if count == 0:
        raise BuildError(f"{img}: dumpe2fs shows no inode count; not an ext4 image?")
    return [n for n in range(1, count + 1) if n not in free]


def pin_inode_ctimes(img: Path, epoch: int) -> int:
    """Set the ctime and atime of every used inode in the ext4 ``img`` to
    ``epoch`` (mke2fs -d reading the tree moves atimes, relatime); return how
    many inodes were set."""
    debugfs = which("debugfs", "e2fsprogs")
    inodes = used_inodes(img)
    with tempfile.NamedTemporaryFile("w", prefix="pibake-ctime-", suffix=".cmds") as script:
        for n in inodes:
            script.write(f"sif <{n}> ctime @{epoch}\nsif <{n}> atime @{epoch}\n")
        script.flush()
        proc = run([debugfs, "-w", "-f", script.name, img], capture=True,
                   env={"E2FSPROGS_FAKE_TIME": str(epoch), "DEBUGFS_PAGER": "__none__"},
                   what="debugfs")
    errors = [ln for ln in proc.stderr.decode(errors="replace").splitlines()
              if ln.strip() and not ln.startswith(("debugfs 1.", "Using EXT2FS"))]
    if errors:
        raise BuildError(f"{img}: setting inode times failed: {errors[-1].strip()}")
    return len(inodes)


def normalize_tree(tree: Path, epoch: int) -> None:
    drop_unreproducible(tree)
    clamp_times(tree, epoch)
