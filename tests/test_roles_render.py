"""The role layers' rendered configs (shapes from the shipped inventory) and the
daemons' checkers stopping a broken one with one line naming host, file and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.content.render import render_host
from builder.content.rolecheck import check_exports, check_tree
from builder.inventory.config import load_inventory
from tests.conftest import REPO
from tests.test_config import run_cli
from tests.test_rolefacts import _replace, cluster  # noqa: F401  (fixture)


def files(host: str) -> dict[str, str]:
    inv = load_inventory(REPO)
    return {r.dest: r.data.decode() for r in render_host(inv, host)}


def body(text: str) -> list[str]:
    """The lines that are not comments or blank."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_frontend_keepalived_from_the_inventory() -> None:
    conf = files("compute-01")["/etc/keepalived/keepalived.conf"]
    vrrp = conf[conf.index("vrrp_instance"):]
    assert body(vrrp) == [
        "vrrp_instance compute_vip {", "    state BACKUP", "    nopreempt",
        "    interface eth0", "    virtual_router_id 51", "    priority 150",
        "    advert_int 1", "    authentication {", "        auth_type PASS",
        "        auth_pass stand-in", "    }", "    unicast_src_ip 10.20.0.31",
        "    unicast_peer {",
        "        10.20.0.32", "    }", "    virtual_ipaddress {",
        "        10.20.0.30/24 dev eth0", "    }", "    track_script {",
        "        chk_haproxy", "    }", "}",
    ]
    # a failed HAProxy takes the holder below its peer: 150 - 60 < 100
    assert "    weight -60\n" in conf
    assert "priority 100" in files("compute-02")["/etc/keepalived/keepalived.conf"]
    assert "vrrp_instance" not in files("compute-03")["/etc/keepalived/keepalived.conf"]
    inv = load_inventory(REPO)
    conf = next(r for r in render_host(inv, "compute-02")
                if r.dest == "/etc/keepalived/keepalived.conf")
    assert (conf.mode, conf.secrets) == (0o600, ("compute_vrrp",))


def test_haproxy_balances_to_the_backends_with_local_backup() -> None:
    conf = files("compute-02")["/etc/haproxy/haproxy.cfg"]
    assert [ln.strip() for ln in conf.splitlines() if ln.strip().startswith("server ")] == [
        "server compute-03 10.20.0.33:8080 check",
        "server compute-04 10.20.0.34:8080 check",
        "server local 127.0.0.1:8080 check backup",
    ]
    assert "    bind :80\n" in conf
    assert "stats socket /run/haproxy/admin.sock" in conf


def test_frontend_units_only_start_on_the_frontends() -> None:
    for unit in ("haproxy", "keepalived"):
        drop_in = files("compute-04")[f"/etc/systemd/system/{unit}.service.d/"
                                      "10-pibake-frontends.conf"]
        assert body(drop_in)[:3] == ["[Unit]", "ConditionHost=|compute-01",
                                     "ConditionHost=|compute-02"]


def test_swarm_facts_for_first_boot() -> None:
    def env(host: str) -> list[str]:
        return body(files(host)["/etc/pibake/swarm.env"])

    assert env("compute-01") == [
        "PIBAKE_SWARM_ROLE=manager", 'PIBAKE_SWARM_MANAGERS="compute-01 compute-02 compute-03"',
        "PIBAKE_SWARM_BOOTSTRAP=compute-01", "PIBAKE_SWARM_ADDR=10.20.0.31",
        "PIBAKE_SWARM_NODES=4", "PIBAKE_SWARM_KEY=/etc/pibake/swarm/gate_key"]
    assert env("compute-04")[0] == "PIBAKE_SWARM_ROLE=worker"
    # only managers let the swarm key in, and only to the gate
    three, four = files("compute-03"), files("compute-04")
    assert 'restrict,command="/usr/local/sbin/pibake-swarm-gate" ssh-ed25519 ' in \
        three["/etc/pibake/swarm/authorized_keys"]
    assert "/etc/pibake/swarm/authorized_keys" not in four
    assert "AllowUsers admin pibake-swarm" in three["/etc/ssh/sshd_config.d/10-pibake.conf"]
    assert "AllowUsers admin\n" in four["/etc/ssh/sshd_config.d/10-pibake.conf"]
    assert "ForceCommand /usr/local/sbin/pibake-swarm-gate" in \
        three["/etc/ssh/sshd_config.d/20-pibake-swarm.conf"]
    assert four["/etc/pibake/swarm/gate_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    daemon = json.loads(files("compute-03")["/etc/docker/daemon.json"])
    assert daemon["live-restore"] is False  # swarm mode refuses it
    assert "pibake.swarm-role=manager" in daemon["labels"]


def test_nfs_client_mounts_lanmisc_export_on_demand() -> None:
    f = files("compute-03")
    assert "What=10.20.0.21:/srv/nfs/share\n" in f["/etc/systemd/system/srv-share.mount"]
    assert "soft" in f["/etc/systemd/system/srv-share.mount"]
    assert "WantedBy=remote-fs.target" in f["/etc/systemd/system/srv-share.automount"]
    hook = (REPO / "layers/compute/hooks.d/50-services.sh").read_text()
    assert "remote-fs.target.wants/srv-share.automount" in hook


def test_distcc_and_mpi_from_the_inventory() -> None:
    f = files("compute-02")
    assert body(f["/etc/default/distcc"]) == [
        'STARTDISTCC="true"', 'ALLOWEDNETS="10.20.0.0/24"', 'LISTENER="0.0.0.0"',
        'NICE="10"', 'JOBS="4"', 'ZEROCONF="false"']
    assert body(f["/etc/pibake/mpi/hostfile"]) == [
        "compute-01:4", "compute-02:4", "compute-03:4", "compute-04:4"]
    assert ('DISTCC_HOSTS="10.20.0.31/4 10.20.0.33/4 10.20.0.34/4 localhost"'
            in f["/etc/profile.d/pibake-mpi.sh"])


def test_lanmisc_exports_to_compute_nodes_only() -> None:
    f = files("lanmisc-01")
    opts = "(rw,sync,no_subtree_check,root_squash)"
    assert body(f["/etc/exports"]) == [
        "/srv/nfs/share " + " ".join(f"10.20.0.3{i}{opts}" for i in range(1, 5))]
    assert body(f["/etc/tmpfiles.d/pibake-nfs.conf"]) == ["d /srv/nfs/share 2775 root users -"]
    assert "fastcgi_pass unix:/run/php/php-fpm.sock;" in f["/etc/nginx/sites-available/default"]
    assert "    bind :80\n" in f["/etc/haproxy/haproxy.cfg"]
    assert "alias /var/www/lanmisc/site/;" in f["/etc/nginx/sites-available/default"]
    site = f["/srv/hugo/site/content/_index.md"]
    assert "| compute-03 | 10.20.0.33 | compute |" in site
    # built into the image by layer.yaml generate:, not on first boot
    page = f["/var/www/lanmisc/site/index.html"]
    assert "<td>compute-03</td>\n<td>10.20.0.33</td>\n<td>compute</td>" in page
    assert "floating IP 10.20.0.30" in page and "omitted" not in page
    assert not (REPO / "layers/lanmisc/firstboot.d").exists()


def test_redis_on_the_lan_with_its_password_root_only() -> None:
    inv = load_inventory(REPO)
    out = {r.dest: r for r in render_host(inv, "lanmisc-01")}
    conf = out["/etc/redis/redis.conf"]
    assert "bind 127.0.0.1 10.20.0.21\n" in conf.data.decode()
    assert "include /run/credentials/redis-server.service/auth.conf" in conf.data.decode()
    assert conf.secrets == ()
    auth = out["/etc/redis/pibake-auth.conf"]
    assert (auth.mode, auth.secrets) == (0o600, ("lanmisc_redis",))
    assert body(auth.data.decode()) == ["requirepass stand-in-lanmisc_redis"]
    drop_in = out["/etc/systemd/system/redis-server.service.d/10-pibake.conf"].data.decode()
    assert "LoadCredential=auth.conf:/etc/redis/pibake-auth.conf" in drop_in


def test_chrony_client_of_the_lanmain_pair() -> None:
    assert body(files("compute-01")["/etc/chrony/chrony.conf"])[:2] == [
        "server 10.20.0.11 iburst", "server 10.20.0.12 iburst"]
    # on the pair itself the lanmain layer's config replaces the base one: upstream + peer
    assert "peer 10.20.0.12 iburst" in body(files("lanmain-01")["/etc/chrony/chrony.conf"])


def test_deployer_inventory_ssh_and_tools_from_the_inventory() -> None:
    f = files("deployer-01")
    hosts = body(f["/etc/ansible/hosts"])
    assert hosts[hosts.index("[compute]"):hosts.index("[compute]") + 5] == [
        "[compute]", "compute-01 ansible_host=10.20.0.31", "compute-02 ansible_host=10.20.0.32",
        "compute-03 ansible_host=10.20.0.33", "compute-04 ansible_host=10.20.0.34"]
    assert hosts[hosts.index("[swarm_managers]"):hosts.index("[swarm_managers]") + 4] == [
        "[swarm_managers]", "compute-01", "compute-02", "compute-03"]
    assert "compute_floating_ip=10.20.0.30" in hosts and "[deployer]" in hosts
    assert "forks = 4" in f["/etc/ansible/ansible.cfg"]
    ssh = body(f["/etc/ssh/ssh_config.d/10-pibake-cluster.conf"])
    assert ssh[:4] == ["Host lanmain-01 lanmain-01.cluster.lan", "    HostName 10.20.0.11",
                       "    User admin", "    StrictHostKeyChecking yes"]
    assert not any("deployer-01" in line for line in ssh)
    suite = f["/opt/pibake/deploy/tests/test_services.py"]
    assert 'SITE_HOSTS = ["lanmisc-01"]' in suite and "<title>rpi-cluster</title>" in suite
    assert ('"compute-01": {"services": ["ssh", "chrony", "haproxy", "keepalived", "nginx", '
            '"docker", "distcc"], "ports": ["tcp://0.0.0.0:22", "tcp://0.0.0.0:80"]}') in suite
    assert '"swarm_managers": ["compute-01", "compute-02", "compute-03"]' in \
        f["/opt/pibake/deploy/fabfile.py"]


def test_every_shipped_host_passes_the_checkers(tmp_path: Path) -> None:
    inv = load_inventory(REPO)
    for host in inv.profiles:
        tree = tmp_path / host
        for r in render_host(inv, host):
            dest = tree / r.dest.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(r.data)
        assert check_tree(tree) == [], host


BROKEN: list[tuple[str, str, str, str, str]] = [
    # (id, template under layers/, old, new, expected error line)
    ("haproxy", "compute/templates/etc/haproxy/haproxy.cfg.j2", "balance roundrobin",
     "balance roundrobn",
     "compute-01: /etc/haproxy/haproxy.cfg: haproxy -c: [ALERT] : config : parsing "
     "[/etc/haproxy/haproxy.cfg:27] : balance only supports 'roundrobin', 'static-rr', "
     "'leastconn', 'source', 'uri', 'url_param', 'hdr(name)' and 'rdp-cookie(name)' options.; "
     "fix layers/compute/templates/etc/haproxy/haproxy.cfg.j2"),
    ("nginx", "compute/templates/etc/nginx/sites-available/default.j2",
     "try_files $uri $uri/ =404;",
     "try_file $uri;",
     "compute-01: /etc/nginx/sites-available/default: nginx -t: [emerg] unknown directive "
     "\"try_file\" in /etc/nginx/sites-available/default:18; fix "
     "layers/compute/templates/etc/nginx/sites-available/default.j2"),
    ("keepalived", "compute/templates/etc/keepalived/keepalived.conf.j2", "advert_int 1",
     "advert_intt 1",
     "compute-01: /etc/keepalived/keepalived.conf: keepalived -t: line 27: Unknown keyword "
     "'advert_intt'; fix layers/compute/templates/etc/keepalived/keepalived.conf.j2"),
    ("mount-unit", "compute/templates/etc/systemd/system/srv-share.mount.j2",
     "Where=/srv/share", "Where=/srv/shared",
     "compute-01: /etc/systemd/system/srv-share.mount: systemd-analyze verify: "
     "srv-share.mount: Where= setting doesn't match unit name. Refusing.; Unit "
     "srv-share.mount has a bad unit file setting.; fix "
     "layers/compute/templates/etc/systemd/system/srv-share.mount.j2"),
    ("ssh-config", "deployer/templates/etc/ssh/ssh_config.d/10-pibake-cluster.conf.j2",
     "    StrictHostKeyChecking yes", "    StrictHostKeyCheckin yes",
     "deployer-01: /etc/ssh/ssh_config.d/10-pibake-cluster.conf: ssh -G: "
     "/etc/ssh/ssh_config.d/10-pibake-cluster.conf: line 7: Bad configuration option: "
     "stricthostkeycheckin; /etc/ssh/ssh_config.d/10-pibake-cluster.conf: line 12: Bad "
     "configuration option: stricthostkeycheckin; fix "
     "layers/deployer/templates/etc/ssh/ssh_config.d/10-pibake-cluster.conf.j2"),
    ("redis", "lanmisc/templates/etc/redis/redis.conf.j2", "protected-mode yes",
     "protected-mode perhaps",
     "lanmisc-01: /etc/redis/redis.conf: redis-server: Reading the configuration file, at line "
     "7; >>> 'protected-mode perhaps'; argument must be 'yes' or 'no'; fix "
     "layers/lanmisc/templates/etc/redis/redis.conf.j2"),
    ("redis-credential", "lanmisc/templates/etc/redis/pibake-auth.conf.j2", "requirepass",
     "requirepas",
     "lanmisc-01: /etc/redis/pibake-auth.conf: redis-server: Reading the configuration file, "
     "at line 2; >>> 'requirepas stand-in-lanmisc_redis'; Bad directive or wrong number of "
     "arguments; fix layers/lanmisc/templates/etc/redis/pibake-auth.conf.j2"),
    ("vsftpd", "lanmain/templates/etc/vsftpd.conf.j2", "hide_ids=YES", "hide_ids=MAYBE",
     "lanmain-01: /etc/vsftpd.conf: vsftpd: bad bool value in config file for: hide_ids; fix "
     "layers/lanmain/templates/etc/vsftpd.conf.j2"),
    ("fabfile", "deployer/templates/opt/pibake/deploy/fabfile.py.j2",
     "def _each(group):", "def _each(group)",
     "deployer-01: /opt/pibake/deploy/fabfile.py:20: python: expected ':'; fix "
     "layers/deployer/templates/opt/pibake/deploy/fabfile.py.j2"),
]


@pytest.mark.parametrize(("template", "old", "new", "expected"), [b[1:] for b in BROKEN],
                         ids=[b[0] for b in BROKEN])
def test_a_broken_config_stops_with_its_checkers_line(
        cluster: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
        template: str, old: str, new: str, expected: str) -> None:
    _replace(cluster / "layers" / template, old, new)
    code, out, err = run_cli(capsys, "-C", str(cluster), "check")
    assert (code, out, err) == (2, "", f"pibake: error: {expected}\n")


@pytest.mark.parametrize(("line", "problem"), [
    ("/srv/x 10.0.0.1(rw,sync)", None),
    ("/srv/x 10.0.0.0/24(ro) *.cluster.lan(rw,no_root_squash,anonuid=1000)", None),
    ("srv/x 10.0.0.1(rw)", "/etc/exports:1: export 'srv/x' is not an absolute path"),
    ("/srv/x", "/etc/exports:1: export /srv/x names no client; it would be exported to the "
               "world"),
    ("/srv/x 10.0.0.1 (rw)", "/etc/exports:1: '(rw)' is not a client(options) entry (no space "
                             "before the parenthesis)"),
    ("/srv/x 10.0.0.1(rw,snyc)", "/etc/exports:1: unknown export option 'snyc' for 10.0.0.1"),
    ("/srv/x 10.0.0.0/33(rw)", "/etc/exports:1: '10.0.0.0/33' is not a network"),
])
def test_exports_syntax(tmp_path: Path, line: str, problem: str | None) -> None:
    exports = tmp_path / "etc/exports"
    exports.parent.mkdir()
    exports.write_text(f"{line}\n")
    assert check_exports(tmp_path, exports, True) == ([problem] if problem else [])


def test_a_missing_checker_is_named_with_its_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc/haproxy/haproxy.cfg"
    conf.parent.mkdir(parents=True)
    conf.write_text("global\n")
    monkeypatch.setattr("builder.content.rolecheck.find", lambda name: None)
    assert check_tree(tmp_path) == [
        "/etc/haproxy/haproxy.cfg: haproxy is not installed on this host to check it; "
        "install it: apt-get install haproxy (scripts/setup-host.sh does)"]
    assert check_tree(tmp_path, require=False) == []


def test_a_pass_is_remembered_by_the_files_hash(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from builder.content import rolecheck

    monkeypatch.setenv("PIBAKE_CACHE", str(tmp_path / "cache"))
    rendered = render_host(load_inventory(REPO), "compute-01")
    calls: list[Path] = []
    real = rolecheck.check_tree

    def counting(tree: Path, require: bool = True) -> list[str]:
        calls.append(tree)
        return real(tree, require)

    monkeypatch.setattr(rolecheck, "check_tree", counting)
    rolecheck.check_rendered("compute-01", rendered)
    rolecheck.check_rendered("compute-01", rendered)
    assert len(calls) == 1
    changed = [r if r.dest != "/etc/haproxy/haproxy.cfg" else
               type(r)(r.dest, r.data + b"# changed\n", r.mode, r.layer, r.source)
               for r in rendered]
    rolecheck.check_rendered("compute-01", changed)
    assert len(calls) == 2
