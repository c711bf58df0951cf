"""Reproducibility helpers: the epoch, clamped times, dropped caches, and the
host stage giving the same bytes when run again seconds later."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.image import reproducible
from builder.image.assemble import Entry, assemble_disk, make_ext4, make_vfat

EPOCH = 1700000000


def test_epoch_from_env_git_or_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert reproducible.source_date_epoch(tmp_path) == reproducible.FALLBACK_EPOCH
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "m", "--date=@1600000000"], check=True,
                   env={**os.environ, "GIT_COMMITTER_DATE": "@1600000123"})
    assert reproducible.source_date_epoch(tmp_path) == 1600000123
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert reproducible.source_date_epoch(tmp_path) == 1234
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BuildError) as err:
        reproducible.source_date_epoch(tmp_path)
    assert str(err.value) == ("SOURCE_DATE_EPOCH='yesterday': not a number of seconds since "
                              "1970; unset it or give e.g. 1704067200")


def test_normalize_tree_clamps_times_and_drops_build_records(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "var/cache/ldconfig").mkdir(parents=True)
    (tree / "var/cache/ldconfig/aux-cache").write_text("inodes")
    (tree / "var/cache/man/de").mkdir(parents=True)
    (tree / "var/cache/man/de/index.db").write_text("idx")
    old = tree / "usr/share/doc/pkg"
    old.mkdir(parents=True)
    (old / "copyright").write_text("c")
    os.utime(old / "copyright", (1500000000, 1500000000))
    (tree / "etc").mkdir()
    (tree / "etc/new").write_text("written during the build")
    os.symlink("new", tree / "etc/link")
    reproducible.normalize_tree(tree, EPOCH)
    assert not (tree / "var/cache/ldconfig/aux-cache").exists()
    assert (tree / "var/cache/man").is_dir() and not any((tree / "var/cache/man").iterdir())
    assert (old / "copyright").stat().st_mtime == 1500000000   # a package's time is kept
    assert (tree / "etc/new").stat().st_mtime == EPOCH
    assert (tree / "etc/new").stat().st_atime == EPOCH
    assert os.lstat(tree / "etc/link").st_mtime == EPOCH
    assert tree.stat().st_mtime == EPOCH


def _host_stage(work: Path) -> str:
    tree = work / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/a").write_text("a")
    boot = work / "boot"
    boot.mkdir()
    (boot / "config.txt").write_text("x")
    for t in (tree, boot):
        reproducible.normalize_tree(t, EPOCH)
    make_ext4(tree, work / "r.ext4", size=32 << 20, label="rootfs",
              uuid="12345678-1234-1234-1234-123456789abc")
    assert reproducible.pin_inode_ctimes(work / "r.ext4", EPOCH) >= 13
    make_vfat(boot, work / "b.vfat", size=64 << 20, volume_id="1234abcd")
    assemble_disk(work / "disk.img", boot=work / "b.vfat", root=work / "r.ext4",
                  disk_id=0x1234, boot_entries=[Entry("/sub/x.txt", "file", b"x")],
                  root_entries=[Entry("/new/deep/f", "file", b"f"),
                                Entry("/etc/b", "file", b"b")])
    return hashlib.sha256((work / "disk.img").read_bytes()).hexdigest()


def test_partition_images_and_disk_are_identical_seconds_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    monkeypatch.setenv("E2FSPROGS_FAKE_TIME", str(EPOCH))
    first = _host_stage(tmp_path / "a")
    time.sleep(2.1)  # FAT keeps times in two-second steps
    assert _host_stage(tmp_path / "b") == first
    stat = subprocess.run(["debugfs", "-R", "stat /etc/a", str(tmp_path / "b/r.ext4")],
                          capture_output=True, text=True).stdout
    assert f"ctime: 0x{EPOCH:08x}:00000000" in stat


def test_clean_stale_keeps_a_running_builds_work_tree(tmp_path: Path) -> None:
    """A concurrent build sharing the cache must not delete this build's
    ``.role.tmp-PID-RANDOM`` work tree (found when two role builds overlapped)."""
    from builder.cache import clean_stale

    mine = tmp_path / f".role.tmp-{os.getpid()}-abc123"
    mine.mkdir()
    atomic = tmp_path / f".x.img.tmp-{os.getpid()}"
    atomic.write_text("x")
    dead = tmp_path / ".role.tmp-999999999-zz9"
    dead.mkdir()
    dead_file = tmp_path / ".y.tmp-999999999"
    dead_file.write_text("y")
    clean_stale(tmp_path)
    assert mine.is_dir() and atomic.is_file()
    assert not dead.exists() and not dead_file.exists()
