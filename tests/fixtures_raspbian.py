"""A tiny disk image with Raspbian stretch lite's layout, built without libguestfs.

Two partitions behind an MBR whose label-id gives the PARTUUIDs that cmdline.txt
and /etc/fstab name, as on the real image: p1 FAT32 "boot", p2 ext4 "rootfs".
The file systems are made as separate files (mkfs.vfat + mtools, mke2fs -d) and
written into the partitioned file with dd, which takes well under a second.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from builder.run import run

LABEL_ID = "0x7ee80803"
PARTUUID_PREFIX = "7ee80803"
SECTOR = 512
BOOT_START = 8192  # sectors; the real image starts p1 at 4 MiB too
BOOT_MIB = 40  # large enough for FAT32 with 512-byte clusters

CMDLINE = (
    "dwc_otg.lpm_enable=0 console=serial0,115200 console=tty1 "
    f"root=PARTUUID={PARTUUID_PREFIX}-02 rootfstype=ext4 elevator=deadline "
    "fsck.repair=yes rootwait quiet init=/usr/lib/raspi-config/init_resize.sh"
)
FSTAB = (
    "proc            /proc           proc    defaults          0       0\n"
    f"PARTUUID={PARTUUID_PREFIX}-01  /boot           vfat    defaults          0       2\n"
    f"PARTUUID={PARTUUID_PREFIX}-02  /               ext4    defaults,noatime  0       1\n"
)
OS_RELEASE = (
    'PRETTY_NAME="Raspbian GNU/Linux 9 (stretch)"\n'
    'NAME="Raspbian GNU/Linux"\n'
    'VERSION_ID="9"\n'
    'VERSION="9 (stretch)"\n'
    "ID=raspbian\n"
    "ID_LIKE=debian\n"
)
LD_SO_PRELOAD = "/usr/lib/arm-linux-gnueabihf/libarmmem.so\n"
CONFIG_TXT = "# For more options and information see the firmware documentation\ndtparam=audio=on\n"

# The file that carries a capability, and the raw security.capability value:
# VFS_CAP_REVISION_2 with the effective bit, permitting cap_net_raw (bit 13),
# as `setcap cap_net_raw+ep /bin/ping` writes it.
CAP_FILE = "bin/ping"
CAP_XATTR = bytes.fromhex("0100000200200000000000000000000000000000")
PI_UID = 1000
PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "pi:x:1000:1000:,,,:/home/pi:/bin/bash\n"
)
# As shipped: pi has the well-known default password (this hash is not it).
SHADOW = (
    "root:*:17846:0:99999:7:::\n"
    "pi:$6$fixture$0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:17846:0:99999:7:::\n"
)
DPKG_STATUS = (
    "Package: raspberrypi-kernel\nStatus: install ok installed\nArchitecture: armhf\n"
    "Version: 1.20181112-1\n\n"
    "Package: dhcpcd5\nStatus: install ok installed\nArchitecture: armhf\n"
    "Version: 1:6.11.5-1+rpt7\n\n"
)
DHCPCD_CONF = "# A sample configuration for dhcpcd.\nhostname\nclientid\npersistent\n"


def _root_tree(root: Path) -> None:
    def put(rel: str, text: str, mode: int = 0o644) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        return path

    for folder in ("proc", "sys", "dev", "run", "tmp", "var/tmp", "usr/bin", "usr/sbin", "sbin",
                   "lib", "var/log/apt", "var/lib/apt/lists", "var/cache/apt/archives"):
        (root / folder).mkdir(parents=True)
    put("var/lib/dpkg/status", DPKG_STATUS)
    put("etc/fstab", FSTAB)
    put("etc/passwd", PASSWD)
    put("etc/shadow", SHADOW, 0o640)
    put("etc/dhcpcd.conf", DHCPCD_CONF)
    put("etc/hostname", "raspberrypi\n")
    put("etc/ld.so.preload", LD_SO_PRELOAD)
    put("usr/lib/os-release", OS_RELEASE)
    # On stretch /etc/os-release is a relative symlink into /usr/lib.
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    put(CAP_FILE, "#!/bin/sh\n# stand-in for ping\n", 0o755)
    os.setxattr(root / CAP_FILE, "security.capability", CAP_XATTR)
    home = put("home/pi/.bashrc", "# ~/.bashrc\n").parent
    for path in (home, home / ".bashrc"):
        os.chown(path, PI_UID, PI_UID)
    (root / "boot").mkdir()  # mount point of p1


def _boot_tree(boot: Path) -> None:
    (boot / "cmdline.txt").write_text(CMDLINE + "\n")
    (boot / "config.txt").write_text(CONFIG_TXT)
    (boot / "kernel7.img").write_bytes(b"\x00fake kernel7\x00" * 64)
    (boot / "overlays").mkdir()
    (boot / "overlays" / "README").write_text("overlays\n")


def make_raspbian_fixture(dest: Path, *, size_mib: int = 64) -> Path:
    """Write a Raspbian-shaped image to ``dest`` and return it."""
    total = size_mib * (1 << 20) // SECTOR
    boot_size = BOOT_MIB * (1 << 20) // SECTOR
    root_start = BOOT_START + boot_size
    root_size = total - root_start
    if root_size * SECTOR < 8 << 20:
        raise ValueError(f"size_mib={size_mib} is too small (need at least {BOOT_MIB + 12})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pibake-fixture-") as tmp_name:
        tmp = Path(tmp_name)
        boot_tree, root_tree = tmp / "boot", tmp / "root"
        boot_tree.mkdir()
        root_tree.mkdir()
        _boot_tree(boot_tree)
        _root_tree(root_tree)

        boot_fs = tmp / "boot.vfat"
        run(
            [
                "mkfs.vfat",
                "-F",
                "32",
                "-s",
                "1",
                "-n",
                "boot",
                "-i",
                PARTUUID_PREFIX,
                "-C",
                boot_fs,
                str(boot_size * SECTOR // 1024),
            ]
        )
        run(["mcopy", "-s", "-p", "-i", boot_fs, *sorted(boot_tree.iterdir()), "::/"])

        root_fs = tmp / "root.ext4"
        run(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "rootfs",
                "-d",
                root_tree,
                root_fs,
                f"{root_size * SECTOR // 1024}k",
            ]
        )

        with open(dest, "wb") as f:
            f.truncate(total * SECTOR)
        table = (
            f"label: dos\nlabel-id: {LABEL_ID}\nunit: sectors\n\n"
            f"start={BOOT_START}, size={boot_size}, type=c\n"
            f"start={root_start}, size={root_size}, type=83\n"
        )
        run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", dest], input=table.encode())
        for fs, start in ((boot_fs, BOOT_START), (root_fs, root_start)):
            run(
                [
                    "dd",
                    f"if={fs}",
                    f"of={dest}",
                    "bs=1M",
                    f"seek={start * SECTOR}",
                    "oflag=seek_bytes",
                    "conv=notrunc,sparse",
                    "status=none",
                ]
            )
    return dest


def zip_fixture(img: Path) -> Path:
    """Wrap ``img`` in a zip next to it, as the Raspbian download site ships images."""
    out = img.with_suffix(".zip")
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.write(img, arcname=img.name)
    return out


if __name__ == "__main__":  # handy for poking at the fixture by hand
    import sys

    out = make_raspbian_fixture(Path(sys.argv[1] if len(sys.argv) > 1 else "raspbian.img"))
    print(out)
