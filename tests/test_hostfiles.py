"""Host files from built-in templates; owners: beside modes: in layer.yaml."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from builder.content.hostlayer import HOSTFILES_DIR, RoleFacts, host_delta, standin_facts
from builder.emulate.role import apply_owners
from builder.errors import BuildError, ConfigError
from builder.inventory.config import load_inventory
from builder.plan import plan_hosts

PASSWD = "root:x:0:0::/root:/bin/sh\nadmin:x:1000:1000::/home/admin:/bin/bash\n" \
         "www-data:x:33:33::/var/www:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nadm:x:4:\nwww-data:x:33:\nadmin:x:1000:\n"


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBAKE_CACHE", str(tmp_path / "cache"))


def owned_project(mini: Path, edit: Callable[..., Path], owners: str) -> Path:
    edit(mini / "layers/web/layer.yaml",
         f"description: demo role\nrequires: [base]\nhook_vars: [web_port]\nowners:\n{owners}")
    return mini


def test_every_host_file_comes_from_a_template(mini: Path) -> None:
    plan = plan_hosts(load_inventory(mini), ("node-01",))[0]
    delta = host_delta(plan, standin_facts(plan))
    files = {e.path: e.data.decode() for e in delta.root + delta.boot if e.kind == "file"}
    assert files["/etc/hostname"] == "node-01\n"
    assert files["/etc/fstab"].splitlines()[1].startswith("PARTUUID=")
    assert files["/etc/hosts"].endswith("192.168.77.16\tnode-02.mini.lan\tnode-02\n")
    assert files["/cmdline.txt"].startswith("console=tty0 console=ttyS1,115200 root=PARTUUID=")
    assert files["/etc/pibake/firstboot.env"].splitlines()[1] == "PIBAKE_HOST=node-01"
    assert sorted(p.name for p in HOSTFILES_DIR.glob("*.j2")) == [
        "10-pibake-lan.network.j2", "cmdline.txt.j2", "dhcpcd.block.j2", "firstboot.env.j2",
        "fstab.j2", "hostname.j2", "hosts.j2", "machine-id.j2", "pibake-lan.nmconnection.j2",
        "pibake-package-secrets.j2", "pibake-package-secrets.service.j2", "raspi-firmware.j2",
        "resolv.conf.j2"]


@pytest.mark.parametrize("base", ["debian-trixie", "debian-bookworm"])
def test_raspi_firmware_regenerates_the_hosts_own_cmdline(mini: Path, edit: Callable[..., Path],
                                                          base: str) -> None:
    edit(mini / "profiles/node-01.yaml", f"base: {base}\nlayers: [base, web]\n")
    plan = plan_hosts(load_inventory(mini), ("node-01",))[0]
    delta = host_delta(plan, standin_facts(plan))
    files = {e.path: e.data.decode() for e in delta.root + delta.boot if e.kind == "file"}
    root_part = files["/etc/fstab"].splitlines()[1].split()[0]
    defaults = files["/etc/default/raspi-firmware"]
    assert f"ROOTPART={root_part}\n" in defaults
    assert f"root={root_part} " in files["/cmdline.txt"]


def test_template_owners_resolve_in_the_role(mini: Path, edit: Callable[..., Path]) -> None:
    owned_project(mini, edit, '  /etc/web/page.txt: "www-data:adm"\n')
    plan = plan_hosts(load_inventory(mini), ("node-01",))[0]
    facts = RoleFacts(passwd=PASSWD, cmdline="", dhcpcd_conf="", group=GROUP)
    page = next(e for e in host_delta(plan, facts).root if e.path == "/etc/web/page.txt")
    assert (page.uid, page.gid) == (33, 4)


def test_template_owner_missing_from_the_role(mini: Path, edit: Callable[..., Path]) -> None:
    owned_project(mini, edit, '  /etc/web/page.txt: "nginx:nginx"\n')
    plan = plan_hosts(load_inventory(mini), ("node-01",))[0]   # planning cannot know yet
    facts = RoleFacts(passwd=PASSWD, cmdline="", dhcpcd_conf="", group=GROUP)
    with pytest.raises(BuildError) as err:
        host_delta(plan, facts)
    assert str(err.value) == ("layers/web/layer.yaml: owners./etc/web/page.txt: 'nginx:nginx' is "
                              "not an account of the image; create it in a hook or install the "
                              "package that does")


def test_file_owners_apply_after_the_layers_hooks(mini: Path, edit: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    owned_project(mini, edit, '  /etc/web/static.txt: "www-data:33"\n')
    layer = load_inventory(mini).layers["web"]
    tree = tmp_path / "tree"
    edit(tree / "etc/passwd", PASSWD)
    edit(tree / "etc/group", GROUP)
    edit(tree / "etc/web/static.txt", "static\n")
    apply_owners(layer, tree)
    st = os.lstat(tree / "etc/web/static.txt")
    assert (st.st_uid, st.st_gid) == (33, 33)
    broken = replace(layer, files=tuple(replace(i, owner="nobody9:adm") for i in layer.files
                                        if i.owner))
    with pytest.raises(BuildError) as err:
        apply_owners(broken, tree)
    assert str(err.value).startswith("layers/web/layer.yaml: owners./etc/web/static.txt: "
                                     "'nobody9:adm' is not an account of the image")


@pytest.mark.parametrize("owners, expected", [
    ('  /etc/web/static.txt: "www-data"\n',
     "layers/web/layer.yaml: owners./etc/web/static.txt: 'www-data' is not an owner; write "
     "user:group, e.g. \"root:adm\" or \"1000:1000\""),
    ('  /etc/web/statc.txt: "root:adm"\n',
     "layers/web/layer.yaml: owners./etc/web/statc.txt: no such file in files/ or templates/ of "
     "this layer; did you mean '/etc/web/static.txt'?"),
])
def test_bad_owners_one_line(mini: Path, edit: Callable[..., Path], owners: str,
                             expected: str) -> None:
    owned_project(mini, edit, owners)
    with pytest.raises(ConfigError) as err:
        load_inventory(mini)
    assert str(err.value) == expected
