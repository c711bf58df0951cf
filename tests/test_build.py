"""Integration: build real images of the mini project and open them independently.

The first test pays for the one arm64 base bootstrap of the suite (cached in
$PIBAKE_CACHE or ~/.cache/pibake and reused by every later run and tier).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.cache import sha256_file
from builder.content.identity import machine_id
from builder.content.secrets import Store
from builder.image.assemble import read_ext4, read_vfat
from builder.inventory.config import load_inventory
from builder.run import default_signals
from tests.conftest import make_mini_project, write

pytestmark = pytest.mark.integration

PIBAKE = [sys.executable, "-m", "builder"]


def pibake(project: Path, *args: str, timeout: float = 3000) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PIBAKE, "-C", str(project), *args], capture_output=True, text=True,
                          timeout=timeout)


def partitions(img: Path) -> list[dict[str, object]]:
    out = subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True,
                         check=True).stdout
    table = json.loads(out)["partitiontable"]
    assert table["label"] == "dos"
    parts: list[dict[str, object]] = table["partitions"]
    return parts


def extract(img: Path, part: dict[str, object], dest: Path) -> Path:
    start, size = int(part["start"]), int(part["size"])  # type: ignore[call-overload]
    subprocess.run(["dd", f"if={img}", f"of={dest}", "bs=512", f"skip={start}",
                    f"count={size}", "conv=sparse", "status=none"], check=True)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    project = make_mini_project(tmp_path_factory.mktemp("build") / "proj")
    first = pibake(project, "build", "node-01")
    assert first.returncode == 0, first.stderr
    second = pibake(project, "build", "node-02", "--compress", "zstd")
    assert second.returncode == 0, second.stderr
    return {"project": project, "first": first, "second": second}


def test_second_host_reuses_role(built: dict[str, object]) -> None:
    second = built["second"]
    assert isinstance(second, subprocess.CompletedProcess)
    assert "(role cached)" in second.stdout
    assert "bootstrap" not in second.stderr and "layer web" not in second.stderr


def test_image_layout_and_identity(built: dict[str, object], tmp_path: Path) -> None:
    project = built["project"]
    assert isinstance(project, Path)
    img = project / "output/node-01.img"
    parts = partitions(img)
    assert [p["type"] for p in parts] == ["c", "83"]
    boot = extract(img, parts[0], tmp_path / "boot.vfat")
    root = extract(img, parts[1], tmp_path / "root.ext4")
    assert subprocess.run(["fsck.ext4", "-fn", str(root)], capture_output=True).returncode == 0
    assert subprocess.run(["fsck.vfat", "-n", str(boot)], capture_output=True).returncode == 0

    label = json.loads(subprocess.run(["sfdisk", "--json", str(img)], capture_output=True,
                                      text=True).stdout)["partitiontable"]["id"]
    disk = label.removeprefix("0x")
    cmdline = read_vfat(boot, "/cmdline.txt").decode()
    assert f"root=PARTUUID={disk}-02" in cmdline
    fstab = read_ext4(root, "/etc/fstab").decode()
    assert f"PARTUUID={disk}-02\t/\text4" in fstab
    assert f"PARTUUID={disk}-01\t/boot/firmware\tvfat" in fstab
    assert read_ext4(root, "/etc/hostname") == b"node-01\n"
    page = read_ext4(root, "/etc/web/page.txt").decode()
    assert "hello from node-01 (node-01,node-02)" in page
    assert read_ext4(root, "/srv/web/port") == b"8080\n"           # the hook ran
    assert read_ext4(root, "/etc/web/static.txt") == b"static\n"   # files/ copied

    # hygiene
    # fixed per host (from its secret in the store), so systemd sees no first boot
    # and a rebuilt card keeps its id
    store = Store.at(load_inventory(project))
    assert read_ext4(root, "/etc/machine-id") == (machine_id(store, "node-01") + "\n").encode()
    # its own host keys from the store, none made by a package at role build time
    assert read_ext4(root, "/etc/ssh/ssh_host_ed25519_key") == (
        store.path / "hosts/node-01/ssh_host_ed25519_key").read_bytes()
    lists = subprocess.run(["debugfs", "-R", "ls /var/lib/apt/lists", str(root)],
                           capture_output=True, text=True).stdout
    assert "Packages" not in lists and "Release" not in lists
    shadow = read_ext4(root, "/etc/shadow").decode()
    for line in shadow.splitlines():
        assert line.split(":")[1][:1] in ("!", "*"), line   # no usable password
    assert b"admin" in read_ext4(root, "/etc/passwd")
    # the kernel and initrd are on the boot partition
    boot_files = subprocess.run(["mdir", "-b", "-i", str(boot), "::/"], capture_output=True,
                                text=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    assert "vmlinuz" in boot_files and "initrd.img" in boot_files


def test_checksum_bmap_manifest(built: dict[str, object], tmp_path: Path) -> None:
    project = built["project"]
    assert isinstance(project, Path)
    out = project / "output"
    ok = subprocess.run(["sha256sum", "-c", "node-02.img.sha256"], cwd=out, capture_output=True)
    assert ok.returncode == 0
    ok = subprocess.run(["sha256sum", "-c", "node-02.img.zst.sha256"], cwd=out,
                        capture_output=True)
    assert ok.returncode == 0
    copy = tmp_path / "copy.img"
    subprocess.run(["bmaptool", "copy", "--bmap", str(out / "node-02.img.bmap"),
                    str(out / "node-02.img"), str(copy)], check=True, capture_output=True)
    assert subprocess.run(["cmp", str(copy), str(out / "node-02.img")]).returncode == 0
    manifest = json.loads((out / "node-02.manifest.json").read_text())
    assert manifest["host"] == "node-02"
    assert manifest["base"]["name"] == "debian-bookworm"
    assert len(manifest["base"]["sha256"]) == 64
    assert [layer["name"] for layer in manifest["layers"]] == ["base", "web"]
    assert all(len(layer["content_hash"]) == 64 for layer in manifest["layers"])
    assert manifest["packages"]["openssh-server"]
    assert manifest["packages"]["linux-image-arm64"]
    assert manifest["role"]["cached"] is True
    files = {f["path"]: f for f in manifest["files"]}
    assert files["/etc/web/page.txt"]["source"] == "layers/web/templates/etc/web/page.txt.j2"
    assert files["/etc/hostname"]["source"] == "host"
    assert manifest["image"]["sha256"] == (out / "node-02.img.sha256").read_text().split()[0]
    assert manifest["secrets"] == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key"]
    assert manifest["git_revision"]
    # sparse: the image occupies far less than its size
    st = (out / "node-02.img").stat()
    assert st.st_blocks * 512 < st.st_size
    # nothing temporary left behind
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "node-01.img", "node-01.img.sha256", "node-01.img.bmap", "node-01.manifest.json",
        "node-02.img", "node-02.img.sha256", "node-02.img.bmap", "node-02.manifest.json",
        "node-02.img.zst", "node-02.img.zst.sha256"])


def test_same_host_rebuild_keeps_identity(built: dict[str, object]) -> None:
    project = built["project"]
    assert isinstance(project, Path)
    before = json.loads((project / "output/node-01.manifest.json").read_text())
    write(project / "profiles/node-01.yaml",
          "base: debian-bookworm\nlayers: [base, web]\nvars:\n  web_greeting: again\n")
    again = pibake(project, "build", "node-01")
    assert again.returncode == 0, again.stderr
    assert "(role cached)" in again.stdout   # a template-only var does not split the role
    after = json.loads((project / "output/node-01.manifest.json").read_text())
    assert after["image"]["partuuids"] == before["image"]["partuuids"]
    assert after["image"]["sha256"] != before["image"]["sha256"]


def test_disk_full_leaves_nothing(built: dict[str, object], tmp_path: Path) -> None:
    project = built["project"]
    assert isinstance(project, Path)
    out = tmp_path / "full"
    out.mkdir()
    # A private mount namespace: the small tmpfs vanishes with the process.
    script = (f"mount -t tmpfs -o size=8M pibake-test {out} && "
              f"{sys.executable} -m builder -C {project} build node-01 -o {out}; "
              f"rc=$?; ls -A {out}; exit $rc")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (f"pibake: error: {out}: no space left on device while writing "
                         "node-01.img; free some space and build again")
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip() == ""   # ls -A of the full folder: nothing left


def test_interrupt_mid_role_build(built: dict[str, object]) -> None:
    project = built["project"]
    assert isinstance(project, Path)
    # A hook unique to this run: its role is never in the cache (an earlier run
    # that was not interrupted would have left a finished one there).
    seconds = 100000 + time.time_ns() % 100000     # also tells its sleep from others'
    hook = write(project / "layers/web/hooks.d/20-slow.sh", f"#!/bin/sh\nsleep {seconds}\n",
                 0o755)
    before = sha256_file(project / "output/node-01.img")
    # SIGINT at its default in the child even when this suite runs as a
    # background job (where the shell starts it ignored, and pibake would inherit that).
    proc = subprocess.Popen([*PIBAKE, "-C", str(project), "build", "node-01"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_signals)
    assert proc.stderr is not None
    seen = ""
    while "==> layer web" not in seen:
        line = proc.stderr.readline()
        assert line, f"pibake ended before the web layer's hooks ran: {seen}"
        seen += line
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + err
    assert "Traceback" not in err
    assert not _still_running(f"sleep {seconds}$"), "the hook's process survived Ctrl-C"
    mounts = Path("/proc/mounts").read_text()
    assert str(project) not in mounts and f".role.tmp-{proc.pid}-" not in mounts
    assert sha256_file(project / "output/node-01.img") == before   # every byte kept
    hook.unlink()
    again = pibake(project, "build", "node-01")
    assert again.returncode == 0, again.stderr


def _still_running(pattern: str, grace: float = 10) -> bool:
    """Whether a process matching ``pattern`` outlives a short grace period
    (the group is killed with SIGTERM; an emulated process takes a moment)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode != 0:
            return False
        time.sleep(0.5)
    return True
