"""Partition images and the partitioned disk, without loop devices, mounts or libguestfs.

A role's root file system is built once into a ready-made ext4 image
(``mke2fs -d``) and its boot files into a FAT32 image (``mkfs.vfat`` + mtools).
``assemble_disk`` lays copies of them out behind an MBR and writes the host's
delta (hostname, network, first-boot runner, cmdline.txt) into the new
partitions with one ``debugfs`` batch and a few mtools calls. Every step works
on plain files, so a warm per-host build costs seconds, not minutes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal

from builder.cache import atomic_file
from builder.errors import BuildError, NoSpaceError
from builder.run import run, which

MiB = 1 << 20
GiB = 1 << 30
SECTOR = 512
BLOCK = 4096
INODE_SIZE = 256
DEFAULT_ALIGN = 4 * MiB
DEFAULT_BOOT_SIZE = 256 * MiB

# Named explicitly (after "none") so the result does not depend on the host's
# /etc/mke2fs.conf: newer configurations add orphan_file (unknown to e2fsck
# 1.43 and to kernels before 5.15) and metadata_csum_seed. Everything listed
# here is handled by Raspbian stretch's kernel 4.14 and e2fsck 1.43.
_EXT4_FEATURES = (
    "has_journal,ext_attr,resize_inode,dir_index,filetype,extent,64bit,flex_bg,"
    "sparse_super,large_file,huge_file,dir_nlink,extra_isize,metadata_csum"
)
EXT4_FEATURES: dict[str, str] = {
    "stretch": _EXT4_FEATURES,
    "buster": _EXT4_FEATURES,
    "bullseye": _EXT4_FEATURES,
    "bookworm": _EXT4_FEATURES,
}

_FENCE = "/.pibake-fence-"
_FENCE_RE = re.compile(r"^/\.pibake-fence-(\d+): File not found by ext2_lookup")


@dataclass(frozen=True)
class Entry:
    """One file, directory or symlink to place into a file system image."""

    path: str
    kind: Literal["file", "dir", "symlink"]
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def partuuid(disk_id: int, n: int) -> str:
    """The PARTUUID Linux gives partition ``n`` of an MBR disk with this id."""
    return f"{disk_id:08x}-{n:02x}"


# ---------------------------------------------------------------- sizing


@dataclass(frozen=True)
class _TreeUsage:
    data_bytes: int
    inodes: int


def _scan(tree: Path) -> _TreeUsage:
    """Blocks and inodes a tree needs on ext4 with 4 KiB blocks (hard links once)."""
    if not tree.is_dir():
        raise BuildError(f"{tree}: root file system tree not found or not a folder")
    seen: set[tuple[int, int]] = set()
    blocks = 1  # the root directory
    inodes = 1

    def walk(path: str) -> None:
        nonlocal blocks, inodes
        with os.scandir(path) as it:
            for ent in it:
                st = ent.stat(follow_symlinks=False)
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                inodes += 1
                if stat.S_ISREG(st.st_mode):
                    blocks += -(-st.st_size // BLOCK)
                elif stat.S_ISDIR(st.st_mode):
                    blocks += max(1, -(-st.st_size // BLOCK))
                    walk(ent.path)
                elif stat.S_ISLNK(st.st_mode) and st.st_size >= 60:
                    blocks += 1  # longer targets do not fit in the inode

    walk(os.fspath(tree))
    return _TreeUsage(blocks * BLOCK, inodes)


def _journal_bytes(size: int) -> int:
    # e2fsprogs' own default steps, pinned so the size estimate and mke2fs agree.
    if size < 128 * MiB:
        return 4 * MiB
    if size < 1 * GiB:
        return 16 * MiB
    if size < 2 * GiB:
        return 32 * MiB
    return 64 * MiB


def _inode_count(size: int, used: int) -> int:
    # The usual one inode per 16 KiB, unless the tree has more small files than that.
    return max(size // 16384, used + used // 4 + 256)


def ext4_size_for(tree: Path, margin: float = 0.25, minimum: int = 64 * MiB) -> int:
    """Bytes for an ext4 holding ``tree`` plus ``margin`` free, in whole MiB.

    Kept small on purpose: the first-boot runner grows the file system to the
    card, and a small image is quicker to build, copy and flash.
    """
    usage = _scan(tree)
    content = usage.data_bytes + (usage.inodes + usage.inodes // 4 + 256) * INODE_SIZE
    size = int(content * (1 + margin))
    # Group descriptors, bitmaps, reserved GDT blocks for growing, and the
    # inode tables at one inode per 16 KiB.
    size += 8 * MiB + size // 64
    size += _journal_bytes(size)
    size = -(-size // MiB) * MiB
    return max(size, minimum)


# ---------------------------------------------------------------- ext4


def _check_uuid(value: str, what: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise BuildError(
            f"{what}: invalid UUID {value!r}; use the form 12345678-1234-1234-1234-123456789abc"
        ) from None


def _fresh_file(path: Path, size: int, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def make_ext4(
    tree: Path,
    out: Path,
    *,
    size: int,
    label: str,
    uuid: str,
    compat: str = "bookworm",
) -> None:
    """Build an ext4 image of ``tree`` (owners, modes, links, devices, xattrs kept).

    ``compat`` names the oldest release that must mount and fsck the result.
    The root directory is always 0755 root:root, whatever the tree's own is.
    With $SOURCE_DATE_EPOCH set the image is byte-for-byte reproducible.
    """
    if compat not in EXT4_FEATURES:
        known = ", ".join(sorted(EXT4_FEATURES))
        raise BuildError(f"ext4 compat {compat!r} is not known (known: {known})")
    if len(label.encode()) > 16:
        raise BuildError(f"ext4 label {label!r} is longer than 16 bytes; shorten it")
    fs_uuid = _check_uuid(uuid, "ext4 uuid")
    if size % BLOCK or size < 16 * MiB:
        raise BuildError(
            f"ext4 size {size} must be a multiple of {BLOCK} bytes and at least 16 MiB"
        )
    usage = _scan(tree)
    mke2fs = which("mke2fs", "e2fsprogs")
    env: dict[str, str] = {}
    if "SOURCE_DATE_EPOCH" in os.environ:
        env["E2FSPROGS_FAKE_TIME"] = os.environ["SOURCE_DATE_EPOCH"]
    with atomic_file(out) as tmp:
        _fresh_file(tmp, size)
        argv = [
            mke2fs, "-q", "-F", "-t", "ext4",
            "-b", str(BLOCK), "-I", str(INODE_SIZE),
            "-N", str(_inode_count(size, usage.inodes)),
            "-O", f"none,{EXT4_FEATURES[compat]}",
            "-J", f"size={_journal_bytes(size) // MiB}",
            "-L", label, "-U", fs_uuid,
            "-E", f"hash_seed={fs_uuid},root_owner=0:0",
            "-d", os.fspath(tree), os.fspath(tmp),
        ]  # fmt: skip
        try:
            run(argv, env=env, what="mke2fs")
        except BuildError as exc:
            if "Could not allocate block" in str(exc) or "No free space" in str(exc):
                raise BuildError(
                    f"{tree}: does not fit in an ext4 of {size // MiB} MiB; "
                    "give it a larger size or margin"
                ) from None
            raise


def _dq(path: str) -> str:
    """Quote a path for debugfs' command parser."""
    if any(c in path for c in '"\n\r\\'):
        raise BuildError(f"{path}: quotes, backslashes and newlines are not allowed in image paths")
    return f'"{path}"'


def _norm(path: str) -> str:
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts or str(p) == "/":
        raise BuildError(f"{path}: image paths must be absolute, without '..', and not '/'")
    return str(p)


def _parents(path: str) -> Iterator[str]:
    for parent in reversed(PurePosixPath(path).parents[:-1]):
        yield str(parent)


# debugfs follows symlinks in the middle of a path but not at its end, so
# "/lib/x" fails when /lib links to usr/lib (merged /usr). Spelling the parent
# as "/lib/." makes it a middle component: "/lib/./x".
def _at(path: str) -> str:
    """``path`` itself (a symlink is not followed), with its parent followed."""
    parent, name = path.rsplit("/", 1)
    return _dq(f"{parent}/./{name}")


def _into(path: str) -> str:
    """The directory ``path`` leads to, following a symlink."""
    return _dq(f"{path}/.")


@dataclass(frozen=True)
class _Cmd:
    line: str
    path: str


def _debugfs_batch(
    debugfs: str, spec: str, lines: Sequence[_Cmd], *, write: bool, shown: str
) -> list[list[str]]:
    """Run ``lines`` in one debugfs; return each command's stderr lines.

    debugfs reports failures on stderr but exits 0, and its stdout is buffered
    apart from stderr, so after each command we cd into a path that cannot
    exist: that error line is a fence tying the stderr lines before it to the
    command.
    """
    with tempfile.NamedTemporaryFile("w", prefix="pibake-debugfs-", suffix=".cmds") as script:
        for n, cmd in enumerate(lines):
            script.write(f"{cmd.line}\ncd {_FENCE}{n}\n")
        script.flush()
        argv = [debugfs, *(["-w"] if write else []), "-f", script.name, spec]
        proc = run(argv, capture=True, env={"DEBUGFS_PAGER": "__none__"}, what="debugfs")
    results: list[list[str]] = []
    pending: list[str] = []
    for raw in proc.stderr.decode(errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("debugfs 1.") or line.startswith("Using EXT2FS"):
            continue
        if "while trying to open" in line or "Filesystem not open" in line:
            raise BuildError(f"{shown}: not a{' writable' if write else 'n'} ext4 image ({line})")
        m = _FENCE_RE.match(line)
        if m is None or int(m.group(1)) != len(results):
            pending.append(line)
            continue
        results.append(pending)
        pending = []
    if len(results) != len(lines):
        raise BuildError(
            f"{shown}: debugfs stopped after {len(results)} of {len(lines)} commands: "
            f"{' | '.join(pending[-2:]) or 'no output'}"
        )
    return results


def _probe(
    debugfs: str, spec: str, paths: Sequence[tuple[str, bool]], shown: str
) -> dict[tuple[str, bool], str]:
    """ "dir", "other" or "missing" for each (path, follow a final symlink)."""
    cmds = [_Cmd(f"cd {_into(p) if follow else _at(p)}", p) for p, follow in paths]
    found: dict[tuple[str, bool], str] = {}
    results = _debugfs_batch(debugfs, spec, cmds, write=False, shown=shown)
    for key, cmd, errors in zip(paths, cmds, results, strict=True):
        if not errors:
            found[key] = "dir"
        elif "not a directory" in errors[-1]:
            found[key] = "other"
        elif "File not found" in errors[-1]:
            found[key] = "missing"
        else:
            raise BuildError(f"{shown}: {cmd.path}: debugfs cannot look it up: {errors[-1]}")
    return found


def _plan(
    shown: str, entries: Sequence[tuple[str, Entry]], found: dict[tuple[str, bool], str],
    staging: Path, mtime: int,
) -> list[_Cmd]:  # fmt: skip
    cmds: list[_Cmd] = []
    # What each path is once the commands so far have run.
    dirs = {p for (p, follow), kind in found.items() if follow and kind == "dir"}
    others = {p for (p, follow), kind in found.items() if not follow and kind == "other"}
    for i, (path, e) in enumerate(entries):
        for parent in _parents(path):
            if parent in dirs:
                continue
            if found.get((parent, True)) == "other" or parent in others:
                raise BuildError(
                    f"{shown}: {parent} exists and is not a directory; cannot create {path} in it"
                )
            cmds.append(_Cmd(f"mkdir {_at(parent)}", parent))
            dirs.add(parent)
        if e.kind == "dir":
            if path in others or (path not in dirs and found.get((path, True)) == "other"):
                raise BuildError(f"{shown}: {path} exists and is not a directory; remove it first")
            if path not in dirs:
                cmds.append(_Cmd(f"mkdir {_at(path)}", path))
                dirs.add(path)
            target, type_bits = _into(path), stat.S_IFDIR
        elif e.kind in ("file", "symlink"):
            if path in dirs and path not in others:
                raise BuildError(
                    f"{shown}: {path} is a directory; cannot replace it with a {e.kind}"
                )
            if path in others:
                cmds.append(_Cmd(f"rm {_at(path)}", path))
            if e.kind == "file":
                src = staging / str(i)
                src.write_bytes(e.data)
                cmds.append(_Cmd(f"write {_dq(os.fspath(src))} {_at(path)}", path))
                type_bits = stat.S_IFREG
            else:
                if not e.target:
                    raise BuildError(f"{path}: symlink without a target")
                cmds.append(_Cmd(f"symlink {_at(path)} {_dq(e.target)}", path))
                type_bits = stat.S_IFLNK
            others.add(path)
            dirs.discard(path)  # it may have been a symlink to a directory
            target = _at(path)
        else:
            raise BuildError(f"{path}: unknown entry kind {e.kind!r} (known: file, dir, symlink)")
        perm = 0o777 if e.kind == "symlink" else e.mode & 0o7777
        for field, value in (
            ("mode", f"0{type_bits | perm:o}"),
            ("uid", str(e.uid)),
            ("gid", str(e.gid)),
            ("mtime", f"@{mtime}"),
            ("ctime", f"@{mtime}"),
            ("atime", f"@{mtime}"),
            ("crtime", f"@{mtime}"),
        ):
            cmds.append(_Cmd(f"sif {target} {field} {value}", path))
    return cmds


def _default_mtime() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())


def _ext4_spec(img: Path, offset: int) -> str:
    return f"{img}?offset={offset}" if offset else os.fspath(img)


def write_ext4(
    img: Path,
    entries: Sequence[Entry],
    *,
    offset: int = 0,
    mtime: int | None = None,
    name: str | None = None,
) -> None:
    """Write ``entries`` into the ext4 in ``img`` (at byte ``offset``).

    Files and symlinks replace what is there; directories are created or get
    the entry's mode and owner; missing parents are created 0755 root. One
    debugfs run looks up what exists, one writes. The image is changed in
    place: callers work on a copy inside an atomic_file. ``name`` stands for
    the image in error messages.
    """
    if not entries:
        return
    debugfs = which("debugfs", "e2fsprogs")
    spec = _ext4_spec(img, offset)
    shown = name or os.fspath(img)
    stamp = _default_mtime() if mtime is None else mtime
    normed: list[tuple[str, Entry]] = []
    for e in entries:
        path = _norm(e.path)
        _dq(path)
        _dq(e.target)
        normed.append((path, e))
    probes: dict[tuple[str, bool], None] = {}
    for path, e in normed:
        for parent in _parents(path):
            probes[(parent, True)] = None
        probes[(path, e.kind == "dir")] = None
        probes[(path, True)] = None
    found = _probe(debugfs, spec, list(probes), shown)
    with tempfile.TemporaryDirectory(prefix="pibake-debugfs-") as staging:
        cmds = _plan(shown, normed, found, Path(staging), stamp)
        results = _debugfs_batch(debugfs, spec, cmds, write=True, shown=shown)
    for cmd, errors in zip(cmds, results, strict=True):
        if errors:
            raise BuildError(f"{shown}: {cmd.path}: debugfs '{cmd.line}' failed: {errors[-1]}")


def read_ext4(img: Path, path: str, *, offset: int = 0) -> bytes:
    """The bytes of ``path`` inside the ext4 in ``img``."""
    debugfs = which("debugfs", "e2fsprogs")
    proc = run(
        [debugfs, "-R", f"cat {_dq(_norm(path))}", _ext4_spec(img, offset)],
        capture=True,
        env={"DEBUGFS_PAGER": "__none__"},
        what="debugfs",
    )
    errors = [
        ln
        for ln in proc.stderr.decode(errors="replace").splitlines()
        if ln.strip() and not ln.startswith("debugfs 1.")
    ]
    if errors:
        raise BuildError(f"{img}: cannot read {path}: {errors[-1].strip()}")
    return proc.stdout


# ---------------------------------------------------------------- FAT32


def _fat_sectors_per_cluster(size: int) -> int:
    # FAT32 needs at least 65525 clusters; mtools refuses fewer. Take the
    # biggest cluster (fewer FAT sectors) that still leaves a safe count.
    for spc in (8, 4, 2, 1):
        if size // (SECTOR * spc) >= 66000:
            return spc
    raise BuildError(f"FAT32 size {size // MiB} MiB is too small; use at least 33 MiB")


def _mtools_env() -> dict[str, str]:
    # mkfs.vfat's geometry fields do not match what mtools expects of a floppy-sized
    # BIOS disk; the check is meaningless for an image file.
    return {"MTOOLS_SKIP_CHECK": "1"}


def _mtools_img(img: Path, offset: int) -> str:
    return f"{img}@@{offset}" if offset else os.fspath(img)


def make_vfat(
    tree: Path,
    out: Path,
    *,
    size: int = DEFAULT_BOOT_SIZE,
    label: str = "bootfs",
    volume_id: str,
    hidden_sectors: int = DEFAULT_ALIGN // SECTOR,
) -> None:
    """Build a FAT32 image of ``tree``. ``volume_id`` is 8 hex digits (the serial).

    ``hidden_sectors`` is the partition's start, recorded in the boot sector as
    a partitioning tool would.
    """
    if not re.fullmatch(r"[0-9a-fA-F]{1,8}", volume_id):
        raise BuildError(f"FAT volume id {volume_id!r} must be 1 to 8 hex digits, e.g. 1a2b3c4d")
    if len(label.encode()) > 11:
        raise BuildError(f"FAT label {label!r} is longer than 11 bytes; shorten it")
    if not tree.is_dir():
        raise BuildError(f"{tree}: boot file tree not found or not a folder")
    spc = _fat_sectors_per_cluster(size)
    mkfs = which("mkfs.vfat", "dosfstools")
    mcopy = which("mcopy", "mtools")
    items = sorted(tree.iterdir())
    with atomic_file(out) as tmp:
        _fresh_file(tmp, size)
        run(
            # --invariant (fixed times) must come before -i or it resets the serial.
            [mkfs, "--invariant", "-F", "32", "-s", str(spc), "-n", label, "-i", volume_id,
             "-h", str(hidden_sectors), tmp],
            what="mkfs.vfat",
        )  # fmt: skip
        if items:
            run(
                [mcopy, "-i", tmp, "-s", "-m", "-Q", *items, "::/"],
                env=_mtools_env(),
                what="mcopy",
            )


def write_vfat(
    img: Path, entries: Sequence[Entry], *, offset: int = 0, mtime: int | None = None
) -> None:
    """Write ``entries`` (files and dirs) into the FAT in ``img``, replacing files."""
    if not entries:
        return
    mmd = which("mmd", "mtools")
    mcopy = which("mcopy", "mtools")
    spec = _mtools_img(img, offset)
    stamp = _default_mtime() if mtime is None else mtime
    dirs: list[str] = []
    files: list[tuple[str, bytes]] = []
    for e in entries:
        path = _norm(e.path)
        if e.kind == "symlink":
            raise BuildError(f"{path}: FAT has no symlinks; write a file instead")
        for parent in _parents(path):
            if parent not in dirs:
                dirs.append(parent)
        if e.kind == "dir":
            if path not in dirs:
                dirs.append(path)
        else:
            files.append((path, e.data))
    # mmd fails on a directory that exists, so ask first (FAT names ignore case).
    have = _vfat_dirs(img, offset)
    missing = [d for d in dirs if d.lower() not in have]
    if missing:
        run([mmd, "-i", spec, *[f"::{d}" for d in missing]], env=_mtools_env(), what="mmd")
    with tempfile.TemporaryDirectory(prefix="pibake-mtools-") as staging:
        for n, (path, data) in enumerate(files):
            src = Path(staging) / str(n)
            src.write_bytes(data)
            os.utime(src, (stamp, stamp))
            run(
                [mcopy, "-o", "-D", "o", "-m", "-i", spec, src, f"::{path}"],
                env=_mtools_env(),
                what=f"mcopy {path}",
            )


def _vfat_dirs(img: Path, offset: int) -> set[str]:
    mdir = which("mdir", "mtools")
    proc = run(
        [mdir, "-/", "-b", "-i", _mtools_img(img, offset), "::/"],
        capture=True,
        env=_mtools_env(),
        what="mdir",
    )
    dirs = set()
    for line in proc.stdout.decode(errors="replace").splitlines():
        if line.startswith("::/") and line.endswith("/"):
            dirs.add(line[2:-1].lower())
    return dirs


def list_vfat(img: Path, *, offset: int = 0) -> list[str]:
    """The names in the top folder of the FAT in ``img``, sorted."""
    mdir = which("mdir", "mtools")
    proc = run([mdir, "-b", "-i", _mtools_img(img, offset), "::/"], capture=True,
               env=_mtools_env(), what=f"mdir {img}")
    lines = proc.stdout.decode(errors="replace").splitlines()
    return sorted(ln.strip().removeprefix("::/").rstrip("/") for ln in lines if ln.strip())


def read_vfat(img: Path, path: str, *, offset: int = 0) -> bytes:
    """The bytes of ``path`` inside the FAT in ``img``."""
    mcopy = which("mcopy", "mtools")
    proc = run(
        [mcopy, "-n", "-i", _mtools_img(img, offset), f"::{_norm(path)}", "-"],
        capture=True,
        env=_mtools_env(),
        what=f"mcopy {path}",
    )
    return proc.stdout


# ---------------------------------------------------------------- disk


def data_extents(fd: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each data extent of an open file, in order; holes are skipped."""
    end = os.fstat(fd).st_size
    pos = 0
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        yield data, hole
        pos = hole


def _copy_sparse(src: Path, dst_fd: int, dst_offset: int) -> None:
    """Copy the data extents of ``src`` to ``dst_fd`` at ``dst_offset``; holes stay holes."""
    with open(src, "rb") as f:
        for data, hole in data_extents(f.fileno()):
            _copy_range(f.fileno(), dst_fd, data, dst_offset + data, hole - data)


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int) -> None:
    while count > 0:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(count, 1 << 30), src_off, dst_off)
        except OSError:
            n = 0
        if n <= 0:  # not supported here (or across file systems): plain copy
            chunk = os.pread(src_fd, min(count, 8 * MiB), src_off)
            if not chunk:
                raise BuildError(f"short read while copying a partition image at byte {src_off}")
            n = os.pwrite(dst_fd, chunk, dst_off)
        src_off += n
        dst_off += n
        count -= n


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


@dataclass(frozen=True)
class DiskLayout:
    """Byte offsets and sizes of the two partitions in an assembled disk image."""

    boot_start: int
    boot_size: int
    root_start: int
    root_size: int
    size: int
    disk_id: int = 0    # the MBR disk id (PARTUUIDs are partuuid(disk_id, n))


def read_disk(img: Path) -> DiskLayout:
    """The layout of an MBR disk image whose partition 1 is the boot FAT and
    partition 2 the root file system (every pibake output, every Pi image)."""
    sfdisk = which("sfdisk", "fdisk")
    out = run([sfdisk, "--json", img], capture=True, what=f"sfdisk --json {img}").stdout
    try:
        table = json.loads(out)["partitiontable"]
    except (ValueError, KeyError):
        raise BuildError(f"{img}: no partition table; is it a pibake output image?") from None
    if table.get("label") != "dos":
        raise BuildError(f"{img}: partition table label '{table.get('label')}' is not "
                         "supported; expected dos")
    sector = int(table.get("sectorsize", SECTOR))
    parts = {int(re.sub(r".*?(\d+)$", r"\1", p["node"])): p for p in table.get("partitions", [])}
    if 1 not in parts or 2 not in parts:
        raise BuildError(f"{img}: expected a boot partition 1 and a root partition 2; is it a "
                         "pibake output image?")
    boot, root = parts[1], parts[2]
    return DiskLayout(int(boot["start"]) * sector, int(boot["size"]) * sector,
                      int(root["start"]) * sector, int(root["size"]) * sector,
                      img.stat().st_size, int(str(table.get("id", "0")), 16))


def disk_layout(boot_bytes: int, root_bytes: int, align: int = DEFAULT_ALIGN) -> DiskLayout:
    if align <= 0 or align % SECTOR:
        raise BuildError(f"partition alignment {align} must be a positive multiple of {SECTOR}")
    boot_size = _align_up(boot_bytes, SECTOR)
    root_size = _align_up(root_bytes, SECTOR)
    boot_start = align
    root_start = _align_up(boot_start + boot_size, align)
    total = _align_up(root_start + root_size, align)
    return DiskLayout(boot_start, boot_size, root_start, root_size, total)


def assemble_disk(
    out: Path,
    *,
    boot: Path,
    root: Path,
    disk_id: int,
    align: int = DEFAULT_ALIGN,
    mode: int = 0o644,
    boot_entries: Sequence[Entry] = (),
    root_entries: Sequence[Entry] = (),
    mtime: int | None = None,
) -> DiskLayout:
    """Write an MBR disk image: partition 1 (type c, FAT32) = ``boot``,
    partition 2 (type 83, Linux) = ``root``; PARTUUIDs come from ``disk_id``.

    ``boot_entries`` and ``root_entries`` (the host's delta) are written into
    the partitions of the new disk, so the cached partition images are used
    as they are and their data is copied once. The file is created with
    ``mode`` from the start, so an image carrying secrets is never readable by
    others, not even while it is being written.
    """
    if not 0 < disk_id <= 0xFFFFFFFF:
        raise BuildError(f"disk id {disk_id:#x} must be between 0x00000001 and 0xffffffff")
    for part in (boot, root):
        if not part.is_file():
            raise BuildError(f"{part}: partition image not found")
    layout = disk_layout(boot.stat().st_size, root.stat().st_size, align)
    sfdisk = which("sfdisk", "fdisk")
    table = (
        "label: dos\n"
        f"label-id: 0x{disk_id:08x}\n"
        "unit: sectors\n"
        "sector-size: 512\n\n"
        f"start={layout.boot_start // SECTOR}, size={layout.boot_size // SECTOR}, type=c\n"
        f"start={layout.root_start // SECTOR}, size={layout.root_size // SECTOR}, type=83\n"
    )
    with atomic_file(out) as tmp:
        _fresh_file(tmp, layout.size, mode)
        run(
            [sfdisk, "--quiet", "--no-reread", "--no-tell-kernel",
             "--wipe", "never", "--wipe-partitions", "never", tmp],
            input=table.encode(),
            what="sfdisk",
        )  # fmt: skip
        fd = os.open(tmp, os.O_WRONLY)
        try:
            _copy_sparse(boot, fd, layout.boot_start)
            _copy_sparse(root, fd, layout.root_start)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpaceError(f"{out}: no space left on device; free some space and build "
                                   "again") from None
            raise BuildError(f"{out}: writing the disk image failed: {exc.strerror}") from None
        finally:
            os.close(fd)
        write_vfat(tmp, boot_entries, offset=layout.boot_start, mtime=mtime)
        write_ext4(tmp, root_entries, offset=layout.root_start, mtime=mtime,
                   name=f"{out} (root partition)")  # fmt: skip
    return replace(layout, disk_id=disk_id)
