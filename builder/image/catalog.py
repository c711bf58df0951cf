"""output/os_list.json: the built images as a Raspberry Pi Imager repository.

Serve output/ over HTTP and run ``rpi-imager --repo http://HOST:PORT/os_list.json``:
each node is one entry, and Imager downloads, checks and writes it. The URLs
are relative to the JSON file, so the folder can be served from anywhere.

``init_format`` is left out on purpose: without it Imager offers no "OS
customisation", which would write its own first-run script over the node's
identity.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from builder import log
from builder.cache import atomic_file
from builder.errors import BuildError
from builder.inventory.config import Inventory

CATALOG = "os_list.json"

# Preferred download: the smallest copy Imager can stream-extract.
_DOWNLOADS = (".img.xz", ".img.zst", ".img")

# The fields Imager reads from an os_list entry that points at an image, and their types.
ENTRY_FIELDS: Mapping[str, type] = {
    "name": str,
    "description": str,
    "url": str,
    "extract_size": int,
    "extract_sha256": str,
    "image_download_size": int,
    "image_download_sha256": str,
    "release_date": str,
}
_OPTIONAL_FIELDS: Mapping[str, type] = {"devices": list, "icon": str}

# Imager's device tags for the Pi families a node can be (its "devices" filter).
_DEVICE_TAGS = {"pi1": "pi1", "pi2": "pi2", "pi3": "pi3", "pi4": "pi4", "pi5": "pi5"}


def _sha_of(path: Path) -> str:
    side = path.with_name(path.name + ".sha256")
    try:
        return side.read_text().split()[0]
    except (FileNotFoundError, IndexError):
        raise BuildError(f"{side}: missing; build the host again to write the catalog") from None


def entry_for(inv: Inventory, host: str, out_dir: Path) -> dict[str, Any] | None:
    """The catalog entry for ``host``'s built image, or None if it has none."""
    image = out_dir / f"{host}.img"
    manifest_path = out_dir / f"{host}.manifest.json"
    if not image.is_file() or not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("secrets"):
        # Serving it would hand the node's keys to anyone on the network.
        log.notice(f"{CATALOG}: {host} left out: its image carries secrets")
        return None
    download = next(p for p in (out_dir / f"{host}{s}" for s in _DOWNLOADS) if p.is_file())
    base = manifest.get("base", {})
    layers = "+".join(layer["name"] for layer in manifest.get("layers", []))
    model = str(inv.node(host).model)
    bits = "64bit" if base.get("arch") == "arm64" else "32bit"
    entry: dict[str, Any] = {
        "name": f"{host} ({inv.cluster.name})",
        "description": f"pibake node {host} of {inv.cluster.name}: {model}, "
                       f"{base.get('name', '?')} {base.get('arch', '?')}, layers {layers}",
        "url": download.name,
        "extract_size": image.stat().st_size,
        "extract_sha256": _sha_of(image),
        "image_download_size": download.stat().st_size,
        "image_download_sha256": _sha_of(download),
        "release_date": str(manifest.get("built_at", ""))[:10],
    }
    if model in _DEVICE_TAGS:
        entry["devices"] = [f"{_DEVICE_TAGS[model]}-{bits}"]
    return entry


def validate_os_list(data: Any, shown: str = CATALOG) -> None:
    """Check ``data`` has the shape and types Imager reads; one line on the first fault."""
    if not isinstance(data, dict) or not isinstance(data.get("os_list"), list):
        raise BuildError(f"{shown}: os_list: must be a list of entries")
    for n, entry in enumerate(data["os_list"]):
        where = f"{shown}: os_list[{n}]"
        if not isinstance(entry, dict):
            raise BuildError(f"{where}: must be an object")
        for key, kind in ENTRY_FIELDS.items():
            value = entry.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise BuildError(f"{where}.{key}: {value!r} is not a {kind.__name__}")
        for key, kind in _OPTIONAL_FIELDS.items():
            if key in entry and not isinstance(entry[key], kind):
                raise BuildError(f"{where}.{key}: {entry[key]!r} is not a {kind.__name__}")
        for key in ("extract_sha256", "image_download_sha256"):
            if not re.fullmatch(r"[0-9a-f]{64}", entry[key]):
                raise BuildError(f"{where}.{key}: {entry[key]!r} is not a sha256 in hex")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["release_date"]):
            raise BuildError(f"{where}.release_date: {entry['release_date']!r} is not "
                             "YYYY-MM-DD")
        if entry["extract_size"] <= 0 or entry["image_download_size"] <= 0:
            raise BuildError(f"{where}: sizes must be positive")


def write_catalog(inv: Inventory, out_dir: Path, hosts: Sequence[str] | None = None) -> Path:
    """Write ``out_dir/os_list.json`` listing every host of the inventory with an image."""
    entries = []
    for host in hosts if hosts is not None else list(inv.profiles):
        entry = entry_for(inv, host, out_dir)
        if entry is not None:
            entries.append(entry)
    data = {"os_list": entries}
    validate_os_list(data, str(out_dir / CATALOG))
    final = out_dir / CATALOG
    with atomic_file(final, mode=0o644) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return final
