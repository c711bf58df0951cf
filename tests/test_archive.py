"""The archive preflight: a local HTTP archive on loopback that lacks one .deb
stops a bootstrap in seconds with one line, before mmdebstrap, and leaves
nothing in the cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.emulate import bootstrap
from builder.emulate.archive import (
    check_role_packages,
    parse_print_uris,
    require_served,
    scratch_apt,
)
from builder.emulate.bootstrap import BASE_PACKAGES, spec_for
from builder.errors import PreflightError
from builder.inventory.bases import CATALOG
from builder.pipeline import bootstrap_base

ESSENTIAL = ("base-files", "dpkg", "libc6")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _write_archive(root: Path, suite: str, arch: str, names: list[str]) -> None:
    stanzas = []
    for name in names:
        rel = f"pool/main/{name[0]}/{name}/{name}_1_{arch}.deb"
        data = f"not really a deb: {name}\n".encode()
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        essential = "Essential: yes\n" if name in ESSENTIAL else ""
        stanzas.append(f"Package: {name}\nVersion: 1\nArchitecture: {arch}\n{essential}"
                       f"Priority: optional\nFilename: {rel}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    packages = "\n".join(stanzas).encode()
    d = root / "dists" / suite
    (d / f"main/binary-{arch}").mkdir(parents=True)
    (d / f"main/binary-{arch}/Packages").write_bytes(packages)
    (d / "Release").write_text(
        f"Suite: {suite}\nCodename: {suite}\nArchitectures: {arch}\nComponents: main\n"
        "Date: Tue, 24 Nov 2026 00:00:00 UTC\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} main/binary-{arch}/Packages\n")


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """trixie/arm64 with every package a base needs; the tests delete files."""
    root = tmp_path / "www"
    names = sorted({*ESSENTIAL, "apt", *BASE_PACKAGES, "linux-image-arm64", "curl"})
    _write_archive(root, "trixie", "arm64", names)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        thread.join()


def _sources(url: str) -> str:
    return f"Types: deb\nURIs: {url}\nSuites: trixie\nComponents: main\nTrusted: yes\n"


def _deb(root: Path, name: str) -> Path:
    return root / f"pool/main/{name[0]}/{name}/{name}_1_arm64.deb"


def test_print_uris_lines_are_read() -> None:
    out = ("'http://a/pool/main/l/libc6/libc6_2.41-12_arm64.deb' libc6_2.41-12_arm64.deb "
           "2859360 SHA256:ab\n'http://a/pool/main/a/apt/apt_3.0.3_arm64.deb' "
           "apt_3.0.3_arm64.deb 1496316 SHA256:cd\nnoise\n")
    debs = parse_print_uris(out)
    assert [(d.package, d.size) for d in debs] == [("libc6", 2859360), ("apt", 1496316)]


def test_every_deb_served_passes(archive: tuple[str, Path]) -> None:
    url, _ = archive
    with scratch_apt("arm64", sources_text=_sources(url)) as apt:
        assert apt.update() == {}
        assert apt.essential() == ["apt", "base-files", "dpkg", "libc6"]
        assert require_served(apt, ["apt", "curl"], suite="trixie", what="x", fix="y") == 2


def test_a_missing_deb_is_one_line_naming_suite_arch_package_and_fix(
        archive: tuple[str, Path], tmp_path: Path) -> None:
    url, root = archive
    _deb(root, "libc6").unlink()
    cache = tmp_path / "apt-cache"
    cache.mkdir()
    # a .deb the shared apt cache holds need not be served
    _deb(root, "udev").rename(cache / "udev_1_arm64.deb")
    spec = spec_for("pi3", "trixie")
    start = time.monotonic()
    with pytest.raises(PreflightError) as err:
        bootstrap.usable_sources(spec, _sources(url), cache)
    assert time.monotonic() - start < 30
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("trixie/arm64: the archive does not serve 1 of the ")
    assert "(libc6: 404 File not found)" in msg
    assert msg.endswith("or use another base for this host (e.g. base: debian-bookworm)")


def test_bootstrap_stops_before_mmdebstrap_and_keeps_nothing(
        archive: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = archive
    _deb(root, "openssh-server").unlink()
    monkeypatch.setenv("PIBAKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bootstrap, "render_sources", lambda spec, *a, **k: _sources(url))
    monkeypatch.setattr(bootstrap, "preflight_emulation", lambda arch: None)
    monkeypatch.setattr("builder.emulate.chroot.preflight_emulation", lambda arch: None)

    def no_mmdebstrap(*args: object, **kw: object) -> None:
        raise AssertionError("mmdebstrap ran although the archive lacks a .deb")

    monkeypatch.setattr(bootstrap, "_run_with_progress", no_mmdebstrap)
    with pytest.raises(PreflightError) as err:
        bootstrap_base(CATALOG["debian-trixie"], "pi3", "arm64", None)
    assert "openssh-server" in str(err.value)
    rootfs = tmp_path / "cache/rootfs"
    assert not rootfs.exists() or list(rootfs.iterdir()) == []


def test_role_check_skips_what_the_base_has_and_names_the_missing(
        archive: tuple[str, Path], tmp_path: Path) -> None:
    url, root = archive
    tree = tmp_path / "tree"
    (tree / "etc/apt/sources.list.d").mkdir(parents=True)
    (tree / "etc/apt/sources.list.d/base.sources").write_text(_sources(url))
    (tree / "var/lib/dpkg").mkdir(parents=True)
    (tree / "var/lib/dpkg/status").write_text(
        "Package: curl\nStatus: install ok installed\nVersion: 1\nArchitecture: arm64\n\n")
    assert check_role_packages(tree, "trixie", "arm64", ["curl"]) == 0   # no apt run at all
    _deb(root, "sudo").unlink()
    with pytest.raises(PreflightError) as err:
        check_role_packages(tree, "trixie", "arm64", ["curl", "sudo"])
    assert str(err.value).startswith("trixie/arm64: the archive does not serve 1 of the 1 "
                                     ".debs the role's packages needs (sudo: 404")
