"""output/os_list.json in Raspberry Pi Imager's repository format."""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path
from typing import Any

import pytest

from builder.errors import BuildError
from builder.image.catalog import ENTRY_FIELDS, validate_os_list, write_catalog
from builder.inventory.config import load_inventory


def fake_build(out: Path, host: str, *, xz: bool, secrets: list[str] | None = None) -> bytes:
    data = host.encode() * 100_000
    (out / f"{host}.img").write_bytes(data)
    (out / f"{host}.img.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {host}.img\n")
    if xz:
        packed = lzma.compress(data)
        (out / f"{host}.img.xz").write_bytes(packed)
        (out / f"{host}.img.xz.sha256").write_text(
            f"{hashlib.sha256(packed).hexdigest()}  {host}.img.xz\n")
    manifest = {"host": host, "built_at": "2026-12-02T01:02:03Z", "secrets": secrets or [],
                "base": {"name": "debian-bookworm", "arch": "arm64"},
                "layers": [{"name": "base"}, {"name": "web"}]}
    (out / f"{host}.manifest.json").write_text(json.dumps(manifest))
    return data


def test_catalog_lists_each_built_host(mini: Path) -> None:
    out = mini / "output"
    out.mkdir()
    img1 = fake_build(out, "node-01", xz=True)
    img2 = fake_build(out, "node-02", xz=False)
    path = write_catalog(load_inventory(mini), out)
    data = json.loads(path.read_text())
    validate_os_list(data)
    first, second = data["os_list"]
    assert set(first) == {*ENTRY_FIELDS, "devices"}
    assert first["name"] == "node-01 (mini)"
    assert first["url"] == "node-01.img.xz"          # relative to os_list.json
    assert first["extract_size"] == len(img1)
    assert first["extract_sha256"] == hashlib.sha256(img1).hexdigest()
    xz = (out / "node-01.img.xz").read_bytes()
    assert first["image_download_size"] == len(xz)
    assert first["image_download_sha256"] == hashlib.sha256(xz).hexdigest()
    assert lzma.decompress(xz) == img1
    assert first["release_date"] == "2026-12-02"
    assert first["devices"] == ["pi3-64bit"]
    assert "layers base+web" in first["description"]
    assert second["url"] == "node-02.img"
    assert second["image_download_size"] == second["extract_size"] == len(img2)


def test_catalog_leaves_out_images_with_secrets_and_unbuilt_hosts(
        mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = mini / "output"
    out.mkdir()
    fake_build(out, "node-01", xz=False, secrets=["ssh_host_ed25519_key"])
    data = json.loads(write_catalog(load_inventory(mini), out).read_text())
    assert data == {"os_list": []}
    assert "os_list.json: node-01 left out: its image carries secrets" in capsys.readouterr().err


GOOD: dict[str, Any] = {
    "name": "n", "description": "d", "url": "n.img.xz", "extract_size": 10,
    "extract_sha256": "a" * 64, "image_download_size": 5, "image_download_sha256": "b" * 64,
    "release_date": "2026-12-02",
}


@pytest.mark.parametrize(("change", "message"), [
    ({"extract_size": "10"}, "os_list.json: os_list[0].extract_size: '10' is not a int"),
    ({"url": None}, "os_list.json: os_list[0].url: None is not a str"),
    ({"extract_sha256": "abc"},
     "os_list.json: os_list[0].extract_sha256: 'abc' is not a sha256 in hex"),
    ({"release_date": "02.12.2026"},
     "os_list.json: os_list[0].release_date: '02.12.2026' is not YYYY-MM-DD"),
    ({"devices": "pi3-64bit"}, "os_list.json: os_list[0].devices: 'pi3-64bit' is not a list"),
    ({"image_download_size": True},
     "os_list.json: os_list[0].image_download_size: True is not a int"),
])
def test_validation_names_the_field(change: dict[str, Any], message: str) -> None:
    validate_os_list({"os_list": [GOOD]})
    with pytest.raises(BuildError) as err:
        validate_os_list({"os_list": [{**GOOD, **change}]})
    assert str(err.value) == message
    with pytest.raises(BuildError, match="os_list: must be a list of entries"):
        validate_os_list({"oslist": []})
