"""The role layers' rendered configs, checked by their daemons' own checkers.

``check_tree(tree)`` takes a folder holding a host's rendered files (as
``pibake render`` writes them) and returns one line per problem, e.g.
``/etc/haproxy/haproxy.cfg: haproxy -c: [ALERT] ... unknown keyword 'bnd'``.
Each checker runs only when its file is in the tree. The checkers are the host's
(Debian packages installed by scripts/setup-host.sh): the build host and the
bookworm images carry the same major versions. A checker that the host lacks is
a problem too, unless ``require`` is false (``pibake check`` on a bare machine).

Covered here: HAProxy (``haproxy -c``), Nginx (``nginx -t``), keepalived
(``keepalived -t``), NFS exports (exports(5) syntax, as exportfs parses it),
Docker's daemon.json (JSON object), the deployer's SSH client config
(``ssh -G``), its Python tools (compiled), our own systemd units
(``systemd-analyze verify``), Redis and vsftpd (which have no test mode: each
is started so that it parses its file and stops before it listens). The
lanmain DHCP/DNS/NTP daemons have their own module. PHP-FPM runs the
package's own pool config (nothing of ours to check).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from builder import cache
from builder.content.checkers import stage
from builder.content.render import Rendered
from builder.errors import ConfigError, PreflightError
from builder.inventory.rolefacts import NFS_OPTIONS, NFS_VALUED_OPTIONS
from builder.run import find

TIMEOUT = 60

Checker = Callable[[Path, Path, bool], list[str]]


def _tool(name: str, package: str, require: bool, shown: str) -> tuple[str | None, list[str]]:
    path = find(name)
    if path is None and require:
        return None, [f"{shown}: {name} is not installed on this host to check it; install it: "
                      f"apt-get install {package} (scripts/setup-host.sh does)"]
    return path, []


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 1, f"did not finish in {TIMEOUT}s"
    return proc.returncode, (proc.stderr + proc.stdout).strip()


# Time stamps and process ids: noise that would make one mistake read differently
# on every run.
_NOISE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d |\s*\(\d+\)\s*|\d+#\d+: |"
                    r"^\(\S+: Line (\d+)\)")


# Summary lines that follow the real message.
_SUMMARY = re.compile(r"Error\(s\) found in configuration|Fatal errors found|test failed")


def _clean(line: str) -> str:
    line = _NOISE.sub(lambda m: f"line {m.group(1)}:" if m.group(1) else " ", line)
    return re.sub(r"\s+", " ", line).strip()


def _first_lines(text: str, tree: Path, keep: int = 2) -> str:
    lines = [_clean(ln) for ln in text.replace(str(tree), "").splitlines()
             if ln.strip() and not _SUMMARY.search(ln)]
    telling = [ln for ln in lines if re.search(r"ALERT|emerg|error|Error|invalid|Unknown|"
                                                r"unknown|outside|not valid", ln)] or lines
    return "; ".join(telling[:keep]) or "failed without a message"


def check_haproxy(tree: Path, conf: Path, require: bool) -> list[str]:
    tool, problems = _tool("haproxy", "haproxy", require, "/etc/haproxy/haproxy.cfg")
    if tool is None:
        return problems
    code, out = _run([tool, "-c", "-f", str(conf)])
    return [] if code == 0 else [f"/etc/haproxy/haproxy.cfg: haproxy -c: "
                                 f"{_first_lines(out, tree)}"]


def check_nginx(tree: Path, site: Path, require: bool) -> list[str]:
    """The site inside a minimal main config: the image's nginx.conf is the
    package's own, only the site is ours."""
    shown = "/" + site.relative_to(tree).as_posix()
    tool, problems = _tool("nginx", "nginx-light", require, shown)
    if tool is None:
        return problems
    with tempfile.TemporaryDirectory(prefix="pibake-nginx-") as tmp:
        main = Path(tmp) / "nginx.conf"
        main.write_text(
            f"pid {tmp}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n"
            f"  proxy_temp_path {tmp}/proxy;\n  fastcgi_temp_path {tmp}/fastcgi;\n"
            f"  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n"
            f"  include {site};\n}}\n")
        code, out = _run([tool, "-t", "-q", "-p", tmp, "-c", str(main)])
    return [] if code == 0 else [f"{shown}: nginx -t: {_first_lines(out, tree)}"]


# The image's NIC names are not the build host's: keepalived's complaint that an
# interface does not exist here says nothing about the image.
_NO_IFACE = re.compile(r"interface \S+ .*doesn't exist|Non-existent interface")


def check_keepalived(tree: Path, conf: Path, require: bool) -> list[str]:
    tool, problems = _tool("keepalived", "keepalived", require, "/etc/keepalived/keepalived.conf")
    if tool is None:
        return problems
    code, out = _run([tool, "-l", "-t", "-f", str(conf)])
    lines = [ln for ln in out.splitlines() if ln.strip() and not _NO_IFACE.search(ln)]
    if code == 0 or not lines:
        return []
    message = _first_lines("\n".join(lines), tree)
    return [f"/etc/keepalived/keepalived.conf: keepalived -t: {message}"]


_CLIENT_RE = re.compile(r"^([A-Za-z0-9*?.\[\]-]+|@[A-Za-z0-9_-]+|[0-9.]+/[0-9.]+|gss/\S+)"
                        r"(\(([^()\s]*)\))?$")


def check_exports(tree: Path, exports: Path, require: bool) -> list[str]:
    """exports(5): ``/path client(opts) client(opts)``; the checks exportfs -r
    would fail on, without touching the host's own NFS server."""
    problems = []
    for n, raw in enumerate(exports.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"/etc/exports:{n}"
        path, *clients = line.split()
        if not path.startswith("/"):
            problems.append(f"{where}: export {path!r} is not an absolute path")
        if not clients:
            problems.append(f"{where}: export {path} names no client; it would be exported "
                            "to the world")
        for client in clients:
            m = _CLIENT_RE.match(client)
            if m is None:
                problems.append(f"{where}: {client!r} is not a client(options) entry "
                                "(no space before the parenthesis)")
                continue
            host = m.group(1)
            if "/" in host and not host.startswith("gss/"):
                try:
                    ipaddress.IPv4Network(host, strict=False)
                except ValueError:
                    problems.append(f"{where}: {host!r} is not a network")
            for opt in (m.group(3) or "").split(","):
                if opt and opt not in NFS_OPTIONS and opt.split("=", 1)[0] not in \
                        NFS_VALUED_OPTIONS:
                    problems.append(f"{where}: unknown export option {opt!r} for {host}")
    return problems


def check_daemon_json(tree: Path, conf: Path, require: bool) -> list[str]:
    try:
        data = json.loads(conf.read_text())
    except ValueError as exc:
        return [f"/etc/docker/daemon.json: not JSON: {exc}"]
    if not isinstance(data, dict):
        return ["/etc/docker/daemon.json: dockerd wants a JSON object"]
    if data.get("live-restore") is True:
        return ["/etc/docker/daemon.json: live-restore is incompatible with swarm mode"]
    return []


def check_ssh_config(tree: Path, conf: Path, require: bool) -> list[str]:
    shown = "/" + conf.relative_to(tree).as_posix()
    tool, problems = _tool("ssh", "openssh-client", require, shown)
    if tool is None:
        return problems
    code, out = _run([tool, "-G", "-F", str(conf), "pibake-check"])
    return [] if code == 0 else [f"{shown}: ssh -G: {_first_lines(out, tree)}"]


def check_python(tree: Path, folder: Path, require: bool) -> list[str]:
    """The deployer's fabfile and testinfra suite at least compile."""
    problems = []
    for script in sorted(folder.rglob("*.py")):
        shown = "/" + script.relative_to(tree).as_posix()
        try:
            compile(script.read_text(), shown, "exec")
        except SyntaxError as exc:
            problems.append(f"{shown}:{exc.lineno}: python: {exc.msg}")
    return problems


def _credentials(tree: Path, unit: str) -> dict[str, Path]:
    """``LoadCredential=NAME:PATH`` of the unit's rendered drop-ins: where the
    service finds /run/credentials/UNIT/NAME, as a staged file."""
    found = {}
    for dropin in sorted((tree / f"etc/systemd/system/{unit}.d").glob("*.conf")):
        for m in re.finditer(r"^LoadCredential=([^:\s]+):(/\S+)$", dropin.read_text(), re.M):
            found[m.group(1)] = tree / m.group(2).lstrip("/")
    return found


def check_redis(tree: Path, conf: Path, require: bool) -> list[str]:
    """redis-server has no test mode, but it reads its whole config before it
    opens anything: started with ``--port 0`` it parses the file (and what it
    includes), says "Configuration loaded" and exits, listening nowhere."""
    tool, problems = _tool("redis-server", "redis-server", require, "/etc/redis/redis.conf")
    if tool is None:
        return problems
    creds = _credentials(tree, "redis-server.service")
    with tempfile.TemporaryDirectory(prefix="pibake-redis-") as tmp:
        text = conf.read_text()
        for name, path in creds.items():
            text = text.replace(f"/run/credentials/redis-server.service/{name}", str(path))
        staged = Path(tmp) / "redis.conf"
        staged.write_text(text)
        code, out = _run([tool, str(staged), "--port", "0", "--dir", tmp, "--pidfile",
                          f"{tmp}/pid", "--supervised", "no", "--daemonize", "no",
                          "--logfile", "", "--save", "", "--appendonly", "no"])
    if "Configuration loaded" in out:
        return []
    lines = [ln.strip() for ln in out.replace(tmp, "").splitlines()
             if ln.strip() and "FATAL CONFIG FILE ERROR" not in ln]
    return [f"{_redis_culprit(tree, conf, creds, out)}: redis-server: "
            f"{'; '.join(lines[:3]) or f'exit {code}'}"]


def _redis_culprit(tree: Path, conf: Path, included: dict[str, Path], out: str) -> str:
    """Which file holds the line redis-server quotes: it gives a line number
    but not the file, and an included file counts its lines from 1."""
    m = re.search(r"at line (\d+)\n>>> '(.*)'", out)
    if m:
        n = int(m.group(1))
        for path in (conf, *included.values()):
            lines = path.read_text().splitlines() if path.is_file() else []
            if n <= len(lines) and lines[n - 1].split()[:1] == m.group(2).split()[:1]:
                return "/" + path.relative_to(tree).as_posix()
    return "/etc/redis/redis.conf"


def check_vsftpd(tree: Path, conf: Path, require: bool) -> list[str]:
    """vsftpd has no test mode either. Run as if from inetd (listen=NO after
    the file, so it never listens) it parses the file first and reports a bad
    line on its control connection, here a scratch file: every such error
    names the config file; anything later (no peer on the control connection)
    means the file parsed."""
    tool, problems = _tool("vsftpd", "vsftpd", require, "/etc/vsftpd.conf")
    if tool is None:
        return problems
    with tempfile.TemporaryFile() as control:
        try:
            subprocess.run([tool, str(conf), "-olisten=NO", "-olisten_ipv6=NO"],
                           stdin=control, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return [f"/etc/vsftpd.conf: vsftpd: did not finish in {TIMEOUT}s"]
        control.seek(0)
        said = control.read().decode(errors="replace").replace(str(tree), "").strip()
    if "config file" not in said:
        return []
    return [f"/etc/vsftpd.conf: vsftpd: {said.removeprefix('500 OOPS: ')}"]


UNIT_SUFFIXES = (".service", ".mount", ".automount", ".socket", ".timer", ".path")


def check_units(tree: Path, folder: Path, require: bool) -> list[str]:
    """Our own unit files, by ``systemd-analyze verify``. It exits 0 on an
    unknown key, so every line it says about the file counts."""
    units = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in UNIT_SUFFIXES)
    if not units:
        return []
    tool, problems = _tool("systemd-analyze", "systemd", require, "/etc/systemd/system")
    if tool is None:
        return problems
    problems = []
    for unit in units:
        shown = "/" + unit.relative_to(tree).as_posix()
        code, out = _run([tool, "verify", "--man=no", str(unit)])
        lines = [ln for ln in out.splitlines() if str(unit) in ln]
        if code != 0 or lines:
            problems.append(f"{shown}: systemd-analyze verify: "
                            f"{_first_lines(chr(10).join(lines) or out, tree)}")
    return problems


CHECKS: tuple[tuple[str, Checker], ...] = (
    ("etc/haproxy/haproxy.cfg", check_haproxy),
    ("etc/nginx/sites-available/default", check_nginx),
    ("etc/keepalived/keepalived.conf", check_keepalived),
    ("etc/exports", check_exports),
    ("etc/docker/daemon.json", check_daemon_json),
    ("etc/ssh/ssh_config.d/10-pibake-cluster.conf", check_ssh_config),
    ("opt/pibake/deploy", check_python),
    ("etc/systemd/system", check_units),
    ("etc/redis/redis.conf", check_redis),
    ("etc/vsftpd.conf", check_vsftpd),
)


def check_tree(tree: Path, require: bool = True) -> list[str]:
    """Every problem the role checkers find in a tree of rendered files."""
    problems: list[str] = []
    for rel, checker in CHECKS:
        path = tree / rel
        if path.is_file() or (path.is_dir() and checker in (check_python, check_units)):
            problems += checker(tree, path, require)
    return problems


TOOLS = ("haproxy", "nginx", "keepalived", "ssh", "systemd-analyze", "redis-server", "vsftpd")


def _tools_fingerprint() -> list[tuple[str, str | None, int]]:
    """Which checker binaries would run, and their versions' stand-in (mtime)."""
    result = []
    for name in TOOLS:
        path, _ = _tool(name, name, False, "")
        result.append((name, path, Path(path).stat().st_mtime_ns if path else 0))
    return result


def check_rendered(host: str, rendered: list[Rendered] | tuple[Rendered, ...],
                   require: bool = True) -> int:
    """Write the host's rendered files to a scratch tree and check them; the
    first problem stops the build as one line naming the host. A pass is
    remembered by the hash of the files and the checkers, so a warm build
    with unchanged configs does not run them again."""
    key = cache.key_of("rolecheck", 1, require, _tools_fingerprint(),
                       sorted((r.dest, hashlib.sha256(r.data).hexdigest()) for r in rendered))
    stamp = cache.cache_dir() / "checks" / key
    applicable = {rel for r in rendered for rel, _ in CHECKS
                  if r.dest.lstrip("/").startswith(rel)}
    if stamp.exists():
        return len(applicable)
    with tempfile.TemporaryDirectory(prefix="pibake-check-") as tmp:
        tree = Path(tmp)
        stage(tree, rendered)
        problems = check_tree(tree, require)
    missing = [p for p in problems if "is not installed on this host" in p]
    if missing:
        raise PreflightError(f"{host}: {missing[0]}")
    if problems:
        first = problems[0]
        source = next((r.source for r in rendered if first.startswith(r.dest + ":")), None)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{host}: {first}{more}" + (f"; fix {source}" if source else ""))
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(host + "\n")
    return len(applicable)
