"""Booting images whose kernel only runs on Pi hardware: the generic kernel kit
(builder.vm.kernels), telling the user space's architecture, and (marker ``boot``)
a Pi 1 node (Debian armel + linux-image-rpi) booted on -M virt with Debian's
armmp kernel, its modules in the overlay and the image untouched."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.cache import sha256_file
from builder.content.hostlayer import FIRSTBOOT_DIR
from builder.errors import BootError
from builder.vm import boot
from builder.vm.boot import boot_image
from builder.vm.kernels import build_kit, wanted
from builder.vm.qemu import Arch
from tests.conftest import write
from tests.vm import build, keyed_project, ssh, stop

SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"

@pytest.mark.parametrize(
    "name, keep",
    [
        ("./boot/vmlinuz-6.1.0-9-armmp", True),
        ("./boot/initrd.img-6.1.0-9-armmp", True),
        ("./boot/config-6.1.0-9-armmp", False),
        ("./usr/lib/modules/6.1.0-9-armmp/modules.order", True),
        ("./usr/lib/modules/6.1.0-9-armmp/modules.builtin.modinfo", True),
        ("./usr/lib/modules/6.1.0-9-armmp/modules.dep", False),  # depmod writes its own
        ("./usr/lib/modules/6.1.0-9-armmp/kernel/fs/ext4/ext4.ko", True),
        ("./usr/lib/modules/6.1.0-9-armmp/kernel/net/ipv6/ipv6.ko.xz", True),
        ("./usr/lib/modules/6.1.0-9-armmp/kernel/drivers/net/veth.ko", True),
        ("./usr/lib/modules/6.1.0-9-armmp/kernel/drivers/net/wireless/b/brcmfmac.ko", False),
        ("./usr/lib/modules/6.1.0-9-armmp/kernel/drivers/gpu/drm/vc4/vc4.ko", False),
        ("./usr/lib/modules/6.1.0-9-armmp/kernel/sound/core/snd.ko", False),
        ("./usr/lib/modules/6.1.0-9-armmp/kernel/fs/../../../../etc/x.ko", False),
        ("./etc/fstab", False),
    ],
)
def test_kit_takes_only_what_virt_can_use(name: str, keep: bool) -> None:
    assert wanted(name) is keep


def fake_rootfs(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            src = path.parent / "src" / name
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(data)
            tar.add(src, arcname=f"./{name}")
    return path


def test_build_kit_prunes_modules_and_indexes_them(tmp_path: Path) -> None:
    mods = "usr/lib/modules/6.1.0-9-armmp"
    rootfs = fake_rootfs(tmp_path / "rootfs.tar", {
        "boot/vmlinuz-6.1.0-9-armmp": b"KERNEL",
        "boot/initrd.img-6.1.0-9-armmp": b"INITRD",
        f"{mods}/modules.order": b"kernel/fs/ext4/ext4.ko\n",
        f"{mods}/modules.builtin": b"",
        f"{mods}/kernel/fs/ext4/ext4.ko": b"x",
        f"{mods}/kernel/drivers/gpu/drm/vc4.ko": b"x",
        "etc/fstab": b"",
    })  # fmt: skip
    kit = tmp_path / "kit"
    kit.mkdir()
    assert build_kit(rootfs, kit) == "6.1.0-9-armmp"
    assert (kit / "vmlinuz-6.1.0-9-armmp").read_bytes() == b"KERNEL"
    assert (kit / "initrd.img-6.1.0-9-armmp").read_bytes() == b"INITRD"
    with tarfile.open(kit / "modules.tar") as tar:
        names = set(tar.getnames())
        owners = {(m.uid, m.gid) for m in tar.getmembers()}
    assert "6.1.0-9-armmp/kernel/fs/ext4/ext4.ko" in names
    assert "6.1.0-9-armmp/modules.dep" in names
    assert not any("gpu" in n for n in names)
    assert owners == {(0, 0)}
    assert sorted(p.name for p in kit.iterdir()) == [
        "initrd.img-6.1.0-9-armmp", "meta.json", "modules.tar", "vmlinuz-6.1.0-9-armmp",
    ]  # fmt: skip


def test_build_kit_refuses_a_rootfs_without_kernel(tmp_path: Path) -> None:
    rootfs = fake_rootfs(tmp_path / "rootfs.tar", {"etc/fstab": b""})
    kit = tmp_path / "kit"
    kit.mkdir()
    with pytest.raises(BootError) as err:
        build_kit(rootfs, kit)
    assert str(err.value) == (
        f"{rootfs}: no kernel and modules in it; delete {tmp_path} to bootstrap it again"
    )


def elf_header(machine: int) -> bytes:
    return b"\x7fELF\x01\x01\x01" + bytes(11) + machine.to_bytes(2, "little") + bytes(32)


def image_with_root(path: Path, root_files: dict[str, bytes]) -> Path:
    """A dos-labelled image: empty FAT partition 1, ext4 partition 2 with ``root_files``."""
    with open(path, "wb") as f:
        f.truncate(40 << 20)
    table = "label: dos\nlabel-id: 0x1234abcd\n2048,16384,c\n18432,,83\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=table, text=True, check=True)
    tree = path.parent / "tree"
    for name, data in root_files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    tree.mkdir(exist_ok=True)
    size_kib = (path.stat().st_size - 18432 * 512) // 1024
    subprocess.run(
        ["mke2fs", "-q", "-t", "ext4", "-F", "-E", f"offset={18432 * 512}", "-d", str(tree),
         str(path), f"{size_kib}k"],
        check=True, env={"PATH": SBIN},
    )  # fmt: skip
    return path


@pytest.mark.parametrize("machine, arch", [(40, Arch.arm), (183, Arch.arm64)])
def test_userland_arch_reads_the_dpkg_elf_header(tmp_path: Path, machine: int,
                                                 arch: Arch) -> None:
    image = image_with_root(tmp_path / "n.img", {"usr/bin/dpkg": elf_header(machine)})
    assert boot.userland_arch(image, boot.disk_layout(image)) is arch


def test_userland_arch_refuses_a_non_arm_user_space(tmp_path: Path) -> None:
    image = image_with_root(tmp_path / "n.img", {"usr/bin/dpkg": elf_header(62)})  # x86-64
    with pytest.raises(BootError) as err:
        boot.userland_arch(image, boot.disk_layout(image))
    assert str(err.value) == (
        f"{image}: cannot tell the user space's architecture from /usr/bin/dpkg on "
        "partition 2; is it a Debian-based ARM image?"
    )


# -- the real thing --------------------------------------------------------------


@pytest.mark.boot
def test_pi1_image_boots_on_virt_with_the_armmp_kit(tmp_path: Path) -> None:
    project, key = keyed_project(tmp_path, model="pi1")
    build(project, "node-01")
    image = project / "output/node-01.img"
    names = boot.list_fat(image, boot.disk_layout(image))
    assert boot.pick_kernel(image, names) is None  # only the rpi flavour is there
    before = sha256_file(image)

    result = boot_image(image, host="node-01", timeout=900, keep=True)
    try:
        steps = [f"{p.stem} ok" for p in sorted(FIRSTBOOT_DIR.glob("steps/*.sh"))]
        assert result.progress == [*steps, "done"], result.progress
        port = result.ssh_port
        assert ssh(port, key, "hostname") == "node-01"
        assert ssh(port, key, "uname -r").endswith("-armmp")       # the kit's kernel
        assert ssh(port, key, "dpkg --print-architecture") == "armel"
        assert ssh(port, key, "sudo systemctl --failed --plain --no-legend") == ""
    finally:
        stop(result.pid, result.ssh_port, key)
    assert sha256_file(image) == before


@pytest.mark.integration
def test_add_tree_writes_the_overlay_only(tmp_path: Path) -> None:
    from builder.image.guestfs_io import add_tree, open_image
    from builder.vm.qemu import create_overlay

    # /lib -> usr/lib as in a merged-/usr root: the tree must land in usr/lib/modules
    image = image_with_root(tmp_path / "n.img", {"usr/lib/modules/.keep": b""})
    subprocess.run(["debugfs", "-w", "-R", "symlink /lib usr/lib",
                    f"{image}?offset={18432 * 512}"], check=True, capture_output=True)
    before = sha256_file(image)
    src = tmp_path / "mods"
    write(src / "6.1.0-9-armmp/modules.dep", "kernel/fs/ext4/ext4.ko:\n")
    tar = tmp_path / "modules.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(src), "6.1.0-9-armmp"], check=True)
    overlay = create_overlay(image, tmp_path / "o.qcow2")

    add_tree(overlay, tar, "/lib/modules", partition=2)

    assert sha256_file(image) == before
    with open_image(overlay, fmt="qcow2") as g:
        g.mount_ro("/dev/sda2", "/")
        dep = g.cat("/usr/lib/modules/6.1.0-9-armmp/modules.dep")
    assert dep == "kernel/fs/ext4/ext4.ko:\n"
