"""Every file pibake reads from the project (profiles, layer parts, templates,
hooks, first-boot steps, files/) that is unreadable, not UTF-8 where text is
expected, or not a regular file is one line naming it: exit 2, no traceback,
no hang on a fifo."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.errors import ConfigError
from builder.inventory.schema import read_source, read_source_bytes
from tests.test_config import run_cli

# Text files of the mini project, each read by a different part of the loader.
TEXT_FILES = [
    "profiles/cluster.yaml",
    "profiles/node-01.yaml",
    "layers/web/layer.yaml",
    "layers/web/defaults.yaml",
    "layers/web/templates/etc/web/page.txt.j2",
    "layers/web/hooks.d/10-web.sh",
    "layers/base/packages",
]


def _append_latin1(path: Path) -> int:
    """Append a line holding a Latin-1 byte; return that line's number."""
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"
    path.write_bytes(data + b"# caf\xe9\n")
    return data.count(b"\n") + 1


@pytest.mark.parametrize("rel", TEXT_FILES)
def test_not_utf8_names_file_and_line(mini: Path, capsys: pytest.CaptureFixture[str],
                                      rel: str) -> None:
    line = _append_latin1(mini / rel)
    code, out, err = run_cli(capsys, "-C", str(mini), "check", "--inventory-only")
    assert (code, out, err) == (
        2, "", f"pibake: error: {rel}:{line}: not UTF-8 text (byte 0xe9); save the file as UTF-8\n")


def _fifo(path: Path) -> str:
    path.unlink()
    os.mkfifo(path)
    return "a fifo, not a regular file; replace it with a file"


def _folder(path: Path) -> str:
    path.unlink()
    path.mkdir()
    return "a folder, not a regular file; replace it with a file"


def _dangling(path: Path) -> str:
    path.unlink()
    path.symlink_to("/nonexistent/pibake-test")
    return "broken symlink (-> /nonexistent/pibake-test); point it at an existing file or remove it"


@pytest.mark.parametrize("rel", ["profiles/cluster.yaml", "profiles/node-02.yaml",
                                 "layers/web/layer.yaml", "layers/web/defaults.yaml",
                                 "layers/base/packages"])
@pytest.mark.parametrize("spoil", [_fifo, _folder, _dangling], ids=["fifo", "folder", "dangling"])
def test_not_a_regular_file(mini: Path, capsys: pytest.CaptureFixture[str], rel: str,
                            spoil: Callable[[Path], str]) -> None:
    expected = spoil(mini / rel)
    code, out, err = run_cli(capsys, "-C", str(mini), "check", "--inventory-only")
    assert (code, out, err) == (2, "", f"pibake: error: {rel}: {expected}\n")


@pytest.mark.parametrize("rel", ["layers/web/files/etc/web/static.txt",
                                 "layers/web/templates/etc/web/page.txt.j2"])
def test_fifo_in_layer_tree(mini: Path, capsys: pytest.CaptureFixture[str], rel: str) -> None:
    _fifo(mini / rel)
    code, out, err = run_cli(capsys, "-C", str(mini), "check", "--inventory-only")
    assert (code, out) == (2, "")
    assert err.startswith(f"pibake: error: {rel}: not a regular file") and err.count("\n") == 1


def test_unreadable_file(mini: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads any mode, so the refusal comes from the reader itself."""
    target = mini / "layers/web/files/etc/web/static.txt"
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == target:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    code, out, err = run_cli(capsys, "-C", str(mini), "check", "--inventory-only")
    assert (code, out, err) == (
        2, "", "pibake: error: layers/web/files/etc/web/static.txt: cannot read: Permission "
               "denied; check its permissions (ls -l) and the disk\n")


def test_reader_returns_content(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_bytes("grüße\n".encode())
    assert read_source(f, "x.txt") == "grüße\n"
    assert read_source_bytes(f, "x.txt") == "grüße\n".encode()
    with pytest.raises(ConfigError, match=r"^y.txt: file not found$"):
        read_source(tmp_path / "y.txt", "y.txt")
