"""Helpers for the boot tier: a project whose admin key the test owns, SSH into
a kept VM, and a clean power-off."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from builder.vm.boot import ssh_argv
from tests.conftest import make_mini_project


def keyed_project(root: Path, model: str = "pi3") -> tuple[Path, Path]:
    """The mini project with a fresh SSH key as the admin's: (project, private key)."""
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    project = make_mini_project(root / "proj", model=model)
    cluster = project / "profiles/cluster.yaml"
    pub = key.with_suffix(".pub").read_text().strip()
    cluster.write_text(cluster.read_text().replace("ssh_authorized_keys: []",
                                                   f"ssh_authorized_keys: ['{pub}']"))
    return project, key


def build(project: Path, *hosts: str, strict: bool = False) -> None:
    for host in hosts:
        done = subprocess.run([sys.executable, "-m", "builder", "-C", str(project), "build",
                               *(["--strict"] if strict else []), host],
                              capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, done.stderr


def known_hosts(key: Path) -> Path:
    """The store's @cert-authority line: keyed_project's store is proj/secrets
    beside the key (the first build creates it)."""
    return key.parent / "proj/secrets/known_hosts"


def ssh(port: int, key: Path, command: str, host: str = "node-01") -> str:
    """Run ``command`` on a booted VM as admin; its host key must carry a
    certificate for ``host`` from the store's host CA (strict checking)."""
    proc = subprocess.run(ssh_argv(port, "admin", key, command, host=host,
                                   known_hosts=known_hosts(key)),
                          capture_output=True, text=True, timeout=120)
    return proc.stdout.strip()


def stop(pid: int | None, port: int, key: Path, host: str = "node-01") -> None:
    """Power a kept VM off from inside (so its disk is consistent) and reap it."""
    if pid is None:
        return
    ssh(port, key, "sudo systemctl poweroff", host)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(1)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
