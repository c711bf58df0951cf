"""Boot tier: two nodes on one virtual LAN, as the cluster-join features will
boot them. Each image's own network config (the inventory's address on eth0)
must reach the other node; SSH from this machine goes through each VM's
management NIC (eth1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.vm.boot import NodeBoot, boot_group
from builder.vm.qemu import LanSpec, free_udp_port, mac_for
from tests.vm import build, keyed_project, ssh

pytestmark = pytest.mark.boot

HOSTS = {"node-01": "192.168.77.15", "node-02": "192.168.77.16"}


def test_two_nodes_reach_each_other_on_the_shared_lan(tmp_path: Path) -> None:
    project, key = keyed_project(tmp_path)
    build(project, *HOSTS)
    lan = LanSpec(port=free_udp_port())
    nodes = [NodeBoot(host, project / f"output/{host}.img") for host in HOSTS]
    # one vCPU each (boot_group's default): two VMs share this machine's two cores
    with boot_group(nodes, lan=lan, timeout=900) as vms:
        assert sorted(vms) == sorted(HOSTS)
        one, two = vms["node-01"].result.ssh_port, vms["node-02"].result.ssh_port
        assert "192.168.77.15/24" in ssh(one, key, "ip -4 -o addr show eth0")
        assert "192.168.77.16/24" in ssh(two, key, "ip -4 -o addr show eth0", "node-02")
        # by name (the host layer's /etc/hosts) to the peer's sshd, over the LAN only
        probe = ("timeout 20 bash -c 'exec 3<>/dev/tcp/{peer}/22; head -c 7 <&3'")
        assert ssh(one, key, probe.format(peer="node-02")) == "SSH-2.0"
        assert ssh(two, key, probe.format(peer="node-01"), "node-02") == "SSH-2.0"
        route = ssh(one, key, "ip -o route get 192.168.77.16")
        assert " dev eth0 " in route, route
        # the peer answered from the MAC its QEMU NIC was given (mac_for(host))
        neigh = ssh(one, key, "ip neigh show 192.168.77.16")
        assert mac_for("node-02") in neigh, neigh
        # a node that dies is gone from the LAN; the survivor keeps running
        vms["node-02"].stop()
        assert ssh(one, key, probe.format(peer="node-02")) != "SSH-2.0"
        assert vms["node-01"].vm.exited() is None
        pids = [vm.vm.pid for vm in vms.values()]
    # every VM of the group is reaped when the block ends
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), pid
