"""The one module that talks to libguestfs: open a disk image, take its tree out.

libguestfs runs a small x86 appliance VM; it reads and writes partitions, file
systems and files but runs nothing from the image. It uses KVM when KVM works
and falls back to TCG (software emulation, ~20 s to launch) when it does not:
on nested VMs /dev/kvm often opens fine and then fails at launch.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import guestfs

from builder import log
from builder.cache import atomic_file
from builder.errors import BuildError


@dataclass(frozen=True)
class ImageLayout:
    boot_mount: str  # where the root's fstab mounts the FAT partition: /boot or /boot/firmware
    cmdline: str  # the original cmdline.txt, without trailing whitespace
    os_release: dict[str, str]
    root_fs: str  # the root partition's file system type (ext4)
    boot_fs: str  # the boot partition's file system type (vfat)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _handle(path: Path, readonly: bool, tcg: bool, fmt: str) -> Any:
    g = guestfs.GuestFS(python_return_dict=True)
    # The user's own LIBGUESTFS_BACKEND* settings win over ours.
    if "LIBGUESTFS_BACKEND" not in os.environ:
        g.set_backend("direct")
    if tcg:
        g.set_backend_settings(["force_tcg"])
    g.add_drive_opts(str(path), readonly=readonly, format=fmt)
    return g


def _launch(path: Path, readonly: bool, fmt: str) -> Any:
    from builder.vm.qemu import kvm_failed, kvm_works

    user_settings = "LIBGUESTFS_BACKEND_SETTINGS" in os.environ
    tcg = not user_settings and not kvm_works()
    g = _handle(path, readonly, tcg, fmt)
    try:
        g.launch()
        return g
    except RuntimeError as exc:
        g.close()
        if tcg or user_settings:
            raise BuildError(f"{path}: libguestfs could not start its appliance: "
                             f"{_first_line(exc)}; run 'libguestfs-test-tool' to see why") from exc
    kvm_failed("the libguestfs appliance")
    g = _handle(path, readonly, True, fmt)
    try:
        g.launch()
    except RuntimeError as exc:
        g.close()
        raise BuildError(f"{path}: libguestfs could not start its appliance under TCG either: "
                         f"{_first_line(exc)}; run 'libguestfs-test-tool' to see why") from exc
    return g


@contextmanager
def open_image(path: Path, readonly: bool = True, fmt: str = "raw") -> Iterator[Any]:
    """Yield a launched guestfs handle on ``path`` (a ``raw`` or ``qcow2`` disk);
    always shut down and closed."""
    if not path.is_file():
        raise BuildError(f"{path}: no such image file")
    g = _launch(path, readonly, fmt)
    try:
        yield g
    finally:
        try:
            g.shutdown()  # syncs a writable image; an error here must not hide the first one
        except RuntimeError:
            pass
        finally:
            g.close()


def _partition_label(dev: str) -> str:
    m = re.fullmatch(r"/dev/sd[a-z]+(\d+)", dev)
    return f"p{m.group(1)}" if m else dev


def fstab_boot_mount(fstab: str) -> str | None:
    """The mount point of the first vfat entry of an fstab, if any."""
    for line in fstab.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3 and fields[2] == "vfat" and fields[1].startswith("/"):
            return fields[1].rstrip("/") or "/"
    return None


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        try:
            words = shlex.split(value)
        except ValueError:
            words = [value]
        out[key.strip()] = " ".join(words)
    return out


def _read_text(g: Any, path: str) -> str | None:
    try:
        if not g.is_file(path, followsymlinks=True):
            return None
        # realpath resolves inside the image, so /etc/os-release -> ../usr/lib/... works
        data: bytes = g.read_file(g.realpath(path))
    except RuntimeError:
        return None
    return data.decode("utf-8", errors="replace")


def extract_image(img: Path, out_tar: Path) -> ImageLayout:
    """Write the whole tree of a Raspberry Pi image (root with boot mounted) to ``out_tar``."""
    with log.step(f"extract {img.name}"), open_image(img) as g:
        try:
            return _extract(g, img, out_tar)
        except RuntimeError as exc:
            raise BuildError(f"{img}: libguestfs: {_first_line(exc)}") from exc


def _extract(g: Any, img: Path, out_tar: Path) -> ImageLayout:
    filesystems: dict[str, str] = g.list_filesystems()
    boots = sorted(dev for dev, fs in filesystems.items() if fs == "vfat")
    roots = sorted(dev for dev, fs in filesystems.items() if fs == "ext4")
    root = _mount_root(g, roots)
    if not boots or root is None:
        found = ", ".join(f"{_partition_label(d)} {fs}" for d, fs in sorted(filesystems.items()))
        raise BuildError(f"{img}: no FAT boot partition and ext4 root partition found "
                         f"(found: {found or 'nothing'}); is it a Raspberry Pi image?")
    boot = boots[0]
    fstab = _read_text(g, "/etc/fstab") or ""
    boot_mount = fstab_boot_mount(fstab)
    if boot_mount is None:
        boot_mount = "/boot"
        log.notice(f"{img}: /etc/fstab names no vfat partition; assuming it is mounted at /boot")
    if not g.is_dir(boot_mount):
        raise BuildError(f"{img}: /etc/fstab mounts the boot partition at {boot_mount}, "
                         "but the root file system has no such folder")
    g.mount_ro(boot, boot_mount)
    cmdline = _read_text(g, f"{boot_mount}/cmdline.txt")
    if cmdline is None:
        raise BuildError(f"{img}: the boot partition ({_partition_label(boot)}) has no "
                         "cmdline.txt; is it a Raspberry Pi image?")
    os_release = parse_os_release(
        _read_text(g, "/etc/os-release") or _read_text(g, "/usr/lib/os-release") or "")
    with atomic_file(out_tar) as tmp:
        g.tar_out("/", str(tmp), numericowner=True, xattrs=True, acls=True)
    return ImageLayout(
        boot_mount=boot_mount,
        cmdline=cmdline.rstrip(),
        os_release=os_release,
        root_fs=filesystems[root],
        boot_fs=filesystems[boot],
    )


def _mount_root(g: Any, candidates: list[str]) -> str | None:
    """Mount the first ext4 file system that looks like a root at /."""
    for dev in candidates:
        g.mount_ro(dev, "/")
        if g.is_dir("/etc"):
            return dev
        g.umount("/")
    return None


def add_tree(disk: Path, tar: Path, dest: str, partition: int, fmt: str = "qcow2") -> None:
    """Unpack ``tar`` into folder ``dest`` of the file system on ``partition`` of
    ``disk`` (a boot overlay: the image under it is not written)."""
    with open_image(disk, readonly=False, fmt=fmt) as g:
        try:
            _add_tree(g, disk, tar, dest, partition)
        except RuntimeError as exc:
            raise BuildError(f"{disk}: libguestfs: {_first_line(exc)}") from exc


def _add_tree(g: Any, disk: Path, tar: Path, dest: str, partition: int) -> None:
    parts = {int(g.part_to_partnum(dev)): dev for dev in g.list_partitions()}
    if partition not in parts:
        raise BuildError(f"{disk}: no partition {partition} (found: {sorted(parts)})")
    g.mount(parts[partition], "/")
    # resolved inside the guest: /lib may be a symlink to usr/lib
    path = g.realpath(dest) if g.exists(dest) else dest
    g.mkdir_p(path)
    stat = g.statvfs("/")
    # written as root, so the reserved blocks count; a margin for partial blocks
    free = stat["bfree"] * stat["bsize"]
    need = tar.stat().st_size * 21 // 20
    if need > free:
        raise BuildError(f"{disk}: {dest} needs {need >> 20} MiB but partition {partition} has "
                         f"{free >> 20} MiB free; build the image with more free space")
    g.tar_in(str(tar), path, xattrs=False)
    g.umount("/")
