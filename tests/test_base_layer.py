"""The base layer's hook scripts, run on the host against temporary files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HOOKS = Path(__file__).resolve().parent.parent / "layers/base/hooks.d"

STRETCH_SSHD = "# OpenSSH 7.4 as Raspbian stretch ships it\nPort 22\nUsePAM yes\n"
BOOKWORM_SSHD = "Include /etc/ssh/sshd_config.d/*.conf\n\nKbdInteractiveAuthentication no\n"


def run_include_hook(conf: Path) -> None:
    env = {"PATH": os.environ["PATH"], "SSHD_CONFIG": str(conf)}
    subprocess.run(["sh", str(HOOKS / "15-sshd-include.sh")], env=env, check=True, timeout=30)


def test_sshd_include_is_put_first_where_the_config_lacks_it(tmp_path: Path) -> None:
    conf = tmp_path / "ssh/sshd_config"
    conf.parent.mkdir()
    conf.write_text(STRETCH_SSHD)
    run_include_hook(conf)
    lines = conf.read_text().splitlines()
    assert lines[1] == "Include /etc/ssh/sshd_config.d/*.conf"   # before any other keyword
    assert conf.read_text().endswith(STRETCH_SSHD)
    assert (tmp_path / "ssh/sshd_config.d").is_dir()
    assert conf.stat().st_mode & 0o777 == 0o644
    once = conf.read_text()
    run_include_hook(conf)
    assert conf.read_text() == once                               # idempotent


def test_sshd_config_with_include_is_left_alone(tmp_path: Path) -> None:
    conf = tmp_path / "sshd_config"
    conf.write_text(BOOKWORM_SSHD)
    run_include_hook(conf)
    assert conf.read_text() == BOOKWORM_SSHD


def test_no_sshd_no_change(tmp_path: Path) -> None:
    run_include_hook(tmp_path / "missing/sshd_config")
    assert not (tmp_path / "missing").exists()
