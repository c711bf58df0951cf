"""The cache: only complete entries are used, one build per key at a time,
listing and pruning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import cache
from builder.inventory.config import load_inventory
from builder.plan import plan_hosts
from tests.test_config import run_cli


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PIBAKE_CACHE", str(root))
    return root


def make_entry(folder: Path, files: tuple[str, ...], meta: str = '{"v": 1}') -> Path:
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(meta)
    for name in files:
        (folder / name).write_bytes(b"x" * 8192)
    return folder


def fresh(value: int) -> dict[str, int]:
    return {"v": value}


@pytest.mark.parametrize("broken", ["no-root-image", "bad-meta", "no-meta"])
def test_incomplete_entry_is_a_miss_with_a_notice(own_cache: Path, broken: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_entry(own_cache / "roles/k1", ("root.ext4", "boot.vfat"))
    if broken == "no-root-image":
        (folder / "root.ext4").unlink()
    elif broken == "bad-meta":
        (folder / "meta.json").write_text("{truncated")
    else:
        (folder / "meta.json").unlink()
    meta, cached = cache.use(folder, ("root.ext4", "boot.vfat"), lambda: fresh(2))
    assert (meta, cached) == ({"v": 2}, False)
    assert capsys.readouterr().err == ("pibake: cache entry roles/k1 is incomplete; "
                                       "rebuilding it\n")


def test_complete_entry_is_used(own_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_entry(own_cache / "roles/k2", ("root.ext4", "boot.vfat"))
    meta, cached = cache.use(folder, ("root.ext4", "boot.vfat"), lambda: fresh(2))
    assert (meta, cached, capsys.readouterr().err) == ({"v": 1}, True, "")


SLOW_BUILD = """
import json, sys, time
from pathlib import Path
from builder import cache
folder = Path(sys.argv[1])
def build():
    print("building", flush=True)
    with cache.atomic_dir(folder) as tmp:
        time.sleep(float(sys.argv[2]))
        (tmp / "data").write_text("x")
        (tmp / "meta.json").write_text(json.dumps({"by": sys.argv[3]}))
    return {"by": sys.argv[3]}
meta, cached = cache.use(folder, ("data",), build)
print(meta["by"], cached, flush=True)
"""


def test_two_builds_of_one_key_build_it_once(own_cache: Path) -> None:
    folder = own_cache / "roles/shared"
    env = {**os.environ, "PIBAKE_CACHE": str(own_cache)}
    first = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, str(folder), "2", "first"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert first.stdout is not None
    assert first.stdout.readline() == "building\n"        # the first holds the lock now
    second = subprocess.run([sys.executable, "-c", SLOW_BUILD, str(folder), "0", "second"],
                            capture_output=True, text=True, env=env, timeout=60)
    out, _ = first.communicate(timeout=60)
    assert out == "first False\n"
    assert second.stdout == "first True\n"                 # waited, then used the entry
    assert second.stderr == "pibake: waiting for another build of cache entry roles/shared\n"


def test_cache_lists_and_prunes_what_no_plan_uses(mini: Path, own_cache: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_hosts(load_inventory(mini), ("node-01",))[0]
    make_entry(own_cache / "rootfs" / plan.base_key, ("rootfs.tar",))
    make_entry(own_cache / "roles" / plan.role_key, ("root.ext4", "boot.vfat"))
    make_entry(own_cache / "roles" / ("0" * 64), ("root.ext4", "boot.vfat"))
    make_entry(own_cache / "kernels" / ("1" * 64), ("vmlinuz",))
    old = time.time() - 86400
    os.utime(own_cache / "roles" / ("0" * 64) / "meta.json", (old, old))
    code, out, err = run_cli(capsys, "cache")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [ln.split()[:2] for ln in lines[:-1]] == [
        ["base", plan.base_key[:16]], ["role", "0" * 16], ["role", plan.role_key[:16]],
        ["kernel", "1" * 16]]
    assert time.strftime("%Y-%m-%d", time.localtime(old)) in lines[1]
    assert lines[-1].startswith("4 entries, ") and lines[-1].endswith(f" MiB in {own_cache}")
    code, out, err = run_cli(capsys, "-C", str(mini), "cache", "prune")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1].startswith("1 entries removed, ")
    assert sorted(p.name for p in (own_cache / "roles").iterdir()
                  if not p.name.startswith(".")) == [plan.role_key]
    assert (own_cache / "kernels" / ("1" * 64)).is_dir()
    assert json.loads((own_cache / "rootfs" / plan.base_key / "meta.json").read_text())


def test_plan_sees_a_complete_role_as_cached(mini: Path, own_cache: Path) -> None:
    plan = plan_hosts(load_inventory(mini), ("node-01",))[0]
    make_entry(own_cache / "roles" / plan.role_key, ("root.ext4",))
    assert not plan_hosts(load_inventory(mini), ("node-01",))[0].role_cached
    (own_cache / "roles" / plan.role_key / "boot.vfat").write_bytes(b"x")
    assert plan_hosts(load_inventory(mini), ("node-01",))[0].role_cached


def test_clean_stale_spares_running_builds_temporaries(tmp_path: Path) -> None:
    live, dead = os.getpid(), 2 ** 22 + 7        # above pid_max's default: never running
    names = [f".role.tmp-{live}-ab12cd", f".role.tmp-{dead}-ab12cd", f".x.img.tmp-{live}",
             f".x.img.tmp-{dead}", f".k.old-{dead}", ".role.tmp-notapid", "kept"]
    for name in names:
        (tmp_path / name).mkdir()
    cache.clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".role.tmp-{live}-ab12cd", f".x.img.tmp-{live}", ".role.tmp-notapid", "kept"])
