"""What an image was built from, as hashes, so a stale image can be told apart.

The manifest records ``inputs`` when the image is built; ``stale_inputs``
compares them with the inventory as it is now. An image whose cluster file,
profile, layers, first-boot runner or host keys changed since would flash
old content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from builder.content.hostlayer import FIRSTBOOT_DIR
from builder.inventory.config import Inventory
from builder.inventory.layers import tree_hash

# What stale_inputs returns for a manifest that records no inputs (an older pibake's).
UNTRACKED = "<untracked>"


def _file_sha(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return "missing"


def image_inputs(inv: Inventory, host: str) -> dict[str, str]:
    """Input name -> content hash, for everything that shapes ``host``'s image."""
    profile = inv.profile(host)
    inputs = {
        "profiles/cluster.yaml": _file_sha(inv.root / "profiles/cluster.yaml"),
        profile.shown: _file_sha(inv.root / profile.shown),
        "firstboot": tree_hash(FIRSTBOOT_DIR),
    }
    for name in profile.layers:
        inputs[inv.layers[name].shown] = inv.layers[name].content_hash
    inputs.update(_host_public_keys(inv, host))
    return inputs


def _host_public_keys(inv: Inventory, host: str) -> dict[str, str]:
    """The public halves of the host's keys in the secrets store (host keys and
    their certificates): a rotated key makes the image stale. Private values
    are never hashed here; the manifest is readable by anyone."""
    from builder.content.secrets import store_location

    path, shown = store_location(inv)
    folder = path / "hosts" / host
    if not folder.is_dir():
        return {}
    return {f"{shown}/hosts/{host}/{p.name}": _file_sha(p)
            for p in sorted(folder.glob("*.pub"))}


def stale_inputs(manifest: Mapping[str, Any], current: Mapping[str, str]) -> list[str]:
    """The inputs that changed (or appeared, or went away) since the manifest was written."""
    recorded = manifest.get("inputs")
    if not isinstance(recorded, dict):
        return [UNTRACKED]
    return sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
