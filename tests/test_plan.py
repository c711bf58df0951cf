"""The plan: every host checked before any slow step; what enters the role key."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from builder import plan as plan_mod
from builder.errors import ConfigError
from builder.inventory.config import load_inventory
from builder.plan import plan_hosts
from tests.conftest import write
from tests.test_config import run_cli


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PIBAKE_CACHE", str(cache))
    return cache


def role_key(project: Path, host: str = "node-01") -> str:
    return plan_hosts(load_inventory(project), (host,))[0].role_key


def test_plan_holds_what_a_build_needs(mini: Path) -> None:
    p = plan_hosts(load_inventory(mini), ("node-02",))[0]
    assert (p.host, p.layer_names, p.arch, str(p.node.ip)) == \
        ("node-02", ("base", "web"), "arm64", "192.168.77.16")
    assert [r.dest for r in p.rendered if r.layer == "web"] == ["/etc/web/page.txt"]
    assert p.hook_envs["web"]["WEB_PORT"] == "8080"
    assert "WEB_GREETING" not in p.hook_envs["web"]
    assert p.hook_envs["base"]["BASE_ADMIN_SHELL"] == "/bin/bash"
    assert [s.name for s in p.steps] == sorted(s.name for s in p.steps)
    assert (p.base_cached, p.role_cached) == (False, False)


def test_two_hosts_of_one_role_share_the_key(mini: Path) -> None:
    assert role_key(mini, "node-01") == role_key(mini, "node-02")


ROLE_INPUTS: list[tuple[str, str, str]] = [
    ("file", "layers/web/files/etc/web/static.txt", "static, changed\n"),
    ("packages", "layers/web/packages", "curl\n"),
    ("packages-suite", "layers/web/packages.bookworm", "wget\n"),
    ("hook", "layers/web/hooks.d/10-web.sh",
     "#!/bin/sh\nset -eu\nmkdir -p /srv/www\necho \"$WEB_PORT\" > /srv/www/port\n"),
    ("new-hook", "layers/web/hooks.d/20-more.sh", "#!/bin/sh\ntrue\n"),
]


@pytest.mark.parametrize("case", ROLE_INPUTS, ids=[c[0] for c in ROLE_INPUTS])
def test_each_role_input_changes_the_key(mini: Path, case: tuple[str, str, str]) -> None:
    before = role_key(mini)
    _, rel, text = case
    write(mini / rel, text, 0o755 if "hooks.d" in rel else None)
    assert role_key(mini) != before


def test_declared_hook_var_changes_the_key(mini: Path) -> None:
    before = role_key(mini)
    write(mini / "profiles/node-01.yaml",
          "base: debian-bookworm\nlayers: [base, web]\nvars:\n  web_port: 9090\n")
    assert role_key(mini) != before
    assert role_key(mini, "node-02") == before     # node-02 keeps the shared role


def test_base_changes_the_key(mini: Path) -> None:
    write(mini / "profiles/cluster.yaml",
          (mini / "profiles/cluster.yaml").read_text().replace(
              "node-01: {model: pi3", "node-01: {model: pi2"))
    assert role_key(mini, "node-01") != role_key(mini, "node-02")


def test_role_code_changes_the_key(mini: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    before = role_key(mini)
    code = tmp_path / "role.py"
    code.write_text(plan_mod.ROLE_CODE[0].read_text() + "\n# changed\n")
    monkeypatch.setattr(plan_mod, "ROLE_CODE", (code, *plan_mod.ROLE_CODE[1:]))
    assert role_key(mini) != before


TEMPLATE_ONLY: list[tuple[str, str, str]] = [
    ("template", "layers/web/templates/etc/web/page.txt.j2",
     "# {{ pibake_managed }}\nhi {{ web_greeting }}\n"),
    ("new-template", "layers/web/templates/etc/web/more.txt.j2", "# {{ pibake_managed }}\n"),
    ("template-var-default", "layers/web/defaults.yaml",
     "# Greeting.\nweb_greeting: hey\nweb_port: 8080  # port\n"),
    ("template-var-host", "profiles/node-01.yaml",
     "base: debian-bookworm\nlayers: [base, web]\nvars:\n  web_greeting: hey\n"),
    ("firstboot-step", "layers/web/firstboot.d/50-hello.sh", "#!/bin/sh\ntrue\n"),
]


@pytest.mark.parametrize("case", TEMPLATE_ONLY, ids=[c[0] for c in TEMPLATE_ONLY])
def test_template_only_inputs_keep_the_key(mini: Path, case: tuple[str, str, str]) -> None:
    before = role_key(mini)
    _, rel, text = case
    write(mini / rel, text, 0o755 if rel.endswith(".sh") else None)
    assert role_key(mini) == before


def test_hook_reading_undeclared_var_fails(mini: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    write(mini / "layers/web/hooks.d/20-greet.sh",
          "#!/bin/sh\necho \"${WEB_GREETING}\" > /srv/web/greeting\n", 0o755)
    code, out, err = run_cli(capsys, "-C", str(mini), "check", "--inventory-only")
    assert (code, out) == (2, "")
    assert err == ("pibake: error: layers/web/hooks.d/20-greet.sh:2: reads $WEB_GREETING, "
                   "which the layer does not pass to hooks; add web_greeting to hook_vars: "
                   "in layers/web/layer.yaml\n")


def test_hook_var_must_be_a_layer_variable(mini: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    write(mini / "layers/web/layer.yaml",
          "description: demo role\nrequires: [base]\nhook_vars: [web_prot]\n")
    code, _, err = run_cli(capsys, "-C", str(mini), "check", "--inventory-only")
    assert (code, err) == (2, "pibake: error: layers/web/layer.yaml: hook_vars[0]: 'web_prot' "
                              "is not a variable of this layer's defaults.yaml; did you mean "
                              "'web_port'?; declare it there\n")


def test_shipped_hooks_declare_what_they_read() -> None:
    inv = load_inventory(Path(__file__).resolve().parent.parent)
    assert inv.layers["base"].hook_vars == ("base_admin_shell",)
    assert inv.layers["base"].creates_admin


def test_missing_admin_found_by_the_plan(mini: Path, edit: Callable[..., Path]) -> None:
    edit(mini / "profiles/node-01.yaml", "base: debian-bookworm\nlayers: [lone]\n")
    edit(mini / "layers/lone/layer.yaml", "description: no accounts\n")
    with pytest.raises(ConfigError) as err:
        plan_hosts(load_inventory(mini), ("node-01",))
    assert str(err.value) == ("profiles/node-01.yaml: layers: no selected layer creates the admin "
                              "account 'admin' (debian-bookworm has none); add layer 'base'")


def test_step_clash_found_by_the_plan(mini: Path, edit: Callable[..., Path]) -> None:
    steps = sorted((plan_mod.FIRSTBOOT_DIR / "steps").glob("*.sh"))
    edit(mini / f"layers/web/firstboot.d/{steps[0].name}", "#!/bin/sh\ntrue\n", 0o755)
    with pytest.raises(ConfigError) as err:
        plan_hosts(load_inventory(mini), ("node-02",))
    assert str(err.value) == (f"layers/web/firstboot.d/{steps[0].name}: a step with this name "
                              "already comes from firstboot/steps; rename it (step names are "
                              "unique per image)")


def test_bad_last_host_fails_build_all_before_any_build(mini: Path, own_cache: Path) -> None:
    write(mini / "layers/web/templates/etc/web/only2.txt.j2",
          "# {{ pibake_managed }}\n{% if host.name == 'node-02' %}{{ web_nosuch }}{% endif %}\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "builder", "-C", str(mini), "build", "--all"],
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == ("pibake: error: layers/web/templates/etc/web/only2.txt.j2:2: undefined "
                           "variable: 'web_nosuch' is undefined; declare it in "
                           "layers/web/defaults.yaml or fix the name\n")
    assert not (mini / "output").exists()
    assert not (own_cache / "rootfs").exists() and not (own_cache / "roles").exists()
    assert seconds < 20


def test_check_lists_host_tools_and_emulation(mini: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[-1] == ("ok: 2 hosts, 2 layers, 10 templates rendered, 2 configs passed "
                         "their daemon's checker")
    assert any(ln.split()[:3] == ["host", "bmaptool", "bmap-tools"] for ln in lines)
    assert any(ln.split()[:3] == ["bootstrap", "base", "mmdebstrap"] for ln in lines)
    assert [ln.split()[1] for ln in lines if ln.startswith("emulation")] == ["arm64"]


def test_check_names_missing_tools_and_packages(mini: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from builder import preflight

    tools = dict(preflight.STAGE_TOOLS)
    tools["host"] = (*tools["host"], preflight.Tool("pibake-no-such-tool", "pibake-no-pkg"))
    tools["role"] = (*tools["role"], preflight.Tool("pibake-no-tool-2", "pibake-no-pkg-2"))
    monkeypatch.setattr(preflight, "STAGE_TOOLS", tools)
    code, out, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, out) == (3, "")
    assert err == ("pibake: error: host tools not found: pibake-no-tool-2 (role), "
                   "pibake-no-such-tool (host); install them: apt-get install "
                   "pibake-no-pkg pibake-no-pkg-2\n")


BAD_PLANS: list[tuple[str, str, str]] = [
    ("template", "layers/web/templates/etc/web/x.txt.j2", "# {{ pibake_managed }}\n{{ nope }}\n"),
    ("hook-var", "layers/web/hooks.d/30-x.sh", "#!/bin/sh\necho $WEB_GREETING\n"),
    ("step-clash", "layers/web/firstboot.d/05-grow-root.sh", "#!/bin/sh\ntrue\n"),
    ("no-admin", "profiles/node-02.yaml", "base: debian-bookworm\nlayers: [lone]\n"),
]


@pytest.mark.parametrize("case", BAD_PLANS, ids=[c[0] for c in BAD_PLANS])
def test_check_and_build_agree(mini: Path, own_cache: Path, capsys: pytest.CaptureFixture[str],
                               case: tuple[str, str, str]) -> None:
    _, rel, text = case
    write(mini / "layers/lone/layer.yaml", "description: no accounts\n")
    write(mini / rel, text, 0o755 if rel.endswith(".sh") else None)
    checked = run_cli(capsys, "-C", str(mini), "check", "--inventory-only")
    built = run_cli(capsys, "-C", str(mini), "build", "--all")
    assert checked[0] == 2 and checked[2].startswith("pibake: error: ")
    assert built == checked
    assert not (mini / "output").exists() and not (own_cache / "roles").exists()


def test_plan_and_dry_run_print_the_same(mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planned = run_cli(capsys, "-C", str(mini), "plan", "node-01", "node-02")
    dry = run_cli(capsys, "-C", str(mini), "build", "--dry-run", "node-01", "node-02")
    assert planned == dry and planned[0] == 0
    out = planned[1].splitlines()
    assert out[0] == "node-01: debian-bookworm on a pi3 (arm64), layers base+web"
    assert out[1].split()[0::2] == ["base", "build"] and out[2].split()[0::2] == ["role", "build"]
    assert "    layer web: packages: -; hooks: 10-web.sh" in out
    assert "    file    0644 0:0  /etc/web/page.txt" in out
    assert "    file    0644 0:0  /boot/firmware/cmdline.txt" in out
    assert "  image size known after the role build" in out
    assert not (mini / "output").exists()


def test_build_checks_host_tools_before_the_first_slow_step(
        mini: Path, own_cache: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from builder import preflight

    tools = dict(preflight.STAGE_TOOLS)
    tools["host"] = (*tools["host"], preflight.Tool("pibake-no-bmaptool", "bmap-tools"))
    monkeypatch.setattr(preflight, "STAGE_TOOLS", tools)
    code, out, err = run_cli(capsys, "-C", str(mini), "build", "--all")
    assert (code, out) == (3, "")
    assert err == ("pibake: error: host tools not found: pibake-no-bmaptool (host); install "
                   "them: apt-get install bmap-tools\n")
    assert not (own_cache / "rootfs").exists() and not (own_cache / "roles").exists()
