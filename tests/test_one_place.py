"""One place per fact: the KVM decision, the serial consoles, the host tool lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.emulate.bootstrap import PI_FAMILIES, console_for_arch, customize_hook, spec_for
from builder.vm import qemu


def test_kvm_is_decided_once_with_one_notice(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    probes = []
    monkeypatch.setattr(qemu, "_kvm", None)
    monkeypatch.setattr(qemu, "_dev_kvm_answers", lambda: probes.append(1) or False)
    assert [qemu.kvm_works() for _ in range(3)] == [False, False, False]
    assert probes == [1]
    assert capsys.readouterr().err == ("pibake: KVM is not available here (no usable /dev/kvm); "
                                       "libguestfs and QEMU use TCG emulation (slower)\n")


def test_a_kvm_that_fails_at_launch_is_remembered(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(qemu, "_kvm", None)
    monkeypatch.setattr(qemu, "_dev_kvm_answers", lambda: True)
    assert qemu.kvm_works()
    qemu.kvm_failed("the libguestfs appliance")
    qemu.kvm_failed("the libguestfs appliance")
    assert not qemu.kvm_works()
    assert capsys.readouterr().err == ("pibake: KVM failed to start the libguestfs appliance; "
                                       "using TCG emulation (slower) from now on\n")


@pytest.mark.parametrize("model", sorted(PI_FAMILIES))
def test_bootstrap_and_host_layer_name_the_same_console(model: str) -> None:
    family = PI_FAMILIES[model]
    assert console_for_arch(family.arch) == family.console
    assert f'CONSOLES="tty0 {family.console},115200"' in customize_hook(
        spec_for(model, "bookworm"))


def test_host_tools_are_looked_up_in_one_place() -> None:
    # run.find (PATH, then the system's sbin and bin folders) is the one lookup:
    # the preflight table, the daemons' checkers and every child process use it.
    builder = Path(__file__).resolve().parents[1] / "builder"
    users = sorted(p.relative_to(builder).as_posix() for p in builder.rglob("*.py")
                   if "shutil.which(" in p.read_text())
    assert users == ["run.py"]
