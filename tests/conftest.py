"""Shared fixtures: tiny project trees named for their purpose."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

MINI_CLUSTER = """\
cluster:
  name: mini
  domain: mini.lan
  admin:
    user: admin
    ssh_authorized_keys: []
networks:
  lan: {cidr: 192.168.77.0/24, gateway: 192.168.77.2, dns: [192.168.77.3]}
nodes:
  node-01: {model: pi3, network: lan, ip: 192.168.77.15}
  node-02: {model: pi3, network: lan, ip: 192.168.77.16}
"""

WEB_DEFAULTS = """\
# Greeting the web layer's page shows.
web_greeting: hello
web_port: 8080  # port the demo page listens on
"""


def write(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    if mode is not None:
        path.chmod(mode)
    return path


def copy_shipped(root: Path) -> Path:
    """A copy of the shipped reference cluster (profiles and layers) at ``root``."""
    shutil.copytree(REPO / "profiles", root / "profiles")
    shutil.copytree(REPO / "layers", root / "layers", symlinks=True)
    return root


def make_mini_project(root: Path, model: str = "pi3") -> Path:
    """Two nodes of ``model`` on QEMU's user-net addresses; the repo's base layer
    plus a small 'web' layer with a template, a file and a hook."""
    write(root / "profiles/cluster.yaml", MINI_CLUSTER.replace("model: pi3", f"model: {model}"))
    for host in ("node-01", "node-02"):
        write(root / f"profiles/{host}.yaml", "base: debian-bookworm\nlayers: [base, web]\n")
    shutil.copytree(REPO / "layers/base", root / "layers/base", symlinks=True)
    web = root / "layers/web"
    write(web / "layer.yaml", "description: demo role\nrequires: [base]\nhook_vars: [web_port]\n")
    write(web / "defaults.yaml", WEB_DEFAULTS)
    write(web / "templates/etc/web/page.txt.j2",
          "# {{ pibake_managed }}\n{{ web_greeting }} from {{ host.name }} "
          "({{ groups.web | map(attribute='name') | join(',') }})\n")
    write(web / "files/etc/web/static.txt", "static\n")
    write(web / "hooks.d/10-web.sh", "#!/bin/sh\nset -eu\nmkdir -p /srv/web\n"
          "echo \"$WEB_PORT\" > /srv/web/port\n", 0o755)
    return root


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    return make_mini_project(tmp_path / "proj")


@pytest.fixture
def edit() -> Callable[..., Path]:
    return write


@pytest.fixture(autouse=True)
def project_secrets_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test project keeps its secrets store beside its profiles/, whatever
    the caller's $PIBAKE_SECRETS says."""
    monkeypatch.delenv("PIBAKE_SECRETS", raising=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The netns tier (root, ~1 min) runs when asked for (-m netns, make test-netns) or
    with every tier (make test); a fast-tier selection such as -m "not integration
    and not boot" skips it with a pointer."""
    expr = config.getoption("markexpr") or ""
    if not expr or "netns" in expr:
        return
    skip = pytest.mark.skip(reason="netns tier: run make test-netns (or -m netns)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
