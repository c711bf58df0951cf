"""Boot tier: two nodes on one virtual LAN, as the cluster-join features will
boot them. Each image's own network config (the inventory's address on eth0)
must reach the other node; SSH from this machine goes through each VM's
management NIC (eth1)."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from builder.boot import BootResult, boot_image
from builder.qemu import LanSpec, mac_for
from tests.vm import build, keyed_project, ssh, stop

pytestmark = pytest.mark.boot

HOSTS = {"node-01": "192.168.77.15", "node-02": "192.168.77.16"}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_nodes_reach_each_other_on_the_shared_lan(tmp_path: Path) -> None:
    project, key = keyed_project(tmp_path)
    build(project, *HOSTS)
    lan = LanSpec(port=free_udp_port())

    def boot(host: str) -> BootResult:
        # one vCPU each: two VMs share this machine's two cores
        return boot_image(project / f"output/{host}.img", host=host, lan=lan, keep=True,
                          timeout=900, smp=1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {host: pool.submit(boot, host) for host in HOSTS}
        results: dict[str, BootResult] = {}
        errors = []
        for host, fut in futures.items():
            try:
                results[host] = fut.result()
            except Exception as exc:  # keep the other VM's result so it is stopped
                errors.append(exc)
    try:
        assert not errors, errors
        for host, res in results.items():
            assert res.progress[-1] == "done", (host, res.progress)
        one, two = results["node-01"].ssh_port, results["node-02"].ssh_port
        assert "192.168.77.15/24" in ssh(one, key, "ip -4 -o addr show eth0")
        assert "192.168.77.16/24" in ssh(two, key, "ip -4 -o addr show eth0")
        # by name (the host layer's /etc/hosts) to the peer's sshd, over the LAN only
        probe = ("timeout 20 bash -c 'exec 3<>/dev/tcp/{peer}/22; head -c 7 <&3'")
        assert ssh(one, key, probe.format(peer="node-02")) == "SSH-2.0"
        assert ssh(two, key, probe.format(peer="node-01")) == "SSH-2.0"
        route = ssh(one, key, "ip -o route get 192.168.77.16")
        assert " dev eth0 " in route, route
        # the peer answered from the MAC its QEMU NIC was given (mac_for(host))
        neigh = ssh(one, key, "ip neigh show 192.168.77.16")
        assert mac_for("node-02") in neigh, neigh
    finally:
        # keep both running until both are checked, then power off cleanly
        for res in results.values():
            stop(res.pid, res.ssh_port, key)
