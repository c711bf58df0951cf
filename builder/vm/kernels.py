"""Generic Debian kernels for images whose own kernel only runs on Pi hardware.

    kernel_kit(arch: Arch, mirror=None) -> KernelKit

Raspbian's kernel*.img and Debian's ``rpi`` flavour (Pi 1/Zero) do not boot on
QEMU's ``-M virt``. For those images ``pibake boot`` uses a Debian generic
kernel that runs the same user space: armmp for 32-bit (armel and armhf) and
arm64 for 64-bit. The kit is taken from pibake's own cached bootstrap of the
matching family (pi2: armhf + armmp, pi3: arm64), whose initrd already holds
the virtio and ext4 drivers (see builder.emulate.bootstrap), so no new initrd is made here.

Only the modules a ``-M virt`` guest can use go into the kit (file systems,
networking, crypto, virtio, block, md, virtual network devices; input, GPIO
and RTC for the power button and clock): ~80 MB instead of all ~300 MB, which
would not fit in what a fresh root file system has free before grow-root runs.
The modules are re-indexed with the host's ``depmod`` and packed as
``modules.tar`` (``<version>/...``), ready to be written into a boot
overlay's /lib/modules; the image itself never gets them.

Cached under ``<cache>/kernels/<key>/`` (key: the bootstrap base's key and
this recipe).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from builder import cache, log
from builder.errors import BootError
from builder.run import run, which
from builder.vm.qemu import Arch

RECIPE_VERSION = 1

# The Pi model whose Debian family carries the generic kernel for a guest arch.
KIT_MODEL: dict[Arch, tuple[str, str]] = {
    Arch.arm: ("pi2", "armhf"),
    Arch.arm64: ("pi3", "arm64"),
}

# Module trees (under lib/modules/<version>/kernel/) that -M virt can use.
KEEP: tuple[str, ...] = (
    "fs",
    "net",
    "lib",
    "crypto",
    "arch",
    "drivers/virtio",
    "drivers/block",
    "drivers/char",
    "drivers/md",
    "drivers/net",
    "drivers/crypto",
    # QMP's power button reaches the guest as a GPIO key (pl061 + gpio-keys)
    "drivers/input",
    "drivers/gpio",
    "drivers/rtc",
)

# Hardware network drivers inside drivers/net that -M virt has none of.
DROP: tuple[str, ...] = (
    "drivers/net/wireless",
    "drivers/net/ethernet",
    "drivers/net/usb",
    "drivers/net/can",
    "drivers/net/wwan",
    "drivers/net/ieee802154",
    "drivers/net/dsa",
)


@dataclass(frozen=True)
class KernelKit:
    version: str  # e.g. 6.1.0-28-armmp
    kernel: Path
    initrd: Path
    modules: Path  # tar of <version>/..., for the overlay's /lib/modules
    arch: Arch


def _kit(folder: Path, arch: Arch) -> KernelKit:
    version = json.loads((folder / "meta.json").read_text())["version"]
    return KernelKit(
        version=version,
        kernel=folder / f"vmlinuz-{version}",
        initrd=folder / f"initrd.img-{version}",
        modules=folder / "modules.tar",
        arch=arch,
    )


def wanted(name: str) -> bool:
    """Whether a rootfs tar member belongs in the kit: the kernel, the initrd,
    the module indexes depmod needs and the kept module trees."""
    name = name.removeprefix("./")
    if ".." in name.split("/"):
        return False
    if re.fullmatch(r"boot/(vmlinuz|initrd\.img)-[^/]+", name):
        return True
    m = re.fullmatch(r"usr/lib/modules/[^/]+/(.+)", name)
    if m is None:
        return False
    rest = m.group(1)
    if re.fullmatch(r"modules\.(order|builtin.*)", rest):
        return True
    if not rest.startswith("kernel/") or not rest.endswith((".ko", ".ko.xz", ".ko.zst")):
        return False
    rest = rest.removeprefix("kernel/")
    return _under(rest, KEEP) and not _under(rest, DROP)


def _under(path: str, trees: tuple[str, ...]) -> bool:
    return any(path.startswith(tree + "/") for tree in trees)


def build_kit(rootfs_tar: Path, folder: Path) -> str:
    """Fill ``folder`` with the kit from a bootstrap's rootfs tar; return the version."""
    which("depmod", "kmod")
    work = folder / "work"
    work.mkdir()
    with tarfile.open(rootfs_tar) as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                tar.extract(member, work, set_attrs=False)
    if not (work / "usr/lib/modules").is_dir() or not (work / "boot").is_dir():
        raise BootError(f"{rootfs_tar}: no kernel and modules in it; delete "
                        f"{rootfs_tar.parent} to bootstrap it again")
    versions = sorted(p.name for p in (work / "usr/lib/modules").iterdir())
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (work / "boot").glob("vmlinuz-*"))
    if len(versions) != 1 or kernels != versions:
        raise BootError(
            f"{rootfs_tar}: expected one kernel with its modules, found kernels "
            f"{kernels or 'none'} and modules {versions or 'none'}; delete {rootfs_tar.parent} "
            "to bootstrap it again"
        )
    version = versions[0]
    if not (work / f"boot/initrd.img-{version}").is_file():
        raise BootError(f"{rootfs_tar}: no boot/initrd.img-{version}; delete "
                        f"{rootfs_tar.parent} to bootstrap it again")
    # depmod -b wants <base>/lib/modules/<version>
    root = work / "root"
    (root / "lib").mkdir(parents=True)
    (work / "usr/lib/modules").rename(root / "lib/modules")
    run(["depmod", "-a", "-b", str(root), version], what=f"depmod {version}")
    run(["tar", "-cf", str(folder / "modules.tar"), "--numeric-owner", "--owner=0",
         "--group=0", "-C", str(root / "lib/modules"), version], what="tar -c modules")
    for name in (f"vmlinuz-{version}", f"initrd.img-{version}"):
        (work / "boot" / name).rename(folder / name)
    shutil.rmtree(work)
    (folder / "meta.json").write_text(json.dumps({"version": version}, indent=2) + "\n")
    return version


def kernel_kit(arch: Arch, mirror: str | None = None) -> KernelKit:
    """The generic kernel kit for ``arch`` guests, bootstrapping its base if needed."""
    from builder.pipeline import debian_base

    model, deb_arch = KIT_MODEL[arch]
    base = debian_base(model, mirror)
    key = cache.key_of("kernel-kit", RECIPE_VERSION, base.key, KEEP, DROP)
    folder = cache.cache_dir() / "kernels" / key
    if not (folder / "meta.json").is_file():
        with log.step(f"kernel kit from {base.name} {deb_arch}"), \
                cache.atomic_dir(folder) as tmp:
            build_kit(base.tar, tmp)
    return _kit(folder, arch)
