"""The one real arm64 base that the integration tests share.

It is built once into the build cache (``$PIBAKE_CACHE`` or ``~/.cache/pibake``)
under its content key, and reused by every later test session.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.emulate.bootstrap import BootstrapSpec, spec_for
from builder.inventory.bases import CATALOG
from builder.pipeline import bootstrap_base
from builder.run import run

ARM64_SPEC: BootstrapSpec = spec_for("pi3")


@pytest.fixture(scope="session")
def arm64_base_tar() -> Path:
    """The pipeline's own cached base, so tests and builds share one bootstrap."""
    return bootstrap_base(CATALOG["debian-bookworm"], "pi3", "arm64", None).tar


@pytest.fixture()
def arm64_tree(arm64_base_tar: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh extracted copy of the shared base."""
    root = tmp_path / "root"
    root.mkdir()
    run(["tar", "-C", root, "--numeric-owner", "-xpf", arm64_base_tar], what="tar -x base")
    yield root
    shutil.rmtree(root, ignore_errors=True)
