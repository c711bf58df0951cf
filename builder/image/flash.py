"""Write output/HOST.img to an SD card, safely, and read it back.

Three parts, each replaceable in tests:

- ``probe_device``: what the target is (lsblk and sysfs). Tests pass their own
  probe that describes a plain file as a card, so every refusal is exercised
  without a real disk.
- ``plan_flash``: every check before a byte is written; a FlashError names the
  device, the reason and the fix.
- ``write_plan``: the write. The old partition table is zeroed first and the
  image's first block (its partition table) is written last, after every
  other block was written, synced and read back. A flash interrupted at any
  point leaves a card with no partition table: it does not boot at all,
  rather than half-boot with mixed old and new content.

Blocks are written with ``bmaptool`` when the image has a ``.bmap`` (it checks
each range against the map's checksums); otherwise by the same extent copy in
Python. Either way only the image's data blocks are written, then read back
and compared by sha256.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import log
from builder.errors import FlashError, PibakeError
from builder.image.assemble import data_extents
from builder.inventory.config import Inventory
from builder.run import register, unregister, which

MiB = 1 << 20
GiB = 1 << 30
BLOCK = 4096            # bmaptool's block; the MBR lives in the first one
WIPE = 1 * MiB          # zeroed first: MBR, a GPT's primary header and entries
CHUNK = 4 * MiB
SYNC_EVERY = 64 * MiB   # bounded dirty data, so the rate shown is the card's
DEFAULT_MAX_SIZE = 256 * GiB

# lsblk's MOUNTPOINTS names active swap this way.
_SWAP = "[SWAP]"


@dataclass(frozen=True)
class Partition:
    name: str
    size: int
    fstype: str
    mountpoints: tuple[str, ...]


@dataclass(frozen=True)
class Device:
    """A write target as the checks see it."""

    path: Path
    kind: str                   # lsblk TYPE: disk, loop, part, ...; "file" for a plain file
    size: int
    model: str = ""
    removable: bool = False     # sysfs removable or hotplug (USB readers), or an mmc slot
    parent: str = ""            # for a partition: its disk
    partitions: tuple[Partition, ...] = ()
    mountpoints: tuple[str, ...] = ()   # of the device and everything on it (holders too)


DeviceProbe = Callable[[Path, bool], Device]


def _lsblk(path: Path) -> dict[str, Any]:
    lsblk = which("lsblk", "util-linux")
    proc = subprocess.run(
        [lsblk, "--json", "--bytes", "--output",
         "NAME,PATH,TYPE,SIZE,MODEL,RM,HOTPLUG,PKNAME,FSTYPE,MOUNTPOINTS", os.fspath(path)],
        capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise FlashError(f"{path}: lsblk cannot describe it: "
                         f"{proc.stderr.strip() or 'no output'}")
    devices = json.loads(proc.stdout).get("blockdevices") or []
    if not devices:
        raise FlashError(f"{path}: lsblk does not list it; check the name with lsblk -d")
    top: dict[str, Any] = devices[0]
    return top


def _mounts(node: dict[str, Any]) -> list[str]:
    found = [m for m in node.get("mountpoints") or [] if m]
    for child in node.get("children") or []:
        found += _mounts(child)
    return found


def probe_device(path: Path, allow_file: bool) -> Device:
    """Describe ``path`` with lsblk; a regular file only when ``allow_file``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if allow_file:
            return Device(path, "file", 0)
        raise FlashError(f"{path}: no such device; list the disks with: lsblk -d") from None
    if stat.S_ISREG(st.st_mode) and allow_file:
        return Device(path, "file", st.st_size)
    if not stat.S_ISBLK(st.st_mode):
        raise FlashError(f"{path}: not a block device; give the card's disk, e.g. /dev/sdX "
                         "or /dev/mmcblk0 (lsblk -d lists them)")
    top = _lsblk(path)
    name = str(top.get("name", ""))
    removable = bool(top.get("rm")) or bool(top.get("hotplug")) or name.startswith("mmcblk")
    parts = tuple(
        Partition(str(c.get("name", "")), int(c.get("size") or 0), str(c.get("fstype") or ""),
                  tuple(_mounts(c)))
        for c in top.get("children") or [] if c.get("type") == "part")
    return Device(path, str(top.get("type", "")), int(top.get("size") or 0),
                  model=str(top.get("model") or "").strip(), removable=removable,
                  parent=str(top.get("pkname") or ""), partitions=parts,
                  mountpoints=tuple(_mounts(top)))


def _size(n: int) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB"


@dataclass(frozen=True)
class FlashPlan:
    host: str
    image: Path
    sha256: str
    device: Device
    bmap: Path | None
    ranges: tuple[tuple[int, int], ...]     # the image's data extents (start, end)

    @property
    def data_bytes(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def describe(self) -> list[str]:
        """What the operator is shown before typing the host name back."""
        d = self.device
        if d.kind == "file":
            return [f"{d.path}: a plain file (--allow-file)"]
        lines = [f"{d.path}: {d.model or 'unknown model'}, {_size(d.size)}"
                 f"{'' if d.removable else ', fixed disk'}"]
        for p in d.partitions:
            lines.append(f"  {p.name}: {_size(p.size)} {p.fstype or 'no file system'}")
        if not d.partitions:
            lines.append("  no partitions")
        lines.append(f"everything on it is replaced by {self.image.name} ({self.host})")
        return lines


def check_device(dev: Device, image_size: int, *, max_size: int, allow_fixed: bool) -> None:
    """Every refusal, in order: the first one that applies is raised."""
    if dev.kind == "file":
        return
    if dev.kind == "part":
        whole = f"/dev/{dev.parent}" if dev.parent else "its disk"
        raise FlashError(f"{dev.path}: is a partition, not a whole disk; give {whole}")
    if dev.kind not in ("disk", "loop"):
        raise FlashError(f"{dev.path}: is a {dev.kind} device, not a disk; give the card's disk")
    if "/" in dev.mountpoints:
        raise FlashError(f"{dev.path}: holds the running system's root file system (/); "
                         "this is not an SD card")
    if _SWAP in dev.mountpoints:
        raise FlashError(f"{dev.path}: holds active swap; this is not an SD card "
                         "(swapoff it first if it really is)")
    if dev.mountpoints:
        shown = ", ".join(sorted(dev.mountpoints))
        raise FlashError(f"{dev.path}: has mounted file systems ({shown}); unmount them first, "
                         f"e.g. sudo umount {sorted(dev.mountpoints)[0]}")
    if dev.size > max_size:
        raise FlashError(f"{dev.path}: is {_size(dev.size)}, larger than --max-size "
                         f"{_size(max_size)}; an SD card is smaller: check the device name, "
                         "or raise --max-size")
    if dev.size < image_size:
        raise FlashError(f"{dev.path}: is {_size(dev.size)}, smaller than the image "
                         f"({_size(image_size)}); use a larger card")
    if not dev.removable and not allow_fixed:
        raise FlashError(f"{dev.path}: is a fixed disk, not removable or hot-plugged; "
                         "an SD card reader is one of those: check the device name, "
                         "or pass --allow-fixed")


def data_ranges(image: Path) -> tuple[tuple[int, int], ...]:
    """The image's data extents, widened to whole blocks (holes are never written)."""
    ranges: list[tuple[int, int]] = []
    with open(image, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        for start, stop in data_extents(f.fileno()):
            start = start // BLOCK * BLOCK
            stop = min(-(-stop // BLOCK) * BLOCK, end)
            if ranges and start <= ranges[-1][1]:
                ranges[-1] = (ranges[-1][0], stop)
            else:
                ranges.append((start, stop))
    if not ranges or ranges[0][0] != 0:
        ranges.insert(0, (0, min(BLOCK, end)))  # block 0 is always written
    return tuple(ranges)


def _sha256_ranges(path: Path, ranges: Sequence[tuple[int, int]], *,
                   drop_cache: bool = False) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop_cache:
            # What is compared must come from the card, not from the page cache.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for start, end in ranges:
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(CHUNK, end - pos), pos)
                if not chunk:
                    raise FlashError(f"{path}: short read at byte {pos}; the card may be "
                                     "smaller than it claims")
                h.update(chunk)
                pos += len(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _compare_ranges(image: Path, device: Path, ranges: Sequence[tuple[int, int]],
                    progress: Progress) -> tuple[str, str]:
    """sha256 of ``ranges`` in the image and, read back past the page cache, on the device."""
    want, got = hashlib.sha256(), hashlib.sha256()
    img = os.open(image, os.O_RDONLY)
    dev = os.open(device, os.O_RDONLY)
    try:
        # What is compared must come from the card, not from the page cache.
        os.posix_fadvise(dev, 0, 0, os.POSIX_FADV_DONTNEED)
        for start, end in ranges:
            pos = start
            while pos < end:
                size = min(CHUNK, end - pos)
                back = os.pread(dev, size, pos)
                if len(back) != size:
                    raise FlashError(f"{device}: short read at byte {pos}; the card may be "
                                     "smaller than it claims")
                want.update(os.pread(img, size, pos))
                got.update(back)
                pos += size
                progress.add(size)
    finally:
        os.close(img)
        os.close(dev)
    return want.hexdigest(), got.hexdigest()


def image_sha256(image: Path) -> str:
    h = hashlib.sha256()
    with open(image, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _recorded_sha256(image: Path) -> str:
    side = image.with_name(image.name + ".sha256")
    try:
        return side.read_text().split()[0]
    except (FileNotFoundError, IndexError):
        raise FlashError(f"{side}: not found or empty; build the image again") from None


def plan_flash(image: Path, host: str, target: Path, *, stale: Sequence[str] = (),
               stale_ok: bool = False, allow_file: bool = False,
               max_size: int = DEFAULT_MAX_SIZE, allow_fixed: bool = False,
               probe: DeviceProbe | None = None) -> FlashPlan:
    """Check the image and the target; nothing is written here."""
    if not image.is_file():
        raise FlashError(f"{image}: no image; build it first: pibake build {host}")
    if stale and not stale_ok:
        from builder.image.inputs import UNTRACKED

        why = ("its manifest records no input hashes" if UNTRACKED in stale
               else f"stale, built before {', '.join(stale)} changed")
        raise FlashError(f"{image}: {why}; rebuild it (pibake build {host}) or pass --stale-ok")
    size = image.stat().st_size
    dev = (probe or probe_device)(target, allow_file)
    check_device(dev, size, max_size=max_size, allow_fixed=allow_fixed)
    recorded = _recorded_sha256(image)
    actual = image_sha256(image)
    if actual != recorded:
        raise FlashError(f"{image}: sha256 {actual[:16]}… does not match its .sha256 "
                         f"({recorded[:16]}…); the image changed after the build: rebuild it")
    bmap = image.with_name(image.name + ".bmap")
    return FlashPlan(host, image, actual, dev, bmap if bmap.is_file() else None,
                     data_ranges(image))


# ---------------------------------------------------------------- writing


@dataclass
class Progress:
    """Bytes, rate and ETA on stderr, at most one line every ``every`` seconds."""

    total: int
    what: str = "write"
    every: float = 2.0
    out: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))
    done: int = 0
    start: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)  # the first line after ``every``

    def add(self, n: int) -> None:
        self.set(self.done + n)

    def set(self, done: int) -> None:
        self.done = min(done, self.total)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.out(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.what}: {self.done / MiB:.0f}/{self.total / MiB:.0f} MiB, "
                f"{rate / MiB:.1f} MiB/s, ETA {eta:.0f}s")


@dataclass(frozen=True)
class FlashResult:
    device: Path
    host: str
    sha256: str
    data_bytes: int
    seconds: float
    tool: str           # "bmaptool" or "python"


def _sync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise FlashError(f"writing to the card failed: {exc.strerror}; the card has no "
                         "partition table now; try again or use another card") from None


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _open_target(dev: Device) -> int:
    flags = os.O_WRONLY
    if dev.kind == "file":
        flags |= os.O_CREAT
    else:
        flags |= os.O_EXCL  # a block device in use (mounted, swap, held by md/dm) is refused
    try:
        return os.open(dev.path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FlashError(f"{dev.path}: in use (mounted, swap or held by another device); "
                             "nothing was written") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise FlashError(f"{dev.path}: permission denied; flashing a card needs root: "
                             "sudo pibake flash ...") from None
        raise FlashError(f"{dev.path}: cannot open for writing: {exc.strerror}") from None


def _wipe_table(plan: FlashPlan) -> None:
    """Zero the first MiB (old MBR/GPT) so the card has no partition table until
    the image's own is written, last."""
    fd = _open_target(plan.device)
    try:
        if plan.device.kind == "file":
            # A file target holds exactly the image: holes read back as zeros.
            os.ftruncate(fd, 0)
            os.ftruncate(fd, plan.image.stat().st_size)
        else:
            _write_all(fd, bytes(WIPE), 0)
        _sync(fd)
    finally:
        os.close(fd)


def _copy_python(plan: FlashPlan, ranges: Sequence[tuple[int, int]], progress: Progress) -> None:
    fd = _open_target(plan.device)
    unsynced = 0
    try:
        with open(plan.image, "rb") as img:
            for start, end in ranges:
                pos = start
                while pos < end:
                    chunk = os.pread(img.fileno(), min(CHUNK, end - pos), pos)
                    _write_chunk(fd, chunk, pos)
                    pos += len(chunk)
                    unsynced += len(chunk)
                    if unsynced >= SYNC_EVERY:
                        _sync(fd)
                        unsynced = 0
                    progress.add(len(chunk))
        _sync(fd)
    finally:
        os.close(fd)


def _write_chunk(fd: int, chunk: bytes, offset: int) -> None:
    try:
        _write_all(fd, chunk, offset)
    except OSError as exc:
        raise FlashError(f"writing to the card failed at byte {offset}: {exc.strerror}; the card "
                         "has no partition table now; try again or use another card") from None


_RANGE_RE = re.compile(r'(<Range chksum=")([0-9a-f]+)(">\s*)(\d+)(?:-(\d+))?(\s*</Range>)')
_FILE_SUM_RE = re.compile(r"(<BmapFileChecksum>\s*)([0-9a-f]+)(\s*</BmapFileChecksum>)")
_MAPPED_RE = re.compile(r"(<MappedBlocksCount>\s*)(\d+)")


def bmap_without_block0(text: str, image: Path) -> str:
    """The bmap with block 0 taken out of its first range (checksums redone),
    so bmaptool writes everything but the partition table."""
    m = _RANGE_RE.search(text)
    if m is None or int(m.group(4)) != 0:
        return text
    last = int(m.group(5) or m.group(4))
    if last == 0:
        text = text[:m.start()] + text[m.end():]
    else:
        with open(image, "rb") as f:
            f.seek(BLOCK)
            digest = hashlib.sha256(f.read((last) * BLOCK)).hexdigest()
        span = f"1-{last}" if last > 1 else "1"
        text = (text[:m.start()] + m.group(1) + digest + m.group(3) + span + m.group(6)
                + text[m.end():])
    text = _MAPPED_RE.sub(lambda mm: f"{mm.group(1)}{int(mm.group(2)) - 1}", text, count=1)
    # The file's own checksum is taken with its field set to zeros.
    fm = _FILE_SUM_RE.search(text)
    if fm is not None:
        zeroed = text[:fm.start(2)] + "0" * len(fm.group(2)) + text[fm.end(2):]
        digest = hashlib.sha256(zeroed.encode()).hexdigest()
        text = zeroed[:fm.start(2)] + digest + zeroed[fm.start(2) + len(digest):]
    return text


def _proc_written(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _copy_bmaptool(plan: FlashPlan, bmap: Path, progress: Progress) -> None:
    bmaptool = which("bmaptool", "bmap-tools")
    with tempfile.TemporaryDirectory(prefix="pibake-flash-") as tmp:
        trimmed = Path(tmp) / "image.bmap"
        trimmed.write_text(bmap_without_block0(bmap.read_text(), plan.image))
        argv = [bmaptool, "--quiet", "copy", "--bmap", os.fspath(trimmed),
                os.fspath(plan.image), os.fspath(plan.device.path)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        register(proc)
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.5):
                written = _proc_written(proc.pid)
                if written is not None:
                    progress.set(written)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            _, err = proc.communicate()
        finally:
            stop.set()
            watcher.join()
            unregister(proc)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            lines = [ln.strip() for ln in err.decode(errors="replace").splitlines() if ln.strip()]
            raise FlashError(f"bmaptool copy failed (exit {proc.returncode}): "
                             f"{lines[-1] if lines else 'no output'}; the card has no "
                             "partition table now")
        progress.set(progress.total)


def write_plan(plan: FlashPlan, *, use_bmaptool: bool = True,
               out: Callable[[str], None] | None = None) -> FlashResult:
    """Wipe the table, write every block but the first, sync, read back and
    compare, then write the first block (the partition table) and check it."""
    try:
        return _write_plan(plan, use_bmaptool=use_bmaptool, out=out)
    except KeyboardInterrupt:
        log.notice(f"flash interrupted: {plan.device.path} has no partition table now and boots "
                   "nothing; flash it again")
        raise


def _write_plan(plan: FlashPlan, *, use_bmaptool: bool,
                out: Callable[[str], None] | None) -> FlashResult:
    start = time.monotonic()
    first_end = min(BLOCK, plan.image.stat().st_size)
    rest = _without_block0(plan.ranges)
    rest_bytes = sum(e - s for s, e in rest)
    kwargs: dict[str, Any] = {"out": out} if out else {}
    _wipe_table(plan)
    progress = Progress(rest_bytes, "write", **kwargs)
    tool = "python"
    if use_bmaptool and plan.bmap is not None:
        tool = "bmaptool"
        _copy_bmaptool(plan, plan.bmap, progress)
    else:
        _copy_python(plan, rest, progress)
    progress.out(progress.line())
    want, got = _compare_ranges(plan.image, plan.device.path, rest,
                                Progress(rest_bytes, "verify", **kwargs))
    if got != want:
        raise FlashError(f"{plan.device.path}: read-back differs from {plan.image.name} "
                         f"(sha256 {got[:16]}… instead of {want[:16]}…); the card has no "
                         "partition table and will not boot; try another card")
    with open(plan.image, "rb") as img:
        first = img.read(first_end)
    fd = _open_target(plan.device)
    try:
        _write_chunk(fd, first, 0)
        _sync(fd)
    finally:
        os.close(fd)
    if _sha256_ranges(plan.device.path, [(0, first_end)], drop_cache=True) != \
            hashlib.sha256(first).hexdigest():
        raise FlashError(f"{plan.device.path}: the partition table read back differs; "
                         "the card is not usable: try another card")
    _reread_partitions(plan.device)
    return FlashResult(plan.device.path, plan.host, plan.sha256, rest_bytes + first_end,
                       time.monotonic() - start, tool)


def _without_block0(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        s = max(s, BLOCK)
        if s < e:
            out.append((s, e))
    return out


def _reread_partitions(dev: Device) -> None:
    """Tell the kernel about the new table, so the card's partitions show up."""
    if dev.kind == "file":
        return
    # The card is written and verified either way; the kernel sees it on re-insert.
    with contextlib.suppress(OSError, subprocess.SubprocessError, PibakeError):
        subprocess.run([which("blockdev", "util-linux"), "--rereadpt", os.fspath(dev.path)],
                       capture_output=True, timeout=30)


def plan_for_host(inv: Inventory, host: str, target: Path, out_dir: Path, *,
                  stale_ok: bool = False, allow_file: bool = False,
                  max_size: int = DEFAULT_MAX_SIZE, allow_fixed: bool = False,
                  probe: DeviceProbe | None = None) -> FlashPlan:
    """``plan_flash`` for ``out_dir/HOST.img``, with its manifest's inputs
    compared against the inventory as it is now."""
    from builder.image.inputs import image_inputs, stale_inputs

    inv.profile(host)
    image = out_dir / f"{host}.img"
    stale: list[str] = []
    manifest_path = out_dir / f"{host}.manifest.json"
    if image.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (FileNotFoundError, ValueError):
            manifest = {}
        stale = stale_inputs(manifest, image_inputs(inv, host))
    return plan_flash(image, host, target, stale=stale, stale_ok=stale_ok,
                      allow_file=allow_file, max_size=max_size, allow_fixed=allow_fixed,
                      probe=probe)


_UNITS = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}


def parse_size(text: str, what: str = "--max-size") -> int:
    """``256G``, ``64GiB``, ``500M`` or plain bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?B)?\s*", text)
    if m is None:
        raise FlashError(f"{what} {text!r}: not a size; use e.g. 64G, 512M or bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
