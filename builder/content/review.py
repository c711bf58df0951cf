"""`pibake render HOST --to DIR`: every file the host's layers would put into
its image, written to a folder for review (no base, no emulation, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

from builder.content.hostlayer import host_delta, standin_facts
from builder.errors import ConfigError
from builder.inventory.config import Inventory


def render_to(inv: Inventory, host: str, dest: Path) -> int:
    from builder.plan import plan_hosts

    inv.profile(host)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"{dest}: folder is not empty; name a new or empty folder")
    plan = plan_hosts(inv, (host,))[0]
    # The role image is not needed to review files: stand in its account list.
    delta = host_delta(plan, standin_facts(plan))
    count = 0
    for layer in plan.layers:
        for item in layer.files:
            count += _write(dest, item.dest, item.kind, item.src.read_bytes()
                            if item.kind == "file" else b"", item.target, item.mode)
    for e in delta.root:
        count += _write(dest, e.path, e.kind, e.data, e.target, e.mode)
    for e in delta.boot:
        count += _write(dest, plan.base.boot_mount + e.path, e.kind, e.data, e.target, e.mode)
    return count


def _write(dest: Path, path: str, kind: str, data: bytes, target: str, mode: int) -> int:
    p = dest / path.lstrip("/")
    if kind == "dir":
        p.mkdir(parents=True, exist_ok=True)
        return 0
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink() or p.exists():
        p.unlink()
    if kind == "symlink":
        os.symlink(target, p)
    else:
        p.write_bytes(data)
        os.chmod(p, mode)
    return 1
