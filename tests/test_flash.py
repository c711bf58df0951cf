"""pibake flash: every refusal as exact text, writes to file targets, an
interrupted flash, a read-back mismatch, and the command's exit codes.

A plain file stands in for the card; a fake probe describes it as whatever
device a test needs (a mounted disk, a partition, a 2 TB drive).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder import cli
from builder.errors import FlashError
from builder.image import flash
from builder.image.flash import Device, Partition, check_device
from builder.image.inputs import image_inputs
from builder.inventory.config import load_inventory

MiB = 1 << 20
GiB = 1 << 30


def make_image(path: Path, size: int = 24 * MiB, seed: int = 1, early: bool = False) -> Path:
    """A sparse MBR disk image with data at a few places, plus .sha256 and .bmap."""
    with open(path, "wb") as f:
        f.truncate(size)
    table = ("label: dos\nlabel-id: 0x1234abcd\nunit: sectors\n\n"
             "start=8192, size=16384, type=c\nstart=24576, type=83\n")
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
                   input=table.encode(), check=True, capture_output=True)
    rnd = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    with open(path, "r+b") as f:
        for offset in (4 * MiB, 4 * MiB + 3 * 4096, 13 * MiB, 20 * MiB, *([600] if early else [])):
            f.seek(offset)
            f.write(rnd[: 64 * 1024])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    subprocess.run(["bmaptool", "--quiet", "create", "-o", f"{path}.bmap", str(path)],
                   check=True)
    return path


def card(path: Path, **kw: object) -> Device:
    fields: dict[str, object] = {"kind": "disk", "size": 32 * GiB, "model": "SD Card Reader",
                                 "removable": True}
    fields.update(kw)
    return Device(path, **fields)  # type: ignore[arg-type]


def fake_probe(**kw: object) -> flash.DeviceProbe:
    return lambda path, allow_file: card(path, **kw)


def partitions_of(path: Path) -> list[dict[str, object]]:
    proc = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    parts: list[dict[str, object]] = json.loads(proc.stdout)["partitiontable"]["partitions"]
    return parts


REFUSALS = [
    (dict(kind="part", parent="sdb"),
     "/dev/sdb1: is a partition, not a whole disk; give /dev/sdb"),
    (dict(kind="rom"), "/dev/sdb1: is a rom device, not a disk; give the card's disk"),
    (dict(mountpoints=("/", "/boot")),
     "/dev/sdb1: holds the running system's root file system (/); this is not an SD card"),
    (dict(mountpoints=("[SWAP]",)),
     "/dev/sdb1: holds active swap; this is not an SD card (swapoff it first if it really is)"),
    (dict(mountpoints=("/media/u/bootfs",)),
     "/dev/sdb1: has mounted file systems (/media/u/bootfs); unmount them first, "
     "e.g. sudo umount /media/u/bootfs"),
    (dict(size=2000 * GiB),
     "/dev/sdb1: is 2000.0 GiB, larger than --max-size 256.0 GiB; an SD card is smaller: "
     "check the device name, or raise --max-size"),
    (dict(size=16 * MiB),
     "/dev/sdb1: is 16 MiB, smaller than the image (24 MiB); use a larger card"),
    (dict(removable=False),
     "/dev/sdb1: is a fixed disk, not removable or hot-plugged; an SD card reader is one of "
     "those: check the device name, or pass --allow-fixed"),
]


@pytest.mark.parametrize(("fields", "message"), REFUSALS)
def test_each_refusal_is_one_line(fields: dict[str, object], message: str) -> None:
    with pytest.raises(FlashError) as err:
        check_device(card(Path("/dev/sdb1"), **fields), 24 * MiB, max_size=256 * GiB,
                     allow_fixed=False)
    assert str(err.value) == message


def test_accepted_devices() -> None:
    check_device(card(Path("/dev/sdb")), 24 * MiB, max_size=256 * GiB, allow_fixed=False)
    check_device(card(Path("/dev/sdb"), removable=False), 24 * MiB, max_size=256 * GiB,
                 allow_fixed=True)
    check_device(card(Path("/dev/loop3"), kind="loop"), 24 * MiB, max_size=256 * GiB,
                 allow_fixed=False)


def test_probe_refuses_what_is_not_a_block_device(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    cases = [
        (plain, f"{plain}: not a block device; give the card's disk, e.g. /dev/sdX or "
                "/dev/mmcblk0 (lsblk -d lists them)"),
        (Path("/dev/null"), "/dev/null: not a block device; give the card's disk, e.g. "
                            "/dev/sdX or /dev/mmcblk0 (lsblk -d lists them)"),
        (tmp_path / "sdz", f"{tmp_path}/sdz: no such device; list the disks with: lsblk -d"),
    ]
    for path, message in cases:
        with pytest.raises(FlashError) as err:
            flash.probe_device(path, False)
        assert str(err.value) == message
    assert flash.probe_device(plain, True).kind == "file"


def _root_disk() -> Path | None:
    src = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True,
                         text=True).stdout.strip()
    if not src.startswith("/dev/"):
        return None
    disk = subprocess.run(["lsblk", "-n", "-d", "-o", "PKNAME", src], capture_output=True,
                          text=True).stdout.strip()
    return Path(f"/dev/{disk}") if disk else Path(src)


def test_the_real_root_disk_is_refused(tmp_path: Path) -> None:
    disk = _root_disk()
    if disk is None or not disk.is_block_device():
        pytest.skip("/ is not on a block device here")
    image = make_image(tmp_path / "node.img")
    with pytest.raises(FlashError) as err:  # planning only: nothing is ever written here
        flash.plan_flash(image, "node", disk, max_size=1 << 50, allow_fixed=True)
    assert str(err.value) == (f"{disk}: holds the running system's root file system (/); "
                              "this is not an SD card")


@pytest.mark.parametrize("use_bmaptool", [True, False], ids=["bmaptool", "python"])
def test_flash_to_a_file_reads_back_identical(tmp_path: Path, use_bmaptool: bool) -> None:
    image = make_image(tmp_path / "node.img")
    target = tmp_path / "card"
    target.write_bytes(os.urandom(1 << 16))  # an old card's leftovers
    plan = flash.plan_flash(image, "node", target, allow_file=True)
    lines: list[str] = []
    result = flash.write_plan(plan, use_bmaptool=use_bmaptool, out=lines.append)
    assert result.tool == ("bmaptool" if use_bmaptool else "python")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == result.sha256
    assert result.sha256 == (tmp_path / "node.img.sha256").read_text().split()[0]
    assert [p["type"] for p in partitions_of(target)] == ["c", "83"]
    assert lines[0].startswith("write: ") and "MiB/s, ETA" in lines[0]


@pytest.mark.parametrize("early", [False, True], ids=["block0-alone", "block0-in-a-range"])
def test_bmap_without_block0_is_accepted_by_bmaptool(tmp_path: Path, early: bool) -> None:
    image = make_image(tmp_path / "node.img", early=early)
    text = (tmp_path / "node.img.bmap").read_text()
    trimmed = flash.bmap_without_block0(text, image)
    assert ("> 0 </Range>" in text or "> 0-" in text) and "> 0" not in trimmed
    assert ("> 1-" in trimmed) is early
    (tmp_path / "t.bmap").write_text(trimmed)
    out = tmp_path / "out"
    subprocess.run(["bmaptool", "--quiet", "copy", "--bmap", str(tmp_path / "t.bmap"),
                    str(image), str(out)], check=True, capture_output=True)
    data, want = out.read_bytes(), image.read_bytes()
    assert data[:4096] == bytes(4096) and data[4096:] == want[4096:]


def test_interrupted_flash_leaves_no_partition_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    old = make_image(tmp_path / "old.img", seed=1)
    new = make_image(tmp_path / "new.img", seed=2)
    target = tmp_path / "card"
    flash.write_plan(flash.plan_flash(old, "node", target, allow_file=True),
                     use_bmaptool=False, out=lambda s: None)
    assert len(partitions_of(target)) == 2  # a card that boots as the old node

    calls = 0
    real = flash._write_chunk

    def dies_half_way(fd: int, chunk: bytes, offset: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        real(fd, chunk, offset)

    monkeypatch.setattr(flash, "_write_chunk", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        flash.write_plan(flash.plan_flash(new, "node", target, allow_file=True),
                         use_bmaptool=False, out=lambda s: None)
    assert capsys.readouterr().err == (f"pibake: flash interrupted: {target} has no partition "
                                       "table now and boots nothing; flash it again\n")
    data = target.read_bytes()
    assert data[: 1 << 20] == bytes(1 << 20)  # no MBR: the card boots neither node
    assert partitions_of(target) == []
    assert data[4 * MiB: 4 * MiB + 4096] == new.read_bytes()[4 * MiB: 4 * MiB + 4096]


def test_read_back_mismatch_never_writes_the_table(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path / "node.img")
    target = tmp_path / "card"
    real = flash._write_chunk

    def flips_a_bit(fd: int, chunk: bytes, offset: int) -> None:
        if offset == 13 * MiB:
            chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
        real(fd, chunk, offset)

    monkeypatch.setattr(flash, "_write_chunk", flips_a_bit)
    with pytest.raises(FlashError, match=r"card: read-back differs from node.img \(sha256 "):
        flash.write_plan(flash.plan_flash(image, "node", target, allow_file=True),
                         use_bmaptool=False, out=lambda s: None)
    assert partitions_of(target) == []


def test_image_changed_after_build_is_refused(tmp_path: Path) -> None:
    image = make_image(tmp_path / "node.img")
    with open(image, "r+b") as f:
        f.seek(20 * MiB)
        f.write(b"tampered")
    with pytest.raises(FlashError, match="node.img: sha256 .* does not match its .sha256"):
        flash.plan_flash(image, "node", tmp_path / "card", allow_file=True)


def test_parse_size() -> None:
    assert flash.parse_size("256G") == 256 * GiB
    assert flash.parse_size("64GiB") == 64 * GiB
    assert flash.parse_size("512m") == 512 * MiB
    assert flash.parse_size("1000") == 1000
    with pytest.raises(FlashError, match=r"--max-size 'big': not a size; use e.g. 64G"):
        flash.parse_size("big")


# ---------------------------------------------------------------- the command


def _built(project: Path, host: str = "node-01") -> Path:
    out = project / "output"
    out.mkdir(exist_ok=True)
    image = make_image(out / f"{host}.img")
    inv = load_inventory(project)
    (out / f"{host}.manifest.json").write_text(json.dumps({"inputs": image_inputs(inv, host)}))
    return image


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            stdin: str = "") -> tuple[int, str, str]:
    import io

    monkeypatch.setattr(sys, "argv", ["pibake", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_:
        cli.main()
        sys.exit(0)
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out, out.err


def test_command_writes_and_prints_one_line(mini: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    image = _built(mini)
    target = tmp_path / "card"
    code, out, err = run_cli(["-C", str(mini), "flash", "node-01", str(target), "--yes",
                              "--allow-file"], monkeypatch, capsys)
    sha = (mini / "output/node-01.img.sha256").read_text().split()[0]
    assert code == 0, err
    assert out.startswith(f"{target}: node-01 written and verified, sha256 {sha}, ")
    assert out.endswith("(bmaptool)\n")
    assert target.read_bytes() == image.read_bytes()


def test_command_asks_for_the_host_name(mini: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _built(mini)
    target = tmp_path / "card"
    target.write_bytes(b"old card")
    monkeypatch.setattr(flash, "probe_device", fake_probe(
        model="Generic SD/MMC", partitions=(Partition("sdb1", 256 * MiB, "vfat", ()),)))
    code, out, err = run_cli(["-C", str(mini), "flash", "node-01", str(target)],
                             monkeypatch, capsys, stdin="node-02\n")
    assert code == 8
    assert f"{target}: Generic SD/MMC, 32.0 GiB\n  sdb1: 256 MiB vfat\n" in err
    assert err.endswith(f"pibake: error: {target}: typed 'node-02', not 'node-01'; nothing "
                        "was written\n")
    assert target.read_bytes() == b"old card"
    code, out, err = run_cli(["-C", str(mini), "flash", "node-01", str(target)],
                             monkeypatch, capsys, stdin="")
    assert (code, err.splitlines()[-1]) == (8, f"pibake: error: {target}: no host name typed; "
                                               "nothing was written (--yes skips the question)")
    code, out, err = run_cli(["-C", str(mini), "flash", "node-01", str(target)],
                             monkeypatch, capsys, stdin="node-01\n")
    assert code == 0, err
    assert partitions_of(target)


def test_command_refusals_exit_8(mini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "card"
    code, _, err = run_cli(["-C", str(mini), "flash", "node-01", str(target), "--yes",
                            "--allow-file"], monkeypatch, capsys)
    assert (code, err) == (8, f"pibake: error: {mini}/output/node-01.img: no image; build it "
                              "first: pibake build node-01\n")
    _built(mini)
    monkeypatch.setattr(flash, "probe_device", fake_probe(mountpoints=("/media/u/rootfs",)))
    code, _, err = run_cli(["-C", str(mini), "flash", "node-01", str(target), "--yes"],
                           monkeypatch, capsys)
    assert (code, err) == (8, f"pibake: error: {target}: has mounted file systems "
                              "(/media/u/rootfs); unmount them first, e.g. sudo umount "
                              "/media/u/rootfs\n")
    monkeypatch.setattr(flash, "probe_device", fake_probe(size=64 * GiB))
    code, _, err = run_cli(["-C", str(mini), "flash", "node-01", str(target), "--yes",
                            "--max-size", "32G"], monkeypatch, capsys)
    assert code == 8 and "larger than --max-size 32.0 GiB" in err
    assert not target.exists()


def test_stale_image_is_refused_unless_stale_ok(mini: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _built(mini)
    (mini / "layers/web/files/etc/web/static.txt").write_text("changed\n")
    target = tmp_path / "card"
    args = ["-C", str(mini), "flash", "node-01", str(target), "--yes", "--allow-file"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert (code, err) == (8, f"pibake: error: {mini}/output/node-01.img: stale, built before "
                              "layers/web changed; rebuild it (pibake build node-01) or pass "
                              "--stale-ok\n")
    assert not target.exists()
    code, _, err = run_cli([*args, "--stale-ok"], monkeypatch, capsys)
    assert code == 0, err
    # A rotated host key (its public half in the store) makes the image stale too.
    _built(mini)
    store = mini / "secrets/hosts/node-01"
    store.mkdir(parents=True)
    (store / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAA new\n")
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert (code, err) == (8, f"pibake: error: {mini}/output/node-01.img: stale, built before "
                              "secrets/hosts/node-01/ssh_host_ed25519_key.pub changed; rebuild "
                              "it (pibake build node-01) or pass --stale-ok\n")
    (mini / "output/node-01.manifest.json").write_text("{}")  # written by an older pibake
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert (code, err) == (8, f"pibake: error: {mini}/output/node-01.img: its manifest records "
                              "no input hashes; rebuild it (pibake build node-01) or pass "
                              "--stale-ok\n")
