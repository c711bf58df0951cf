"""extract_image() on the Raspbian-shaped fixture (libguestfs, ~30 s per launch under TCG)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from fixtures_raspbian import (
    CAP_FILE,
    CAP_XATTR,
    CMDLINE,
    FSTAB,
    LD_SO_PRELOAD,
    PI_UID,
    make_raspbian_fixture,
)

from builder.errors import BuildError
from builder.image.guestfs_io import (
    ImageLayout,
    extract_image,
    fstab_boot_mount,
    open_image,
    parse_os_release,
)
from builder.run import run

BOOKWORM_FSTAB = (
    "proc            /proc           proc    defaults          0       0\n"
    "PARTUUID=4e639091-01  /boot/firmware  vfat    defaults          0       2\n"
    "PARTUUID=4e639091-02  /               ext4    defaults,noatime  0       1\n"
)


# -- fast: parsing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fstab", "mount"),
    [
        (FSTAB, "/boot"),
        (BOOKWORM_FSTAB, "/boot/firmware"),
        ("# /dev/mmcblk0p1 /boot vfat defaults 0 2\n/dev/mmcblk0p2 / ext4 defaults 0 1\n", None),
        ("LABEL=FW /boot/firmware/ vfat defaults 0 2 # trailing slash\n", "/boot/firmware"),
        ("", None),
    ],
)
def test_fstab_boot_mount(fstab: str, mount: str | None) -> None:
    assert fstab_boot_mount(fstab) == mount


def test_parse_os_release() -> None:
    text = (
        '# comment\nPRETTY_NAME="Raspbian GNU/Linux 9 (stretch)"\nID=raspbian\n\nVERSION_ID="9"\n'
    )
    assert parse_os_release(text) == {
        "PRETTY_NAME": "Raspbian GNU/Linux 9 (stretch)",
        "ID": "raspbian",
        "VERSION_ID": "9",
    }


def test_open_image_refuses_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.img"
    with pytest.raises(BuildError) as excinfo, open_image(missing):
        pass
    assert str(excinfo.value) == f"{missing}: no such image file"


# -- slow: the real appliance -------------------------------------------------


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageLayout, Path]:
    work = tmp_path_factory.mktemp("extract")
    img = make_raspbian_fixture(work / "raspbian.img")
    out = work / "rootfs.tar"
    return extract_image(img, out), out


@pytest.mark.integration
def test_extract_returns_the_layout(extracted: tuple[ImageLayout, Path]) -> None:
    layout, _ = extracted
    assert layout == ImageLayout(
        boot_mount="/boot",
        cmdline=CMDLINE,
        os_release={
            "PRETTY_NAME": "Raspbian GNU/Linux 9 (stretch)",
            "NAME": "Raspbian GNU/Linux",
            "VERSION_ID": "9",
            "VERSION": "9 (stretch)",
            "ID": "raspbian",
            "ID_LIKE": "debian",
        },
        root_fs="ext4",
        boot_fs="vfat",
    )


@pytest.mark.integration
def test_extract_tar_holds_root_and_boot(extracted: tuple[ImageLayout, Path]) -> None:
    _, out = extracted
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}

        def text(name: str) -> str:
            f = tar.extractfile(members[name])
            assert f is not None
            return f.read().decode()

        assert text("./boot/cmdline.txt") == CMDLINE + "\n"
        assert "./boot/kernel7.img" in members
        assert text("./etc/ld.so.preload") == LD_SO_PRELOAD
        assert text("./etc/hostname") == "raspberrypi\n"
        assert members["./etc/os-release"].issym()
        assert members["./etc/os-release"].linkname == "../usr/lib/os-release"

        cap = members[f"./{CAP_FILE}"].pax_headers["SCHILY.xattr.security.capability"]
        assert cap.encode("utf-8", "surrogateescape") == CAP_XATTR

        home = members["./home/pi/.bashrc"]
        assert (home.uid, home.gid, home.uname, home.gname) == (PI_UID, PI_UID, "", "")
        assert (members["./etc/fstab"].uid, members["./etc/fstab"].uname) == (0, "")


@pytest.mark.integration
def test_extract_refuses_an_image_without_ext4(tmp_path: Path) -> None:
    img = tmp_path / "no-ext4.img"
    with open(img, "wb") as f:
        f.truncate(48 << 20)
    table = "label: dos\nunit: sectors\n\nstart=2048, size=65536, type=c\nstart=67584, type=83\n"
    run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", img], input=table.encode())
    run(["mkfs.vfat", "-F", "32", "-s", "1", "--offset=2048", img, str(32 << 10)])
    run(["mke2fs", "-q", "-F", "-t", "ext2", "-E", f"offset={67584 * 512}", img, "14M"])
    out = tmp_path / "out.tar"

    with pytest.raises(BuildError) as excinfo:
        extract_image(img, out)

    assert str(excinfo.value) == (
        f"{img}: no FAT boot partition and ext4 root partition found "
        "(found: p1 vfat, p2 ext2); is it a Raspberry Pi image?"
    )
    assert not out.exists()
