"""Boot tier: build the mini project's node, boot the exact image bytes under
QEMU and check the first-boot runner from the outside (console) and the inside
(SSH with a key the test generates)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.cache import sha256_file
from builder.content.hostlayer import FIRSTBOOT_DIR
from builder.content.identity import machine_id
from builder.content.secrets import Store
from builder.errors import BootError
from builder.inventory.config import load_inventory
from builder.vm.boot import boot_image
from builder.vm.qemu import Machine
from tests.conftest import write
from tests.vm import build, keyed_project, ssh, stop

pytestmark = pytest.mark.boot

# Units allowed to fail under QEMU -M virt, each with why. Empty: on the
# Debian base nothing needs the Pi's hardware to start.
ALLOWED_FAILED_UNITS: set[str] = set()

FLAKY_STEP = """\
#!/bin/sh
# Fails while the kernel command line carries pibake.test_fail (the "cause").
if grep -q pibake.test_fail /proc/cmdline; then
    echo "test_fail is set" >&2
    exit 1
fi
"""
# Every built-in step, in order, as the runner reports it on a first boot.
STEPS_OK = [f"{p.stem} ok" for p in sorted(FIRSTBOOT_DIR.glob("steps/*.sh"))]
COUNT_STEP = "#!/bin/sh\nmkdir -p /var/lib/pibake-test\necho ran >> /var/lib/pibake-test/count\n"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    project, key = keyed_project(tmp_path_factory.mktemp("boot"))
    write(project / "layers/web/firstboot.d/30-count.sh", COUNT_STEP, 0o755)
    write(project / "layers/web/firstboot.d/40-flaky.sh", FLAKY_STEP, 0o755)
    build(project, "node-01")
    return project / "output/node-01.img", key


def test_failed_step_then_retry_then_idempotent(image: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    img, key = image
    before = sha256_file(img)
    overlay = tmp_path / "overlay.qcow2"

    # 1: the step fails while its cause is present; boot names it.
    failed: BootError | None = None
    try:
        boot_image(img, host="node-01", overlay=overlay, timeout=900,
                   extra_cmdline=("pibake.test_fail=1",))
    except BootError as exc:
        failed = exc
    assert failed is not None, "the boot passed although 40-flaky.sh failed"
    assert str(failed).startswith("node-01: first-boot step 40-flaky failed; last console "
                                  "lines: "), str(failed)

    # 2: cause removed: the failed step runs, the ones before it do not.
    second = boot_image(img, host="node-01", overlay=overlay, timeout=900, keep=True)
    try:
        # only the step that failed runs again, then the runner is done
        assert second.progress == ["40-flaky ok", "done"], second.progress
        port = second.ssh_port
        assert ssh(port, key, "hostname") == "node-01"
        assert ssh(port, key, "cat /var/lib/pibake-test/count") == "ran"
        root_bytes = int(ssh(port, key, "df -B1 --output=size / | tail -n 1"))
        assert root_bytes > img.stat().st_size          # grown into the larger overlay
        failed_units = set(ssh(port, key, "sudo systemctl --failed --plain --no-legend "
                                          "| cut -d' ' -f1").split())
        assert failed_units <= ALLOWED_FAILED_UNITS, failed_units
        # --wait: the runner may report done before every other unit has started
        assert ssh(port, key, "sudo systemctl is-system-running --wait") == "running"
        store = Store.at(load_inventory(img.parent.parent))
        assert ssh(port, key, "cat /etc/machine-id") == machine_id(store, "node-01")
        # exactly the key types the base layer asks for, made before sshd started
        assert ssh(port, key, "ls /etc/ssh/ | grep 'key.pub$'").split() == [
            "ssh_host_ecdsa_key.pub", "ssh_host_ed25519_key.pub"]
        # sshd never started without keys, on either boot (the journal is kept)
        assert ssh(port, key, "sudo journalctl -u ssh.service -o cat "
                              "| grep -c 'no hostkeys available' || true") == "0"
        # eth0 carries the inventory's address; eth1 is the management NIC
        assert "192.168.77.15/24" in ssh(port, key, "ip -4 -o addr show eth0")
        assert "10.0.2.15/24" in ssh(port, key, "ip -4 -o addr show eth1")
        assert ssh(port, key, "cat /boot/firmware/pibake-firstboot.txt").endswith("result: done")
    finally:
        stop(second.pid, second.ssh_port, key)

    # 3: every step is stamped: nothing runs again.
    third = boot_image(img, host="node-01", overlay=overlay, timeout=900)
    assert third.progress == ["done"]
    assert sha256_file(img) == before                   # the flashed bytes were never touched
    print(f"boot-times: first-done {second.seconds:.1f}s, again {third.seconds:.1f}s")


def test_raspi3b_model_reaches_done(image: tuple[Path, Path]) -> None:
    """The closer-to-hardware mode: the image's arm64 kernel with the Pi 3 device
    tree on QEMU's raspi3b (SD card, mini-UART console, USB NIC); one TCG thread,
    hence the long timeout. QEMU's user network is laid over the node's own LAN,
    so its static config comes up as on the Pi and the test logs in over it."""
    img, key = image
    before = sha256_file(img)
    result = boot_image(img, host="node-01", machine=Machine.raspi3b, timeout=1500, keep=True)
    try:
        assert result.progress == [*STEPS_OK, "30-count ok", "40-flaky ok", "done"], \
            result.progress
        port = result.ssh_port
        assert ssh(port, key, "hostname") == "node-01"
        # the USB NIC is eth0, as the Pi 3's onboard NIC, with the inventory's address
        assert "192.168.77.15/24" in ssh(port, key, "ip -4 -o addr show eth0")
        # driven by a CDC Ethernet or RNDIS driver: cdc_subset, which would race
        # them for QEMU's usb-net and name it usb0, is kept out on the command line
        assert ssh(port, key, "basename $(readlink /sys/class/net/eth0/device/driver)") \
            in ("cdc_ether", "rndis_host")
        assert "modprobe.blacklist=cdc_subset" in ssh(port, key, "cat /proc/cmdline")
        assert ssh(port, key, "tr -d '\\0' < /proc/device-tree/model").startswith(
            "Raspberry Pi 3 Model B")
        failed_units = set(ssh(port, key, "sudo systemctl --failed --plain --no-legend "
                                          "| cut -d' ' -f1").split())
        assert failed_units <= ALLOWED_FAILED_UNITS, failed_units
        assert ssh(port, key, "sudo systemctl is-system-running --wait") == "running"
    finally:
        stop(result.pid, result.ssh_port, key)
    assert sha256_file(img) == before
    print(f"boot-times: raspi3b first-done {result.seconds:.1f}s")
