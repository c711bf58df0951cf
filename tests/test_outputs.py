"""Checksum, block map, compressed copies and manifest, verified with the tools a
user runs on them (sha256sum -c, bmaptool copy, zstd -d, xz -d)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.image import outputs
from builder.image.outputs import (
    Compression,
    compress,
    image_mode,
    write_bmap,
    write_checksums,
    write_manifest,
    write_sha256,
)

MiB = 1 << 20


def sh(*argv: str | os.PathLike[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          check=False)  # fmt: skip


@pytest.fixture
def img(tmp_path: Path) -> Path:
    """A 16 MiB sparse "disk" with a few scattered data ranges."""
    path = tmp_path / "host.img"
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
        for n, at in enumerate((0, 5 * MiB + 123, 12 * MiB, 16 * MiB - 4096)):
            f.seek(at)
            f.write(bytes([n + 1]) * 3000 + os.urandom(2000))
    os.chmod(path, 0o600)
    return path


def test_sha256_file_verifies_with_sha256sum(img: Path) -> None:
    digest = write_sha256(img)
    assert (img.parent / "host.img.sha256").read_text() == f"{digest}  host.img\n"
    check = sh("sha256sum", "-c", "host.img.sha256", cwd=img.parent)
    assert check.returncode == 0 and check.stdout == "host.img: OK\n"
    with open(img, "r+b") as f:
        f.write(b"tampered")
    assert sh("sha256sum", "-c", "host.img.sha256", cwd=img.parent).returncode == 1


def test_bmap_copy_reproduces_the_image(img: Path, tmp_path: Path) -> None:
    bmap = write_bmap(img)
    assert bmap == img.parent / "host.img.bmap"
    copy = tmp_path / "card.img"
    result = sh("bmaptool", "copy", "--bmap", bmap, img, copy)
    assert result.returncode == 0, result.stderr
    assert copy.read_bytes() == img.read_bytes()
    assert "<MappedBlocksCount>" in bmap.read_text()


def test_checksums_side_by_side(img: Path) -> None:
    digest, bmap = write_checksums(img)
    assert sh("sha256sum", "-c", "host.img.sha256", cwd=img.parent).returncode == 0
    assert digest in (img.parent / "host.img.sha256").read_text()
    assert bmap.is_file()
    assert sorted(p.name for p in img.parent.iterdir()) == [
        "host.img",
        "host.img.bmap",
        "host.img.sha256",
    ]


@pytest.mark.parametrize(
    ("method", "suffix", "decompress"),
    [(Compression.zstd, ".zst", ["zstd", "-dcq"]), ("xz", ".xz", ["xz", "-dc"])],
)
def test_compress_round_trips_with_checksum_and_mode(
    img: Path, method: Compression | str, suffix: str, decompress: list[str]
) -> None:
    packed = compress(img, method)
    assert packed == img.parent / f"host.img{suffix}"
    out = subprocess.run([*decompress, packed], capture_output=True, check=True).stdout
    assert out == img.read_bytes()
    assert sh("sha256sum", "-c", f"host.img{suffix}.sha256", cwd=img.parent).returncode == 0
    assert packed.stat().st_mode & 0o777 == 0o600  # same as the image: it may hold secrets
    assert packed.stat().st_size < MiB


def test_compress_mode_can_be_given(img: Path) -> None:
    packed = compress(img, "zstd", mode=0o644)
    assert packed is not None and packed.stat().st_mode & 0o777 == 0o644


def test_compress_none_writes_nothing(img: Path) -> None:
    assert compress(img, Compression.none) is None
    assert compress(img, "none") is None
    assert sorted(p.name for p in img.parent.iterdir()) == ["host.img"]


def test_compress_unknown_method(img: Path) -> None:
    with pytest.raises(BuildError) as err:
        compress(img, "gzip")
    assert str(err.value) == "compression 'gzip' is not known (known: none, zstd, xz)"


def test_compress_failure_leaves_no_file(img: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(argv: list[str | os.PathLike[str]], **kwargs: object) -> None:
        Path(os.fspath(argv[-2])).write_bytes(b"half a stream")  # zstd's -o target
        raise BuildError("zstd failed (exit 1): No space left on device")

    monkeypatch.setattr(outputs, "run", failing_run)
    with pytest.raises(BuildError) as err:
        compress(img, "zstd")
    assert str(err.value) == "zstd failed (exit 1): No space left on device"
    assert sorted(p.name for p in img.parent.iterdir()) == ["host.img"]


def test_bmap_failure_leaves_no_file(img: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(argv: list[str | os.PathLike[str]], **kwargs: object) -> None:
        Path(os.fspath(argv[argv.index("-o") + 1])).write_text("<?xml partial")
        raise BuildError("bmaptool create failed (exit 1): interrupted")

    monkeypatch.setattr(outputs, "run", failing_run)
    with pytest.raises(BuildError) as err:
        write_bmap(img)
    assert str(err.value) == "bmaptool create failed (exit 1): interrupted"
    assert sorted(p.name for p in img.parent.iterdir()) == ["host.img"]


def test_checksum_of_a_missing_image(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as err:
        write_sha256(tmp_path / "nope.img")
    assert str(err.value) == f"{tmp_path}/nope.img: image not found; cannot write its checksum"
    assert list(tmp_path.iterdir()) == []


def test_manifest_is_sorted_indented_json(tmp_path: Path) -> None:
    path = tmp_path / "out/manifest.json"
    data = {
        "host": "compute-01",
        "layers": [{"name": "base", "hash": "ab"}],
        "secrets": ["ssh_host_ed25519_key"],
        "base": {"sha256": "cd"},
    }
    write_manifest(path, data)
    text = path.read_text()
    assert text.startswith('{\n  "base": {\n    "sha256": "cd"\n  },\n  "host": "compute-01",')
    assert text.endswith("}\n")
    assert json.loads(text)["layers"] == [{"hash": "ab", "name": "base"}]
    assert path.stat().st_mode & 0o777 == 0o644


def test_manifest_with_unserialisable_data_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(BuildError) as err:
        write_manifest(path, {"when": object})
    assert str(err.value) == (
        f"{path}: manifest data is not JSON: Object of type type is not JSON serializable"
    )
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_image_mode() -> None:
    assert image_mode(has_secrets=True) == 0o600
    assert image_mode(has_secrets=False) == 0o644


def test_side_files_are_as_private_as_their_image(img: Path) -> None:
    os.chmod(img, 0o600)
    write_sha256(img)
    assert img.with_name(img.name + ".sha256").stat().st_mode & 0o777 == 0o600
    os.chmod(img, 0o644)
    write_sha256(img)
    assert img.with_name(img.name + ".sha256").stat().st_mode & 0o777 == 0o644
