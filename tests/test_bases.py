"""The base catalog: trixie by default, cluster.base and host overrides, support
dates and the once-per-build notice, per-suite package lists."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import pytest

from builder.inventory.bases import CATALOG, support_notices, support_summary
from builder.inventory.config import load_inventory
from builder.progress import Meter, Progress
from tests.conftest import write
from tests.test_config import run_cli

REPO = Path(__file__).resolve().parent.parent
DAY = datetime.date(2026, 12, 2)


def _drop_base(project: Path, host: str) -> None:
    f = project / f"profiles/{host}.yaml"
    f.write_text(f.read_text().replace("base: debian-bookworm\n", ""))


def test_trixie_and_bookworm_per_pi_family() -> None:
    for name, suite in (("debian-trixie", "trixie"), ("debian-bookworm", "bookworm")):
        base = CATALOG[name]
        assert base.suite == suite
        assert base.arches() == ("arm64", "armel", "armhf")


def test_cluster_base_defaults_to_trixie_and_a_host_file_overrides(mini: Path) -> None:
    _drop_base(mini, "node-01")
    inv = load_inventory(mini)
    assert inv.cluster.base == "debian-trixie"
    assert inv.profile("node-01").base.name == "debian-trixie"
    assert inv.profile("node-02").base.name == "debian-bookworm"   # its file names it
    cluster = mini / "profiles/cluster.yaml"
    cluster.write_text(cluster.read_text().replace("  domain: mini.lan\n",
                                                   "  domain: mini.lan\n  base: debian-bookworm\n"))
    assert load_inventory(mini).profile("node-01").base.name == "debian-bookworm"


def test_unknown_cluster_base_is_one_line(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = mini / "profiles/cluster.yaml"
    cluster.write_text(cluster.read_text().replace("  domain: mini.lan\n",
                                                   "  domain: mini.lan\n  base: debian-trixy\n"))
    code, out, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, out) == (2, "")
    assert err == ("pibake: error: profiles/cluster.yaml: cluster.base: no base named "
                   "'debian-trixy' (known: debian-bookworm, debian-trixie, raspbian-stretch-lite, "
                   "raspios-bookworm-lite-arm64); did you mean 'debian-trixie'?\n")


def test_support_dates_per_arch() -> None:
    assert support_summary(CATALOG["debian-bookworm"], DAY) == (
        "arm64 until 2028-06-30, armel ended 2026-06-10, armhf until 2028-06-30")
    assert support_summary(CATALOG["debian-trixie"], DAY) == (
        "arm64 until 2028-08-09, armel until 2028-08-09, armhf until 2028-08-09")
    assert support_summary(CATALOG["raspbian-stretch-lite"], DAY) == "armhf ended 2022-06-30"


def test_one_notice_per_unsupported_base_and_arch(mini: Path) -> None:
    cluster = mini / "profiles/cluster.yaml"
    cluster.write_text(cluster.read_text().replace("model: pi3", "model: pi1"))
    inv = load_inventory(mini)
    assert support_notices(inv, ["node-01", "node-02"], DAY) == [
        "debian-bookworm on armel has had no security support since 2026-06-10; images built "
        "from it get no security updates (see pibake bases): node-01, node-02"]
    _drop_base(mini, "node-01")
    _drop_base(mini, "node-02")
    assert support_notices(load_inventory(mini), ["node-01", "node-02"], DAY) == []


def test_shipped_inventory_pins_only_the_pi1_hosts_to_bookworm() -> None:
    inv = load_inventory(REPO)
    assert inv.cluster.base == "debian-trixie"
    pinned = {h for h, p in inv.profiles.items() if p.base.name != "debian-trixie"}
    assert pinned == {"lanmain-01", "lanmain-02"}
    assert all(inv.node(h).model == "pi1" for h in pinned)


def test_bases_command_shows_support(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "-C", str(REPO), "bases")
    assert code == 0
    lines = out.splitlines()
    trixie = next(i for i, ln in enumerate(lines) if ln.startswith("debian-trixie "))
    assert lines[trixie].endswith("(cluster.base)")
    assert lines[trixie + 1].split() == ["security:", "arm64", "until", "2028-08-09,", "armel",
                                         "until", "2028-08-09,", "armhf", "until", "2028-08-09"]


def test_packages_per_suite(mini: Path) -> None:
    write(mini / "layers/web/packages", "docker.io\ndocker-cli\nbind9-dnsutils\n")
    write(mini / "layers/web/packages.bookworm", "docker.io\nbind9-dnsutils\n")
    layer = load_inventory(mini).layers["web"]
    assert layer.packages_for("trixie") == ("docker.io", "docker-cli", "bind9-dnsutils")
    assert layer.packages_for("bookworm") == ("docker.io", "bind9-dnsutils")


def test_progress_lines_without_a_terminal() -> None:
    out = io.StringIO()
    times: dict[str, float] = {}
    meter = Meter(Progress("bootstrap trixie/arm64", 3, interval=3600, stream=out, tty=False),
                  on_phase=lambda p, t: times.__setitem__(p, t))
    for line in ("Get:1 http://x/debian trixie/main arm64 libc6 arm64 2.41-12 [2,859 kB]",
                 "Get:2 http://x/debian trixie/main arm64 apt arm64 3.0.3 [1,496 kB]", "noise",
                 "I: extracting archives...", "Unpacking libc6:arm64 (2.41-12) ...",
                 "Unpacking libc6:arm64 (2.41-12) over (2.41-12) ...",
                 "Setting up libc6:arm64 (2.41-12) ...", "Setting up apt (3.0.3) ..."):
        meter.feed(line)
    meter.close()
    lines = out.getvalue().splitlines()
    # one line per phase change; the count of the phase's first item
    assert [ln.split(",")[0] for ln in lines] == [
        "    bootstrap trixie/arm64: download 1/3", "    bootstrap trixie/arm64: extract",
        "    bootstrap trixie/arm64: unpack 1/3", "    bootstrap trixie/arm64: configure 1/3"]
    assert meter.progress.text().startswith("    bootstrap trixie/arm64: configure 2/3, 0m")
    assert meter.seen["download"] == {"libc6", "apt"}
    assert meter.seen["unpack"] == {"libc6"}          # unpacked twice, counted once
    assert set(times) == {"start", "download", "extract", "unpack", "configure"}
    assert set(dict(meter.slowest())) == {"libc6", "apt"}   # what was configured, timed


def test_progress_is_silent_when_quiet() -> None:
    from builder import log

    out = io.StringIO()
    log.set_quiet(True)
    try:
        Progress("x", 3, stream=out, tty=False).update(phase="download", done=1)
    finally:
        log.set_quiet(False)
    assert out.getvalue() == ""
