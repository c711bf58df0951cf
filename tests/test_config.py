"""Inventory, layer and template errors: exact one-line messages, exit 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from builder.cli import main
from builder.content.hostlayer import machine_id
from builder.inventory.config import load_inventory
from tests.conftest import write


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["pibake", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


def test_check_passes_on_mini_project(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(mini), "check", "--inventory-only")
    assert (code, out, err) == (0, "ok: 2 hosts, 2 layers, 10 templates rendered, 2 configs "
                                "passed their daemon's checker\n", "")


def test_shipped_inventory_checks(capsys: pytest.CaptureFixture[str]) -> None:
    repo = Path(__file__).resolve().parent.parent
    code, out, err = run_cli(capsys, "-C", str(repo), "check", "--inventory-only")
    assert (code, err) == (0, "")
    assert out.startswith("ok: 8 hosts, 7 layers, ")


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture drifted: {old!r} not in {path}"
    path.write_text(text.replace(old, new))


CASES: list[tuple[str, str, str, str, str]] = [
    # (id, file, old, new, expected error line)
    ("unknown-layer", "profiles/node-01.yaml", "[base, web]", "[base, wbe]",
     "profiles/node-01.yaml: layers[1]: no layer named 'wbe' (known: base, web); "
     "did you mean 'web'?"),
    ("unknown-key-profile", "profiles/node-01.yaml", "layers:", "layer:",
     "profiles/node-01.yaml: layer: unknown key (known: base, layers, vars); "
     "did you mean 'layers'?"),
    ("unknown-key-cluster", "profiles/cluster.yaml", "  domain:", "  domian:",
     "profiles/cluster.yaml: cluster.domian: unknown key (known: admin, base, domain, mirror, "
     "name, secrets_dir, timezone); did you mean 'domain'?"),
    ("duplicate-ip", "profiles/cluster.yaml", "ip: 192.168.77.16", "ip: 192.168.77.15",
     "profiles/cluster.yaml: nodes.node-02.ip: 192.168.77.15 is already the address of node-01; "
     "every node needs its own"),
    ("bad-ip", "profiles/cluster.yaml", "ip: 192.168.77.16", "ip: 192.168.77.300",
     "profiles/cluster.yaml: nodes.node-02.ip: '192.168.77.300' is not an IPv4 address; "
     "write it like 10.20.0.11"),
    ("ip-outside", "profiles/cluster.yaml", "ip: 192.168.77.16", "ip: 192.168.78.16",
     "profiles/cluster.yaml: nodes.node-02.ip: 192.168.78.16 is not a host address of network lan "
     "(192.168.77.0/24); pick one inside it"),
    ("bad-cidr", "profiles/cluster.yaml", "cidr: 192.168.77.0/24", "cidr: 192.168.77.1/24",
     "profiles/cluster.yaml: networks.lan.cidr: '192.168.77.1/24' has host bits set; "
     "did you mean '192.168.77.0/24'?"),
    ("bad-hostname", "profiles/cluster.yaml", "node-02: {", "Node_02: {",
     "profiles/cluster.yaml: nodes.Node_02: 'Node_02' is not a valid hostname; use lower-case "
     "letters, digits and '-', at most 63 characters, not starting or ending with '-'"),
    ("unknown-model", "profiles/cluster.yaml", "node-02: {model: pi3", "node-02: {model: pi5",
     "profiles/cluster.yaml: nodes.node-02.model: unknown model 'pi5' (known: pi0, pi1, pi2, "
     "pi3, pi4); did you mean 'pi4'?"),
    ("undeclared-var", "profiles/node-01.yaml", "layers: [base, web]\n",
     "layers: [base, web]\nvars:\n  web_greting: hi\n",
     "profiles/node-01.yaml: vars.web_greting: no selected layer declares this variable; "
     "did you mean 'web_greeting'?"),
    ("var-of-unselected-layer", "profiles/node-01.yaml", "layers: [base, web]\n",
     "layers: [base]\nvars:\n  web_greeting: hi\n",
     "profiles/node-01.yaml: vars.web_greeting: no selected layer declares this variable; "
     "it belongs to layer 'web', which this profile does not select"),
    ("yaml-syntax", "profiles/node-01.yaml", "layers: [base, web]", "layers: [base, web",
     "profiles/node-01.yaml:3:1: YAML syntax error: expected ',' or ']', but got "
     "'<stream end>'; "
     "fix the indentation or quoting there"),
    ("unknown-base", "profiles/node-01.yaml", "base: debian-bookworm", "base: debian-bookwrom",
     "profiles/node-01.yaml: base: no base named 'debian-bookwrom' (known: debian-bookworm, "
     "debian-trixie, raspbian-stretch-lite, raspios-bookworm-lite-arm64); did you mean "
     "'debian-bookworm'?"),
    ("requires-order", "profiles/node-01.yaml", "[base, web]", "[web, base]",
     "profiles/node-01.yaml: layers[0]: 'web' requires 'base' before it; add it earlier in "
     "layers"),
    ("template-undefined", "layers/web/templates/etc/web/page.txt.j2", "{{ web_greeting }}",
     "{{ web_greting }}",
     "layers/web/templates/etc/web/page.txt.j2:2: undefined variable: 'web_greting' is "
     "undefined; declare it in layers/web/defaults.yaml or fix the name"),
    ("template-no-header", "layers/web/templates/etc/web/page.txt.j2", "# {{ pibake_managed }}",
     "#",
     "layers/web/templates/etc/web/page.txt.j2: rendered file has no 'managed by pibake' "
     "header; add a comment line with {{ pibake_managed }} at the top"),
    ("default-without-prefix", "layers/web/defaults.yaml", "web_port:", "port:",
     "layers/web/defaults.yaml: port: layer variables carry the layer's name as prefix; "
     "rename it to 'web_port'"),
    ("default-without-comment", "layers/web/defaults.yaml", "web_port: 8080  # port the demo "
     "page listens on", "web_port: 8080",
     "layers/web/defaults.yaml: web_port: every default needs a comment saying what it is "
     "(on its line or the line above)"),
    ("gateway-outside", "profiles/cluster.yaml", "gateway: 192.168.77.2", "gateway: 192.168.79.2",
     "profiles/cluster.yaml: networks.lan.gateway: 192.168.79.2 is outside 192.168.77.0/24; use an "
     "address in the network"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_clear_line(mini: Path, capsys: pytest.CaptureFixture[str],
                                  case: tuple[str, str, str, str, str]) -> None:
    _, file, old, new, expected = case
    _replace(mini / file, old, new)
    code, out, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, out, err) == (2, "", f"pibake: error: {expected}\n")


def test_hook_without_run_bit(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (mini / "layers/web/hooks.d/10-web.sh").chmod(0o644)
    code, _, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, err) == (2, "pibake: error: layers/web/hooks.d/10-web.sh: not executable; "
                              "run: chmod +x layers/web/hooks.d/10-web.sh\n")


def test_symlink_outside_layer(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink("/etc/passwd", mini / "layers/web/files/etc/web/passwd")
    code, _, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, err) == (2, "pibake: error: layers/web/files/etc/web/passwd: symlink points "
                              "outside the layer (-> /etc/passwd); copy the file into the layer, "
                              "or create the link in a hooks.d script\n")


def test_relative_symlink_escaping_layer(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.symlink("../../../../../profiles/cluster.yaml", mini / "layers/web/files/etc/web/c")
    code, _, err = run_cli(capsys, "-C", str(mini), "check")
    assert code == 2
    assert err.startswith("pibake: error: layers/web/files/etc/web/c: symlink points outside")


def test_unknown_profile(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(mini), "render", "node-1", "--to",
                             str(mini / "r"))
    assert (code, out) == (2, "")
    assert err == ("pibake: error: profiles/node-1.yaml: no such profile (known: node-01, "
                   "node-02); did you mean 'node-01'?\n")
    assert not (mini / "r").exists()


def test_profile_without_node(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(mini / "profiles/node-03.yaml", "base: debian-bookworm\nlayers: [base]\n")
    code, _, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, err) == (2, "pibake: error: profiles/node-03.yaml: host 'node-03' is not in "
                              "profiles/cluster.yaml nodes (known: node-01, node-02); add it "
                              "to nodes or remove the file\n")


def test_node_without_profile(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (mini / "profiles/node-02.yaml").unlink()
    code, _, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, err) == (2, "pibake: error: profiles/node-02.yaml: missing; every node in "
                              "profiles/cluster.yaml needs a profile (base, layers, vars)\n")


def test_arm64_base_refused_on_pi1(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _replace(mini / "profiles/cluster.yaml", "node-02: {model: pi3", "node-02: {model: pi1")
    _replace(mini / "profiles/node-02.yaml", "debian-bookworm", "raspios-bookworm-lite-arm64")
    code, _, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, err) == (2, "pibake: error: profiles/node-02.yaml: base: "
                              "raspios-bookworm-lite-arm64 (arm64) does not run on a pi1 "
                              "(profiles/cluster.yaml nodes.node-02.model); pick another base\n")


def test_vars_merge_order(mini: Path) -> None:
    _replace(mini / "profiles/cluster.yaml", "nodes:", "vars:\n  web_greeting: cluster\nnodes:")
    write(mini / "profiles/node-02.yaml",
          "base: debian-bookworm\nlayers: [base, web]\nvars:\n  web_greeting: host\n")
    inv = load_inventory(mini)
    assert inv.host_vars("node-01")["web_greeting"] == "cluster"
    assert inv.host_vars("node-02")["web_greeting"] == "host"
    assert inv.host_vars("node-01")["web_port"] == 8080


def test_render_writes_every_file(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = mini / "review"
    code, out, err = run_cli(capsys, "-C", str(mini), "render", "node-02", "--to", str(dest))
    assert (code, err) == (0, "")
    page = (dest / "etc/web/page.txt").read_text()
    assert page.splitlines()[1] == "hello from node-02 (node-01,node-02)"
    assert (dest / "etc/web/static.txt").read_text() == "static\n"
    assert (dest / "etc/hostname").read_text() == "node-02\n"
    assert "192.168.77.15\tnode-01.mini.lan\tnode-01" in (dest / "etc/hosts").read_text()
    cmdline = (dest / "boot/firmware/cmdline.txt").read_text()
    assert "root=PARTUUID=" in cmdline and "console=ttyS1,115200" in cmdline
    fstab = (dest / "etc/fstab").read_text()
    root_id = cmdline.split("root=PARTUUID=")[1].split()[0]
    assert f"PARTUUID={root_id}\t/\text4" in fstab
    # the boot partition is mounted on first use: booting never waits for it
    assert "\t/boot/firmware\tvfat\tdefaults,x-systemd.automount\t0\t2\n" in fstab
    assert (dest / "etc/machine-id").read_text() == machine_id("mini", "node-02") + "\n"
    units = dest / "etc/systemd/system"
    assert (units / "systemd-firstboot.service").readlink() == Path("/dev/null")
    assert (units / "multi-user.target.wants/pibake-ssh-host-keys.service").is_symlink()
    assert (units / "sysinit.target.wants/systemd-network-generator.service").readlink() == Path(
        "/lib/systemd/system/systemd-network-generator.service")
    sshd = (dest / "etc/ssh/sshd_config.d/10-pibake.conf").read_text()
    assert sshd.endswith("HostKey /etc/ssh/ssh_host_ed25519_key\n"
                         "HostKey /etc/ssh/ssh_host_ecdsa_key\n")
    assert (dest / "etc/sudoers.d/10-pibake-admin").stat().st_mode & 0o777 == 0o440
    assert (dest / "usr/local/sbin/pibake-firstboot").stat().st_mode & 0o111
    assert out == f"node-02: 36 files written to {dest}\n"


def test_render_refuses_non_empty_folder(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = mini / "review"
    write(dest / "keep.txt", "mine\n")
    code, _, err = run_cli(capsys, "-C", str(mini), "render", "node-02", "--to", str(dest))
    assert (code, err) == (2, f"pibake: error: {dest}: folder is not empty; name a new or "
                              "empty folder\n")


def test_machine_ids_are_fixed_per_host_and_shaped_like_systemds() -> None:
    one = machine_id("rpi-cluster", "compute-01")
    assert one == machine_id("rpi-cluster", "compute-01")
    ids = {machine_id(c, h) for c in ("rpi-cluster", "other") for h in ("compute-01", "compute-02")}
    assert len(ids) == 4
    assert len(one) == 32 and int(one, 16) and one == one.lower()
    assert one[12] == "4" and one[16] in "89ab"                    # a v4 UUID's bits


def test_boot_lan_needs_virt(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "-C", str(mini), "boot", "node-01", "--machine", "raspi3b",
                           "--lan", "41000")
    assert (code, err) == (6, "pibake: error: --lan 41000: the raspi3b model has one USB NIC on "
                              "QEMU's user network; use --machine virt to join a LAN\n")


@pytest.mark.parametrize(
    ("where", "text", "origin", "shown"),
    [
        ("profiles/node-01.yaml",
         "base: debian-bookworm\nlayers: [base, web]\n"
         "vars:\n  base_ssh_host_key_types: [ed25519, dsa]\n",
         "profiles/node-01.yaml: vars.base_ssh_host_key_types", "['ed25519', 'dsa']"),
        ("profiles/cluster.yaml", None,
         "profiles/cluster.yaml: vars.base_ssh_host_key_types", "'ed25519'"),
    ],
)
def test_bad_host_key_types_stop_the_build_naming_where_they_are_set(
        mini: Path, capsys: pytest.CaptureFixture[str], where: str, text: str | None,
        origin: str, shown: str) -> None:
    path = mini / where
    path.write_text(text if text is not None
                    else path.read_text() + "vars:\n  base_ssh_host_key_types: ed25519\n")
    code, _, err = run_cli(capsys, "-C", str(mini), "build", "node-01")
    assert (code, err) == (2, f"pibake: error: {origin}: {shown} is not a list of SSH host key "
                              "types; use a list of ed25519, ecdsa, rsa, e.g. [ed25519, ecdsa]\n")
    assert not (mini / "output").exists()


def test_var_origin_falls_back_to_the_layer_default(mini: Path) -> None:
    inv = load_inventory(mini)
    assert inv.var_origin("node-01", "base_ssh_host_key_types") == (
        "layers/base/defaults.yaml: base_ssh_host_key_types")
