"""Integration: the same host built twice from a warm cache, and once more
with its role built again from nothing, gives the same image bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import cache
from builder.image.catalog import validate_os_list
from tests.conftest import make_mini_project

pytestmark = pytest.mark.integration


def build(project: Path, env: dict[str, str] | None = None,
          *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "builder", "-C", str(project), "build",
                           "node-01", *args], capture_output=True, text=True, timeout=3600,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc


def sha(project: Path) -> str:
    return (project / "output/node-01.img.sha256").read_text().split()[0]


def private_cache(path: Path) -> dict[str, str]:
    """A cache of its own sharing only the bootstrapped base: its role is built
    here from nothing, and no other build on this machine touches its work
    folder or its apt lock."""
    path.mkdir()
    os.symlink(cache.cache_dir() / "rootfs", path / "rootfs")
    return {"PIBAKE_CACHE": str(path)}


def test_rebuilds_are_bit_identical(tmp_path: Path) -> None:
    project = make_mini_project(tmp_path / "proj")
    warm = private_cache(tmp_path / "cache-1")
    build(project, warm)
    first = sha(project)
    time.sleep(2.1)  # past FAT's two-second resolution
    again = build(project, warm, "--catalog")
    assert "(role cached)" in again.stdout
    assert sha(project) == first
    catalog = json.loads((project / "output/os_list.json").read_text())
    validate_os_list(catalog)
    assert [e["extract_sha256"] for e in catalog["os_list"]] == [first]

    # The manifest's inputs match the inventory, so the fresh image flashes
    # without --stale-ok, and the card reads back as the image.
    card = tmp_path / "card"
    flashed = subprocess.run([sys.executable, "-m", "builder", "-C", str(project), "flash",
                              "node-01", str(card), "--yes", "--allow-file"],
                             capture_output=True, text=True, timeout=600)
    assert flashed.returncode == 0, flashed.stderr
    assert flashed.stdout.startswith(f"{card}: node-01 written and verified, sha256 {first}")
    assert cache.sha256_file(card) == first

    cold = build(project, private_cache(tmp_path / "cache-2"))
    assert "(role cached)" not in cold.stdout
    assert sha(project) == first
