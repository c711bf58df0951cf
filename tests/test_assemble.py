"""Partition images and disk assembly, checked with the tools a user would trust:
sfdisk, e2fsck, fsck.vfat, debugfs, mtools. Tiny trees: each test runs in well
under a second."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.image import assemble
from builder.image.assemble import (
    Entry,
    MiB,
    assemble_disk,
    ext4_size_for,
    make_ext4,
    make_vfat,
    partuuid,
    read_ext4,
    read_vfat,
    write_ext4,
    write_vfat,
)

UUID = "0b0e5c1a-7c3d-4e5f-8a9b-0c1d2e3f4a5b"
# security.capability, revision 2, permitted+effective cap_net_raw (bit 13).
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")
# Features e2fsck 1.43 (Raspbian stretch) and kernel 4.14 both handle.
STRETCH_OK = {
    "has_journal", "ext_attr", "resize_inode", "dir_index", "filetype", "extent",
    "64bit", "flex_bg", "sparse_super", "large_file", "huge_file", "dir_nlink",
    "extra_isize", "metadata_csum", "needs_recovery",
}  # fmt: skip
LONG_TARGET = "/usr/share/" + "x" * 90


def sh(*argv: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True,
                          check=check)  # fmt: skip


def debugfs(img: Path, request: str) -> str:
    return sh("debugfs", "-R", request, img).stdout


def inode_stat(img: Path, path: str) -> dict[str, str]:
    out = debugfs(img, f"stat {path}")
    fields = dict(re.findall(r"(Inode|Type|Mode|User|Group|Links|Size):\s+(\S+)", out))
    fields["xattrs"] = out.split("Extended attributes:")[1] if "Extended attributes:" in out else ""
    fields["mtime"] = re.search(r"\bmtime: (0x[0-9a-f]+)", out).group(1)  # type: ignore[union-attr]
    return fields


@pytest.fixture(scope="module")
def rootfs_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = tmp_path_factory.mktemp("rootfs")
    for d in ("etc", "usr/bin", "usr/share", "home/pi", "dev", "run"):
        (t / d).mkdir(parents=True)
    (t / "etc/hostname").write_text("old\n")
    ping = t / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF not really")
    os.chmod(ping, 0o4755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.link(ping, t / "usr/bin/ping-hardlink")
    os.symlink("ping", t / "usr/bin/pong")
    os.symlink(LONG_TARGET, t / "usr/bin/far")
    os.chown(t / "home/pi", 1000, 1000)
    os.chmod(t / "home/pi", 0o750)
    (t / "home/pi/.profile").write_text("# pi\n")
    os.chown(t / "home/pi/.profile", 1000, 1000)
    os.chmod(t / "home/pi/.profile", 0o600)
    os.mknod(t / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod(t / "dev/null", 0o666)
    os.mkfifo(t / "run/initctl", 0o600)
    return t


@pytest.fixture(scope="module")
def boot_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = tmp_path_factory.mktemp("boot")
    (t / "overlays").mkdir()
    (t / "config.txt").write_text("dtparam=audio=on\n")
    (t / "cmdline.txt").write_text("console=serial0,115200 root=PARTUUID=old-02\n")
    (t / "overlays/disable-bt.dtbo").write_bytes(bytes(range(256)) * 8)
    (t / "bootcode.bin").write_bytes(os.urandom(50_000))
    return t


@pytest.fixture(scope="module")
def root_img(rootfs_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("img") / "root.ext4"
    make_ext4(rootfs_tree, out, size=ext4_size_for(rootfs_tree), label="rootfs", uuid=UUID,
              compat="stretch")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def boot_img(boot_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("img") / "boot.vfat"
    make_vfat(boot_tree, out, volume_id="1a2b3c4d")
    return out


def copy_of(img: Path, tmp_path: Path) -> Path:
    dst = tmp_path / img.name
    sh("cp", "--sparse=always", img, dst)
    return dst


# ---------------------------------------------------------------- ext4


def test_ext4_size_is_small_whole_mib_and_grows_with_content(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert ext4_size_for(tmp_path / "a") == 64 * MiB
    (tmp_path / "a/blob").write_bytes(b"\0" * (100 * MiB))
    size = ext4_size_for(tmp_path / "a")
    assert size % MiB == 0
    assert 125 * MiB < size < 180 * MiB


def test_ext4_size_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one/f").write_bytes(b"x" * (80 * MiB))
    (tmp_path / "two").mkdir()
    (tmp_path / "two/f").write_bytes(b"x" * (80 * MiB))
    for n in range(5):
        os.link(tmp_path / "two/f", tmp_path / f"two/link{n}")
    assert ext4_size_for(tmp_path / "one", minimum=0) == ext4_size_for(tmp_path / "two", minimum=0)


def test_ext4_size_of_a_missing_tree(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as err:
        ext4_size_for(tmp_path / "nope")
    assert str(err.value) == f"{tmp_path}/nope: root file system tree not found or not a folder"


def test_make_ext4_is_clean_and_labelled(root_img: Path) -> None:
    fsck = sh("fsck.ext4", "-fn", root_img, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    head = sh("dumpe2fs", "-h", root_img).stdout
    assert re.search(r"^Filesystem volume name:\s+rootfs$", head, re.M)
    assert re.search(rf"^Filesystem UUID:\s+{UUID}$", head, re.M)
    assert re.search(rf"^Directory Hash Seed:\s+{UUID}$", head, re.M)
    assert re.search(r"^Block size:\s+4096$", head, re.M)


def test_make_ext4_features_suit_stretch(root_img: Path) -> None:
    head = sh("dumpe2fs", "-h", root_img).stdout
    features = set(re.search(r"^Filesystem features:\s+(.*)$", head, re.M).group(1).split())  # type: ignore[union-attr]
    assert "metadata_csum" in features and "extent" in features
    assert features <= STRETCH_OK, features - STRETCH_OK


def test_make_ext4_keeps_owners_modes_links_devices_xattrs(root_img: Path) -> None:
    ping = inode_stat(root_img, "/usr/bin/ping")
    assert ping["Mode"] == "04755"
    assert ping["Links"] == "2"
    assert "security.capability (20) = 01 00 00 02 00 20 00 00" in ping["xattrs"]
    assert inode_stat(root_img, "/usr/bin/ping-hardlink")["Inode"] == ping["Inode"]
    home = inode_stat(root_img, "/home/pi")
    assert (home["Mode"], home["User"], home["Group"]) == ("0750", "1000", "1000")
    profile = inode_stat(root_img, "/home/pi/.profile")
    assert (profile["Mode"], profile["User"], profile["Group"]) == ("0600", "1000", "1000")
    assert inode_stat(root_img, "/dev/null")["Type"] == "character"
    assert inode_stat(root_img, "/run/initctl")["Type"] == "FIFO"
    listing = debugfs(root_img, "ls -l /usr/bin")
    assert re.search(r"120777 \(7\)\s+0\s+0\s+4 .* pong$", listing, re.M)
    assert debugfs(root_img, "cat /usr/bin/far") == LONG_TARGET  # a block, not in the inode
    root = inode_stat(root_img, "/")
    assert (root["Mode"], root["User"], root["Group"]) == ("0755", "0", "0")
    assert read_ext4(root_img, "/etc/hostname") == b"old\n"


def test_make_ext4_output_is_sparse(root_img: Path) -> None:
    st = root_img.stat()
    assert st.st_size == 64 * MiB
    assert st.st_blocks * 512 < st.st_size // 8


def test_make_ext4_is_reproducible(
    rootfs_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    digests = set()
    for n in range(2):
        out = tmp_path / f"r{n}.ext4"
        make_ext4(rootfs_tree, out, size=64 * MiB, label="rootfs", uuid=UUID)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_make_ext4_too_small_leaves_no_file(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t/blob").write_bytes(os.urandom(20 * MiB))
    out = tmp_path / "out/root.ext4"
    with pytest.raises(BuildError) as err:
        make_ext4(tmp_path / "t", out, size=16 * MiB, label="rootfs", uuid=UUID)
    assert str(err.value) == (
        f"{tmp_path}/t: does not fit in an ext4 of 16 MiB; give it a larger size or margin"
    )
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uuid": "nope"}, "ext4 uuid: invalid UUID 'nope'; use the form "
         "12345678-1234-1234-1234-123456789abc"),
        ({"compat": "jessie"}, "ext4 compat 'jessie' is not known "
         "(known: bookworm, bullseye, buster, stretch)"),
        ({"label": "a-very-long-label-x"}, "ext4 label 'a-very-long-label-x' is longer than "
         "16 bytes; shorten it"),
        ({"size": 10 * MiB}, "ext4 size 10485760 must be a multiple of 4096 bytes and at "
         "least 16 MiB"),
    ],
)  # fmt: skip
def test_make_ext4_bad_arguments(
    rootfs_tree: Path, tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"size": 64 * MiB, "label": "rootfs", "uuid": UUID}
    args.update(kwargs)
    with pytest.raises(BuildError) as err:
        make_ext4(rootfs_tree, tmp_path / "r.ext4", **args)  # type: ignore[arg-type]
    assert str(err.value) == message
    assert not (tmp_path / "r.ext4").exists()


def test_write_ext4_replaces_creates_and_sets_metadata(root_img: Path, tmp_path: Path) -> None:
    img = copy_of(root_img, tmp_path)
    write_ext4(
        img,
        [
            Entry("/etc/hostname", "file", b"compute-01\n"),
            Entry("/usr/bin/ping", "file", b"new ping", mode=0o755),
            Entry("/var/lib/pibake/firstboot.d", "dir", mode=0o700),
            Entry("/var/lib/pibake/firstboot.d/10-net.sh", "file", b"#!/bin/sh\n", mode=0o750),
            Entry("/home/pi", "dir", mode=0o700, uid=1000, gid=1000),
            Entry("/home/pi/.ssh/authorized_keys", "file", b"ssh-ed25519 AAAA k\n",
                  mode=0o600, uid=1000, gid=1000),
            Entry("/etc/systemd/system/multi-user.target.wants/pibake-firstboot.service",
                  "symlink", target="/etc/systemd/system/pibake-firstboot.service"),
            Entry("/usr/bin/pong", "symlink", target="/bin/true"),
            Entry("/srv/with space/a file", "file", b"spaced"),
        ],
        mtime=1_700_000_000,
    )  # fmt: skip
    assert read_ext4(img, "/etc/hostname") == b"compute-01\n"
    assert read_ext4(img, "/srv/with space/a file") == b"spaced"
    hostname = inode_stat(img, "/etc/hostname")
    assert (hostname["Mode"], hostname["User"], hostname["mtime"]) == ("0644", "0", "0x6553f100")
    ping = inode_stat(img, "/usr/bin/ping")
    assert (ping["Mode"], ping["Links"], ping["xattrs"]) == ("0755", "1", "")
    # The old inode lives on under its other name, capability and all.
    assert "security.capability" in inode_stat(img, "/usr/bin/ping-hardlink")["xattrs"]
    assert inode_stat(img, "/usr/bin/ping-hardlink")["Links"] == "1"
    step = inode_stat(img, "/var/lib/pibake/firstboot.d/10-net.sh")
    assert (step["Type"], step["Mode"]) == ("regular", "0750")
    assert inode_stat(img, "/var/lib/pibake/firstboot.d")["Mode"] == "0700"
    assert inode_stat(img, "/var/lib")["Mode"] == "0755"
    home = inode_stat(img, "/home/pi")
    assert (home["Mode"], home["User"], home["Group"]) == ("0700", "1000", "1000")
    keys = inode_stat(img, "/home/pi/.ssh/authorized_keys")
    assert (keys["Mode"], keys["User"], keys["Group"]) == ("0600", "1000", "1000")
    assert read_ext4(img, "/home/pi/.profile") == b"# pi\n"
    wants = debugfs(img, "ls -l /etc/systemd/system/multi-user.target.wants")
    assert re.search(r"120777 .* pibake-firstboot.service$", wants, re.M)
    assert 'Fast link dest: "/bin/true"' in debugfs(img, "stat /usr/bin/pong")
    fsck = sh("fsck.ext4", "-fn", img, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_write_ext4_twice_is_idempotent(root_img: Path, tmp_path: Path) -> None:
    img = copy_of(root_img, tmp_path)
    entries = [Entry("/a/b/c", "dir", mode=0o711), Entry("/a/b/c/d", "file", b"1")]
    write_ext4(img, entries, mtime=0)
    write_ext4(img, entries[:1] + [Entry("/a/b/c/d", "file", b"2")], mtime=0)
    assert read_ext4(img, "/a/b/c/d") == b"2"
    assert inode_stat(img, "/a/b/c")["Mode"] == "0711"
    assert sh("fsck.ext4", "-fn", img, check=False).returncode == 0


def test_write_ext4_into_a_partition_of_a_disk(
    root_img: Path, boot_img: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk.img"
    assemble_disk(disk, boot=boot_img, root=root_img, disk_id=0x1234ABCD)
    offset = 4 * MiB + 256 * MiB
    write_ext4(disk, [Entry("/etc/hostname", "file", b"in-place\n")], offset=offset)
    assert read_ext4(disk, "/etc/hostname", offset=offset) == b"in-place\n"
    write_vfat(disk, [Entry("/cmdline.txt", "file", b"root=PARTUUID=1234abcd-02\n")],
               offset=4 * MiB)  # fmt: skip
    assert read_vfat(disk, "/cmdline.txt", offset=4 * MiB) == b"root=PARTUUID=1234abcd-02\n"


def test_write_ext4_on_a_non_ext4_file(boot_img: Path, tmp_path: Path) -> None:
    img = copy_of(boot_img, tmp_path)
    with pytest.raises(BuildError) as err:
        write_ext4(img, [Entry("/etc/hostname", "file", b"x")])
    assert str(err.value) == (
        f"{img}: not an ext4 image (debugfs: Bad magic number in super-block "
        f"while trying to open {img})"
    )


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([Entry("/etc/ok", "file", b"1"), Entry("/etc/hostname", "dir")],
         "/etc/hostname exists and is not a directory; remove it first"),
        ([Entry("/etc/hostname/x", "file", b"1")],
         "/etc/hostname exists and is not a directory; cannot create /etc/hostname/x in it"),
        ([Entry("/home/pi", "file", b"1")],
         "/home/pi is a directory; cannot replace it with a file"),
        ([Entry("/new", "file", b"1"), Entry("/new/x", "file", b"1")],
         "/new exists and is not a directory; cannot create /new/x in it"),
    ],
)  # fmt: skip
def test_write_ext4_refuses_type_clashes_before_writing(
    root_img: Path, tmp_path: Path, entries: list[Entry], message: str
) -> None:
    img = copy_of(root_img, tmp_path)
    with pytest.raises(BuildError) as err:
        write_ext4(img, entries)
    assert str(err.value) == f"{img}: {message}"
    assert sh("cmp", img, root_img, check=False).returncode == 0


def test_write_ext4_names_the_path_debugfs_failed_on(
    root_img: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = copy_of(root_img, tmp_path)
    plan = assemble._plan

    def bad_plan(*args: object, **kwargs: object) -> list[assemble._Cmd]:
        cmds = plan(*args, **kwargs)  # type: ignore[arg-type]
        return [*cmds[:2], assemble._Cmd("sif /etc/hostname nosuchfield 1", "/etc/hostname")]

    monkeypatch.setattr(assemble, "_plan", bad_plan)
    with pytest.raises(BuildError) as err:
        write_ext4(img, [Entry("/etc/hostname", "file", b"x")])
    assert str(err.value) == (
        f"{img}: /etc/hostname: debugfs 'sif /etc/hostname nosuchfield 1' failed: "
        "sif: invalid field specifier: nosuchfield"
    )


def test_write_ext4_through_merged_usr_symlinks(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/lib/systemd/system").mkdir(parents=True)
    (tree / "usr/share").mkdir(parents=True)
    os.symlink("usr/lib", tree / "lib")
    os.symlink("/usr/share", tree / "share")
    img = tmp_path / "root.ext4"
    make_ext4(tree, img, size=32 * MiB, label="rootfs", uuid=UUID)
    write_ext4(
        img,
        [
            Entry("/lib/systemd/system/pibake-firstboot.service", "file", b"[Unit]\n"),
            Entry("/lib/pibake", "dir", mode=0o700),
            Entry("/share/doc/pibake/README", "file", b"doc"),
        ],
    )
    assert read_ext4(img, "/usr/lib/systemd/system/pibake-firstboot.service") == b"[Unit]\n"
    assert inode_stat(img, "/usr/lib/pibake")["Mode"] == "0700"
    assert read_ext4(img, "/usr/share/doc/pibake/README") == b"doc"
    assert inode_stat(img, "/lib")["Type"] == "symlink"
    # A symlink to a directory, given as a file, is replaced, not followed.
    write_ext4(img, [Entry("/share", "file", b"now a file")])
    assert read_ext4(img, "/share") == b"now a file"
    assert inode_stat(img, "/usr/share/doc")["Type"] == "directory"
    fsck = sh("fsck.ext4", "-fn", img, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (Entry("etc/x", "file"), "etc/x: image paths must be absolute, without '..', and not '/'"),
        (Entry("/etc/../x", "file"), "/etc/../x: image paths must be absolute, without '..', "
         "and not '/'"),
        (Entry('/etc/"x', "file"), '/etc/"x: quotes, backslashes and newlines are not allowed '
         "in image paths"),
        (Entry("/etc/l", "symlink"), "/etc/l: symlink without a target"),
    ],
)  # fmt: skip
def test_write_ext4_refuses_bad_entries(
    root_img: Path, tmp_path: Path, entry: Entry, message: str
) -> None:
    img = copy_of(root_img, tmp_path)
    with pytest.raises(BuildError) as err:
        write_ext4(img, [entry])
    assert str(err.value) == message


def test_read_ext4_missing_file(root_img: Path) -> None:
    with pytest.raises(BuildError) as err:
        read_ext4(root_img, "/etc/nope")
    assert str(err.value) == (
        f"{root_img}: cannot read /etc/nope: /etc/nope: File not found by ext2_lookup"
    )


# ---------------------------------------------------------------- FAT32


def test_make_vfat_is_fat32_clean_and_has_the_files(boot_img: Path, boot_tree: Path) -> None:
    fsck = sh("fsck.vfat", "-n", boot_img, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    info = sh("minfo", "-i", boot_img, "::", check=False).stdout
    assert 'disk type="FAT32   "' in info
    assert "serial number: 1A2B3C4D" in info
    assert "cluster size: 4 sectors" in info
    assert "hidden sectors: 8192" in info
    assert "label=\"bootfs     \"" in info or "bootfs" in sh("mlabel", "-s", "-i", boot_img,
                                                                "::").stdout  # fmt: skip
    for rel in ("config.txt", "cmdline.txt", "overlays/disable-bt.dtbo", "bootcode.bin"):
        assert read_vfat(boot_img, f"/{rel}") == (boot_tree / rel).read_bytes()
    assert boot_img.stat().st_size == 256 * MiB
    assert boot_img.stat().st_blocks * 512 < 8 * MiB


def test_make_vfat_bad_arguments(boot_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError) as err:
        make_vfat(boot_tree, tmp_path / "b.vfat", volume_id="xyz")
    assert str(err.value) == "FAT volume id 'xyz' must be 1 to 8 hex digits, e.g. 1a2b3c4d"
    with pytest.raises(BuildError) as err:
        make_vfat(boot_tree, tmp_path / "b.vfat", volume_id="1", size=16 * MiB)
    assert str(err.value) == "FAT32 size 16 MiB is too small; use at least 33 MiB"
    assert list(tmp_path.iterdir()) == []


def test_write_vfat_replaces_and_creates_dirs(boot_img: Path, tmp_path: Path) -> None:
    img = copy_of(boot_img, tmp_path)
    write_vfat(
        img,
        [
            Entry("/cmdline.txt", "file", b"console=tty1 root=PARTUUID=1234abcd-02\n"),
            Entry("/OVERLAYS/extra.dtbo", "file", b"dtbo"),
            Entry("/pibake/status/firstboot.txt", "file", b"pending\n"),
            Entry("/pibake/empty", "dir"),
        ],
        mtime=1_700_000_000,
    )
    assert read_vfat(img, "/cmdline.txt") == b"console=tty1 root=PARTUUID=1234abcd-02\n"
    assert read_vfat(img, "/overlays/extra.dtbo") == b"dtbo"
    assert read_vfat(img, "/overlays/disable-bt.dtbo") == bytes(range(256)) * 8
    assert read_vfat(img, "/pibake/status/firstboot.txt") == b"pending\n"
    listing = sh("mdir", "-/", "-b", "-i", img, "::/", check=False).stdout.split()
    assert "::/pibake/empty/" in listing
    assert sh("fsck.vfat", "-n", img, check=False).returncode == 0


def test_write_vfat_refuses_symlinks(boot_img: Path) -> None:
    with pytest.raises(BuildError) as err:
        write_vfat(boot_img, [Entry("/link", "symlink", target="x")])
    assert str(err.value) == "/link: FAT has no symlinks; write a file instead"


# ---------------------------------------------------------------- disk


def test_partuuid() -> None:
    assert partuuid(0x1234ABCD, 1) == "1234abcd-01"
    assert partuuid(0xBEEF, 2) == "0000beef-02"


def test_assemble_disk_layout_content_and_sparseness(
    root_img: Path, boot_img: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "out/host.img"
    assemble_disk(disk, boot=boot_img, root=root_img, disk_id=0x1234ABCD)
    table = json.loads(sh("sfdisk", "--json", disk).stdout)["partitiontable"]
    assert (table["label"], table["id"], table["sectorsize"]) == ("dos", "0x1234abcd", 512)
    boot_sectors = boot_img.stat().st_size // 512
    root_sectors = root_img.stat().st_size // 512
    root_start = 8192 + boot_sectors
    assert [(p["start"], p["size"], p["type"]) for p in table["partitions"]] == [
        (8192, boot_sectors, "c"),
        (root_start, root_sectors, "83"),
    ]
    assert disk.stat().st_size == (root_start + root_sectors) * 512
    for part, start in ((boot_img, 8192), (root_img, root_start)):
        size = str(part.stat().st_size)
        assert (
            sh("cmp", "-i", f"{start * 512}:0", "-n", size, disk, part, check=False).returncode == 0
        )
    st = disk.stat()
    assert st.st_blocks * 512 < st.st_size // 8
    assert st.st_mode & 0o777 == 0o644
    assert sorted(p.name for p in disk.parent.iterdir()) == ["host.img"]


def test_assemble_disk_aligns_the_root_partition(
    root_img: Path, tmp_path: Path, boot_tree: Path
) -> None:
    boot = tmp_path / "odd.vfat"
    make_vfat(boot_tree, boot, size=65 * MiB, volume_id="1")
    disk = tmp_path / "d.img"
    assemble_disk(disk, boot=boot, root=root_img, disk_id=1, align=4 * MiB, mode=0o600)
    parts = json.loads(sh("sfdisk", "--json", disk).stdout)["partitiontable"]["partitions"]
    assert parts[1]["start"] == 72 * MiB // 512
    assert disk.stat().st_size % (4 * MiB) == 0
    assert disk.stat().st_mode & 0o777 == 0o600


def test_read_disk_reads_what_assemble_disk_wrote(root_img: Path, boot_img: Path,
                                                  tmp_path: Path) -> None:
    from builder.image.assemble import list_vfat, read_disk

    disk = tmp_path / "d.img"
    written = assemble_disk(disk, boot=boot_img, root=root_img, disk_id=0xBEEF,
                            boot_entries=[Entry(path="/cmdline.txt", kind="file", data=b"x\n")])
    read = read_disk(disk)
    assert read == written and read.disk_id == 0xBEEF
    assert partuuid(read.disk_id, 2) == "0000beef-02"
    assert "cmdline.txt" in list_vfat(disk, offset=read.boot_start)


def test_assemble_disk_failure_leaves_no_file(
    root_img: Path, boot_img: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def full_disk(src: int, dst: int, so: int, do: int, count: int) -> None:
        calls.append(count)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(assemble, "_copy_range", full_disk)
    out = tmp_path / "out/host.img"
    with pytest.raises(BuildError) as err:
        assemble_disk(out, boot=boot_img, root=root_img, disk_id=7)
    assert str(err.value) == f"{out}: no space left on device; free some space and build again"
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("disk_id", "message"),
    [
        (0, "disk id 0x0 must be between 0x00000001 and 0xffffffff"),
        (1 << 32, "disk id 0x100000000 must be between 0x00000001 and 0xffffffff"),
    ],
)
def test_assemble_disk_bad_disk_id(
    root_img: Path, boot_img: Path, tmp_path: Path, disk_id: int, message: str
) -> None:
    with pytest.raises(BuildError) as err:
        assemble_disk(tmp_path / "d.img", boot=boot_img, root=root_img, disk_id=disk_id)
    assert str(err.value) == message


def test_assemble_disk_missing_partition_image(boot_img: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError) as err:
        assemble_disk(tmp_path / "d.img", boot=boot_img, root=tmp_path / "no.ext4", disk_id=1)
    assert str(err.value) == f"{tmp_path}/no.ext4: partition image not found"
    assert not (tmp_path / "d.img").exists()


def test_assemble_disk_writes_the_host_delta_into_the_partitions(
    root_img: Path, boot_img: Path, tmp_path: Path
) -> None:
    cached = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root_img, boot_img)}
    disk = tmp_path / "host.img"
    layout = assemble_disk(
        disk,
        boot=boot_img,
        root=root_img,
        disk_id=0xC0FFEE,
        boot_entries=[Entry("/cmdline.txt", "file", b"root=PARTUUID=00c0ffee-02\n")],
        root_entries=[Entry("/etc/hostname", "file", b"lanmain-01\n", mode=0o644)],
        mtime=1_700_000_000,
    )
    assert (layout.boot_start, layout.root_start) == (4 * MiB, 260 * MiB)
    assert layout.size == disk.stat().st_size
    assert read_vfat(disk, "/cmdline.txt", offset=layout.boot_start) == (
        b"root=PARTUUID=00c0ffee-02\n"
    )
    assert read_ext4(disk, "/etc/hostname", offset=layout.root_start) == b"lanmain-01\n"
    # The cached partition images are inputs only.
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in cached} == cached
    part = tmp_path / "root.part"
    sh("dd", f"if={disk}", f"of={part}", "bs=1M", f"skip={layout.root_start // MiB}",
       f"count={layout.root_size // MiB}", "conv=sparse", "status=none")  # fmt: skip
    fsck = sh("fsck.ext4", "-fn", part, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_assemble_disk_bad_delta_leaves_no_file(
    root_img: Path, boot_img: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out/host.img"
    with pytest.raises(BuildError) as err:
        assemble_disk(out, boot=boot_img, root=root_img, disk_id=9,
                      root_entries=[Entry("/etc/hostname/x", "file", b"")])  # fmt: skip
    assert str(err.value) == (
        f"{out} (root partition): /etc/hostname exists and is not a directory; "
        "cannot create /etc/hostname/x in it"
    )
    assert list(out.parent.iterdir()) == []


@pytest.mark.integration
def test_a_real_tree_fits_its_computed_size_and_checks_clean(tmp_path: Path) -> None:
    """Thousands of small files (Python's standard library and the time zones)
    copied from the host, the shape of a real root file system."""
    tree = tmp_path / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/share").mkdir(parents=True)
    sh("cp", "-a", "/usr/lib/python3.11", tree / "usr/lib/")
    sh("cp", "-a", "/usr/share/zoneinfo", tree / "usr/share/")
    img = tmp_path / "root.ext4"
    size = ext4_size_for(tree, margin=0.05, minimum=0)
    make_ext4(tree, img, size=size, label="rootfs", uuid=UUID, compat="stretch")
    fsck = sh("fsck.ext4", "-fn", img, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    diff = sh("debugfs", "-R", "ls -p /usr/share/zoneinfo/Europe", img).stdout
    assert "/Berlin/" in diff


@pytest.mark.integration
def test_make_vfat_is_reproducible(boot_tree: Path, tmp_path: Path) -> None:
    """Two builds more than FAT's 2-second clock tick apart are the same bytes."""
    digests = set()
    for n in range(2):
        if n:
            time.sleep(2.1)
        out = tmp_path / f"b{n}.vfat"
        make_vfat(boot_tree, out, size=40 * MiB, volume_id="1a2b3c4d")
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
