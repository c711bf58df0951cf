"""The compute layer's swarm join, run on this machine against fake `docker`
and `ssh` commands: a small simulated cluster where each host's swarm state
is a folder, and ssh to a manager runs the real pibake-swarm-gate there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, write

COMPUTE = REPO / "layers/compute"
GATE = COMPUTE / "files/usr/local/sbin/pibake-swarm-gate"
JOIN = COMPUTE / "firstboot.d/60-swarm-join.sh"
CHECK = COMPUTE / "files/usr/local/lib/pibake/checks.d/60-swarm.sh"

# One folder per host: state (inactive|active), manager (true|false), cluster,
# nodes (lines "ID HOST STATUS MANAGERSTATUS"), log (every mutating call).
FAKE_DOCKER = r"""#!/bin/sh
d=$FAKE_ROOT/$FAKE_HOST
[ -f "$d/down" ] && { echo "Cannot connect to the Docker daemon" >&2; exit 1; }
case "$1 $2" in
  "info --format")
    case $3 in
      *LocalNodeState*ControlAvailable*Cluster.ID*)
        echo "$(cat $d/state) $(cat $d/manager) $(cat $d/cluster 2>/dev/null)" ;;
      *LocalNodeState*ControlAvailable*) echo "$(cat $d/state) $(cat $d/manager)" ;;
      *LocalNodeState*) cat $d/state ;;
      *NodeAddr*) cat $d/addr ;;
    esac ;;
  "swarm join-token") echo "TOKEN-$4-$(cat $d/cluster)" ;;
  "swarm init") echo "init $*" >> $d/log; echo active > $d/state; echo true > $d/manager
                echo "C-$FAKE_HOST" > $d/cluster ;;
  "swarm join") echo "join $*" >> $d/log; echo active > $d/state ;;
  "swarm leave") echo "leave $*" >> $d/log; echo inactive > $d/state ;;
  "node ls") while read id h s m; do
               case $4 in *.ID*) echo "$id $h $s ${m:-}" ;; *) echo "$s ${m:-}" ;; esac
             done < $d/nodes ;;
  "node demote"|"node rm") echo "$*" >> $d/log ;;
  *) echo "fake docker: $*" >&2; exit 99 ;;
esac
"""

# ssh -i KEY -o ... pibake-swarm@HOST REQUEST: run the gate as HOST
FAKE_SSH = r"""#!/bin/sh
while [ $# -gt 0 ]; do
  case $1 in
    pibake-swarm@*) host=${1#pibake-swarm@}; shift; break ;;
    *) shift ;;
  esac
done
if [ ! -d "$FAKE_ROOT/$host" ] || [ -f "$FAKE_ROOT/$host/unreachable" ]; then
  echo "ssh: connect to host $host port 22: No route to host" >&2; exit 255
fi
# as the real sshd says for the gate account, which has no home
echo "Could not chdir to home directory /nonexistent: No such file or directory" >&2
FAKE_HOST=$host SSH_ORIGINAL_COMMAND="$*" exec sh "$GATE"
"""

MANAGERS = "c1 c2 c3"


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    bin_ = tmp_path / "bin"
    write(bin_ / "docker", FAKE_DOCKER, 0o755)
    write(bin_ / "ssh", FAKE_SSH, 0o755)
    for n, host in enumerate(["c1", "c2", "c3", "c4"], start=1):
        node(tmp_path, host, "inactive", "false", addr=f"10.0.0.{n}")
    return tmp_path


def node(root: Path, host: str, state: str, manager: str, *, addr: str = "10.0.0.9",
         cluster: str = "", nodes: str = "") -> None:
    d = root / "hosts" / host
    write(d / "state", state + "\n")
    write(d / "manager", manager + "\n")
    write(d / "addr", addr + "\n")
    write(d / "cluster", cluster + "\n")
    write(d / "nodes", nodes)
    write(d / "log", "")


def run(root: Path, script: Path, host: str, role: str = "worker", nodes: int = 4,
        **env: str) -> subprocess.CompletedProcess[str]:
    swarm_env = write(root / f"{host}.env", (
        f"PIBAKE_SWARM_ROLE={role}\nPIBAKE_SWARM_MANAGERS='{MANAGERS}'\n"
        f"PIBAKE_SWARM_BOOTSTRAP=c1\nPIBAKE_SWARM_ADDR=10.0.0.{host[1:]}\n"
        f"PIBAKE_SWARM_KEY=/nonexistent/key\nPIBAKE_SWARM_NODES={nodes}\n"))
    full = {**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
            "FAKE_ROOT": str(root / "hosts"), "FAKE_HOST": host, "PIBAKE_HOST": host,
            "GATE": str(GATE), "PIBAKE_SWARM_ENV": str(swarm_env),
            "PIBAKE_SWARM_SERVICE": "1", **env}
    text = script.read_text().replace("/etc/pibake/swarm.env", str(swarm_env))
    copy = write(root / f"run-{script.name}", text, 0o755)
    return subprocess.run(["sh", str(copy)], capture_output=True, text=True, env=full)


def log(root: Path, host: str) -> str:
    return (root / "hosts" / host / "log").read_text()


def test_bootstrap_node_waits_while_a_manager_cannot_be_asked(lab: Path) -> None:
    (lab / "hosts/c3/unreachable").touch()
    done = run(lab, JOIN, "c1", role="manager")
    assert (done.returncode, done.stdout) == (
        1, "waiting for a swarm manager (not answering: c3)\n")
    assert log(lab, "c1") == ""  # no second swarm while c3 might hold one


def test_bootstrap_node_creates_the_swarm_when_every_manager_has_none(lab: Path) -> None:
    done = run(lab, JOIN, "c1", role="manager")
    assert (done.returncode, done.stdout) == (0, "created the swarm (no other manager had one)\n")
    assert log(lab, "c1") == "init swarm init --advertise-addr 10.0.0.1\n"


def test_other_node_waits_for_the_bootstrap_node(lab: Path) -> None:
    done = run(lab, JOIN, "c4")
    assert (done.returncode, done.stdout) == (1, "waiting for c1 to create the swarm\n")


def test_node_joins_through_a_manager_and_forgets_its_old_self(lab: Path) -> None:
    node(lab, "c1", "active", "true", addr="10.0.0.1", cluster="C1",
         nodes="id1 c1 Ready Leader\nid3 c3 Ready Reachable\nold4 c4 Down \n")
    done = run(lab, JOIN, "c4")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ("joined the swarm through c1 as worker\n"
                           "forgot c4's old node old4\n")
    assert log(lab, "c4") == ("join swarm join --advertise-addr 10.0.0.4 "
                              "--token TOKEN-worker-C1 10.0.0.1:2377\n")
    assert log(lab, "c1") == "node rm --force old4\n"


def test_rebuilt_bootstrap_node_joins_instead_of_creating(lab: Path) -> None:
    node(lab, "c2", "active", "true", addr="10.0.0.2", cluster="C1",
         nodes="id1 c1 Down Unreachable\nid2 c2 Ready Leader\n")
    done = run(lab, JOIN, "c1", role="manager")
    assert done.returncode == 0
    assert "init" not in log(lab, "c1")
    assert log(lab, "c1").endswith("--token TOKEN-manager-C1 10.0.0.2:2377\n")
    # the old manager entry is demoted before it is removed
    assert log(lab, "c2") == "node demote id1\nnode rm --force id1\n"


def test_worker_node_is_not_asked_for_tokens(lab: Path) -> None:
    node(lab, "c2", "active", "false", cluster="C1")
    (lab / "hosts/c3/unreachable").touch()
    node(lab, "c1", "active", "true", addr="10.0.0.1", cluster="C1", nodes="id1 c1 Ready Leader\n")
    done = run(lab, JOIN, "c4")
    assert done.returncode == 0
    assert "through c1" in done.stdout


def test_join_is_idempotent(lab: Path) -> None:
    node(lab, "c4", "active", "false")
    done = run(lab, JOIN, "c4")
    assert (done.returncode, done.stdout) == (0, "already in the swarm\n")
    assert log(lab, "c4") == ""


def test_docker_not_up_yet_is_a_retry(lab: Path) -> None:
    (lab / "hosts/c4/down").touch()
    done = run(lab, JOIN, "c4")
    assert (done.returncode, done.stdout) == (1, "docker is not answering yet\n")


@pytest.mark.parametrize(("request_", "code", "out"), [
    ("state", 0, "active manager\n"),
    ("token worker", 0, "TOKEN-worker-C1 10.0.0.1:2377\n"),
    ("bash -i", 2, "refused: 'bash -i' (ask: state, token worker|manager, forget HOST)\n"),
    ("token root", 2, "refused: 'token root' (ask: state, token worker|manager, forget HOST)\n"),
    ("forget ../x", 2, "refused: bad host name '../x'\n"),
    ("forget c1; rm -rf /", 2, "refused: bad host name 'c1; rm -rf /'\n"),
])
def test_gate_answers_only_its_requests(lab: Path, request_: str, code: int, out: str) -> None:
    node(lab, "c1", "active", "true", addr="10.0.0.1", cluster="C1", nodes="id1 c1 Ready Leader\n")
    env = {**os.environ, "PATH": f"{lab / 'bin'}:{os.environ['PATH']}",
           "FAKE_ROOT": str(lab / "hosts"), "FAKE_HOST": "c1", "SSH_ORIGINAL_COMMAND": request_}
    done = subprocess.run(["sh", str(GATE)], capture_output=True, text=True, env=env)
    assert (done.returncode, done.stdout) == (code, out)
    assert log(lab, "c1") == ""


def test_gate_on_a_worker_gives_no_token(lab: Path) -> None:
    node(lab, "c4", "active", "false")
    env = {**os.environ, "PATH": f"{lab / 'bin'}:{os.environ['PATH']}",
           "FAKE_ROOT": str(lab / "hosts"), "FAKE_HOST": "c4",
           "SSH_ORIGINAL_COMMAND": "token manager"}
    done = subprocess.run(["sh", str(GATE)], capture_output=True, text=True, env=env)
    assert (done.returncode, done.stdout) == (3, "no swarm here: active worker\n")


def test_check_on_a_manager_counts_nodes_managers_and_leader(lab: Path) -> None:
    node(lab, "c1", "active", "true", cluster="C1", nodes=(
        "id1 c1 Ready Leader\nid2 c2 Ready Reachable\nid3 c3 Ready Reachable\nid4 c4 Ready \n"))
    done = run(lab, CHECK, "c1", role="manager")
    assert (done.returncode, done.stdout) == (
        0, "swarm C1: 4/4 Ready, 3 managers, 1 leader, 0 down\n")


def test_check_fails_with_a_stale_node_down(lab: Path) -> None:
    node(lab, "c1", "active", "true", cluster="C1", nodes=(
        "id1 c1 Ready Leader\nid2 c2 Ready Reachable\nid3 c3 Ready Reachable\nid4 c4 Ready \n"
        "old3 c3 Down Unreachable\n"))
    done = run(lab, CHECK, "c1", role="manager")
    assert (done.returncode, done.stdout) == (
        1, "swarm C1: 4/4 Ready, 3 managers, 1 leader, 1 down\n")


def test_check_on_a_node_outside_the_swarm(lab: Path) -> None:
    done = run(lab, CHECK, "c4")
    assert (done.returncode, done.stdout) == (1, "not in a swarm (inactive)\n")


def test_first_boot_hands_the_join_to_its_service(tmp_path: Path) -> None:
    """Run by the first-boot runner, the step starts the join's service and is
    done: a node alone waits for its peers there, not in first boot."""
    calls = tmp_path / "calls"
    write(tmp_path / "bin/systemctl", f'#!/bin/sh\necho "$*" >> {calls}\n', 0o755)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
           "PIBAKE_FIRSTBOOT_STEPS_DIR": "/usr/local/lib/pibake/firstboot.d"}
    done = subprocess.run(["sh", str(JOIN)], capture_output=True, text=True, env=env)
    assert (done.returncode, done.stdout) == (
        0, "the swarm join runs in pibake-swarm-join.service until a manager answers\n")
    assert calls.read_text() == "enable --now --no-block pibake-swarm-join.service\n"
    unit = (COMPUTE / "templates/etc/systemd/system/pibake-swarm-join.service.j2").read_text()
    assert "Environment=PIBAKE_SWARM_SERVICE=1\n" in unit and "Restart=on-failure\n" in unit
    assert f"ExecStart=/bin/sh /usr/local/lib/pibake/firstboot.d/{JOIN.name}\n" in unit


def test_a_failed_join_is_left_and_joined_again(lab: Path) -> None:
    node(lab, "c1", "active", "true", addr="10.0.0.1", cluster="C1",
         nodes="id1 c1 Ready Leader\n")
    node(lab, "c4", "error", "false", addr="10.0.0.4")
    done = run(lab, JOIN, "c4")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:2] == ["left a swarm join that had failed; joining again",
                                           "joined the swarm through c1 as worker"]
    assert log(lab, "c4") == ("leave swarm leave --force\njoin swarm join --advertise-addr "
                              "10.0.0.4 --token TOKEN-worker-C1 10.0.0.1:2377\n")
