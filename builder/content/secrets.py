"""The cluster's secrets store: every key, certificate and password, kept outside git.

Where: ``$PIBAKE_SECRETS``, else ``cluster.secrets_dir`` of cluster.yaml
(relative to the project), else ``secrets/`` beside ``profiles/`` (git-ignored).
The folder is 0700 and every file 0600; a store others can read is refused.

Layout (one item = its files; the last file of an item is written last, so
its presence means the item is complete, and an interrupted write is redone)::

    ca/ssh_host_ca.pub ca/ssh_host_ca          signs every host key (host certificates)
    ca/ssh_user_ca.pub ca/ssh_user_ca          trusted by every sshd (TrustedUserCAKeys)
    ca/tls_root_ca.crt ca/tls_root_ca.key      the cluster's X.509 root
    hosts/HOST/host_secret                     machine-id and other per-host values derive from it
    hosts/HOST/ssh_host_TYPE_key.pub ..._key   the host's SSH host keys (base_ssh_host_key_types)
    hosts/HOST/ssh_host_TYPE_key-cert.pub      signed by the host CA for its names and address
    shared/NAME (+ NAME.pub)                   a layer's declared secret (layer.yaml secrets:)
    known_hosts                                the one @cert-authority line for the cluster

Keys and certificates come from ssh-keygen and openssl; random values from
the ``secrets`` module. Nothing is ever overwritten except by ``rotate``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets as random
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder import cache, log
from builder.errors import ConfigError, SecretsError
from builder.inventory.config import Inventory
from builder.inventory.layers import CA_SECRETS, SecretKind
from builder.run import run, which

ENV = "PIBAKE_SECRETS"
DEFAULT_KEY_TYPES = ("ed25519",)    # when no selected layer sets base_ssh_host_key_types
PARTS = {
    SecretKind.password: ("value",),
    SecretKind.tsig: ("value", "secret"),
    SecretKind.ssh_key: ("value", "public"),
    SecretKind.ssh_ca: ("value", "public"),
    SecretKind.x509_ca: ("value", "public"),
}


@dataclass(frozen=True)
class Declared:
    """A named secret and the hosts that hold it (those whose layers declare it)."""

    name: str
    kind: SecretKind
    holders: tuple[str, ...]


@dataclass(frozen=True)
class Item:
    name: str                   # what `list` shows and `rotate` takes
    kind: str
    files: tuple[str, ...]      # relative to the store; the last one marks it complete
    holders: tuple[str, ...]    # hosts whose images carry it
    rebuild: tuple[str, ...]    # hosts whose images change when it is rotated
    make: Callable[[Path], None]    # writes the files (by base name) into a scratch folder
    then: tuple[str, ...] = ()  # items made again after this one is rotated (certificates)


def declared(inv: Inventory) -> dict[str, Declared]:
    """Every secret the inventory's layers declare, the CAs always among them."""
    kinds: dict[str, tuple[SecretKind, str]] = {n: (k, "") for n, k in CA_SECRETS.items()}
    for layer in inv.layers.values():
        for name, kind in layer.secrets.items():
            known = kinds.get(name)
            if known is not None and known[0] != kind:
                raise ConfigError(f"{layer.shown}/layer.yaml: secrets.{name}: kind {kind!r}, but "
                                  f"{known[1] or 'the CA'} declares it as {str(known[0])!r}; "
                                  "use one kind")
            kinds[name] = (kind, known[1] if known and known[1] else f"{layer.shown}/layer.yaml")
    result = {}
    for name, (kind, _) in sorted(kinds.items()):
        holders = [h for h in inv.profiles
                   if any(name in inv.layers[n].secrets for n in inv.profile(h).layers)]
        result[name] = Declared(name, kind, tuple(holders))
    return result


def host_secret_names(inv: Inventory, host: str) -> list[str]:
    """The declared secrets ``host`` holds, by name."""
    return [d.name for d in declared(inv).values() if host in d.holders]


def key_types(inv: Inventory, host: str) -> tuple[str, ...]:
    value = inv.host_vars(host).get("base_ssh_host_key_types", DEFAULT_KEY_TYPES)
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        return DEFAULT_KEY_TYPES    # the base layer's template reports a bad value in one line
    return tuple(str(t) for t in value)


def principals(inv: Inventory, host: str) -> list[str]:
    return [host, f"{host}.{inv.cluster.domain}", str(inv.node(host).ip)]


def store_location(inv: Inventory) -> tuple[Path, str]:
    """(path, how it is shown in messages)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env), env
    if inv.cluster.secrets_dir:
        path = Path(inv.cluster.secrets_dir)
        shown = inv.cluster.secrets_dir.rstrip("/")
        return (path if path.is_absolute() else inv.root / path), shown
    return inv.root / "secrets", "secrets"


def _b64(n: int) -> str:
    return base64.b64encode(random.token_bytes(n)).decode()


def _write_host_secret(folder: Path) -> None:
    (folder / "host_secret").write_text(random.token_hex(32) + "\n")


def tsig_text(name: str, secret: str) -> str:
    # byte for byte what `tsig-keygen -a hmac-sha256 NAME` prints
    return f'key "{name}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n'


# What each kind of file must look like: a file that does not is refused, not used.
PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "ssh-private": (re.compile(r"\A-----BEGIN OPENSSH PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+"
                               r"-----END OPENSSH PRIVATE KEY-----\n\Z"), "an OpenSSH private key"),
    "ssh-public": (re.compile(r"\A(ssh-ed25519|ecdsa-sha2-nistp\d+|ssh-rsa) [A-Za-z0-9+/=]+"
                              r"( [^\n]*)?\n\Z"), "an OpenSSH public key"),
    "ssh-cert": (re.compile(r"\A\S+-cert-v01@openssh\.com [A-Za-z0-9+/=]+( [^\n]*)?\n\Z"),
                 "an OpenSSH certificate"),
    "x509-key": (re.compile(r"\A-----BEGIN PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+"
                            r"-----END PRIVATE KEY-----\n\Z"), "a PEM private key"),
    "x509-cert": (re.compile(r"\A-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+"
                             r"-----END CERTIFICATE-----\n\Z"), "a PEM certificate"),
    "password": (re.compile(r"\A[A-Za-z0-9_-]{32}\n?\Z"), "a password (32 random characters)"),
    "host-secret": (re.compile(r"\A[0-9a-f]{64}\n\Z"), "a host secret (64 hex digits)"),
    "tsig": (re.compile(r'\Akey "[a-z0-9_.-]+" \{\n\talgorithm hmac-sha\d+;\n'
                        r'\tsecret "[A-Za-z0-9+/=]+";\n\};\n\Z'), "a TSIG key (tsig-keygen)"),
}


def _pattern_for(rel: str, kind: str) -> str:
    if rel.endswith("-cert.pub"):
        return "ssh-cert"
    if rel.endswith(".pub"):
        return "ssh-public"
    if rel.endswith(".crt"):
        return "x509-cert"
    if rel.endswith(".key"):
        return "x509-key"
    if rel.endswith("host_secret"):
        return "host-secret"
    return {"password": "password", "tsig": "tsig"}.get(kind, "ssh-private")


class Store:
    """The store at ``path``; every read checks permissions and the file's kind."""

    def __init__(self, inv: Inventory, path: Path, shown: str) -> None:
        self.inv = inv
        self.path = path
        self.shown = shown
        self._items: dict[str, Item] | None = None

    @classmethod
    def at(cls, inv: Inventory) -> Store:
        path, shown = store_location(inv)
        return cls(inv, path, shown)

    # --- safety ----------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists() or self.path.is_symlink()

    def check(self) -> None:
        """Refuse a store that is not a private folder of private files."""
        if not self.exists():
            raise SecretsError(f"{self.shown}: no secrets store; create it with: pibake secrets "
                               f"init (or set {ENV} to where yours is)")
        st = self.path.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise SecretsError(f"{self.shown}: not a folder; the secrets store is a folder "
                               f"(move the file away, or set {ENV})")
        if st.st_mode & 0o077:
            raise SecretsError(f"{self.shown}: mode {stat.S_IMODE(st.st_mode):04o} lets other "
                               "users into the cluster's secrets; run: chmod 700 "
                               f"{self.shown}")
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                if name.startswith(".tmp-"):
                    continue
                mode = stat.S_IMODE(p.lstat().st_mode)
                if mode & 0o077:
                    rel = self._shown(p)
                    raise SecretsError(f"{rel}: mode {mode:04o} lets other users read a secret; "
                                       f"run: chmod {'700' if p.is_dir() else '600'} {rel}")

    def _shown(self, p: Path) -> str:
        return f"{self.shown}/{p.relative_to(self.path).as_posix()}"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time: two builds must not each make a CA."""
        created = not self.exists()
        if created:
            self.path.mkdir(mode=0o700, parents=True)
            os.chmod(self.path, 0o700)
            log.notice(f"created the secrets store {self.shown} (0700; keep it out of git and "
                       "back it up: a rebuilt node needs its keys from it)")
        self.check()
        old_umask = os.umask(0o077)     # whatever a tool writes here is private
        try:
            with cache.exclusive(self.path / ".lock", f"{self.shown}: another pibake is "
                                 "writing the secrets store; waiting for it", log.notice):
                for stale in self.path.glob(".tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)   # an interrupted write, never used
                yield
        finally:
            os.umask(old_umask)

    # --- items -----------------------------------------------------------

    def items(self) -> dict[str, Item]:
        if self._items is None:
            self._items = self._make_items()
        return self._items

    def _make_items(self) -> dict[str, Item]:
        inv = self.inv
        every = tuple(inv.profiles)
        decl = declared(inv)
        name = inv.cluster.name
        out: dict[str, Item] = {}
        certs = [f"{h}/ssh_host_{t}_key-cert" for h in every for t in key_types(inv, h)]
        for ca in ("ssh_host_ca", "ssh_user_ca"):
            out[ca] = Item(ca, "ssh-ca", (f"ca/{ca}.pub", f"ca/{ca}"), decl[ca].holders, every,
                           self._ssh_keygen(f"{ca}", f"{name} {ca.replace('_', ' ')}"),
                           tuple(certs) if ca == "ssh_host_ca" else ())
        out["tls_root_ca"] = Item("tls_root_ca", "x509-ca",
                                  ("ca/tls_root_ca.crt", "ca/tls_root_ca.key"),
                                  decl["tls_root_ca"].holders, every, self._x509_ca)
        for h in every:
            out[f"{h}/host_secret"] = Item(
                f"{h}/host_secret", "host-secret", (f"hosts/{h}/host_secret",), (h,), (h,),
                _write_host_secret)
            for t in key_types(inv, h):
                key = f"ssh_host_{t}_key"
                out[f"{h}/{key}"] = Item(
                    f"{h}/{key}", "ssh-host-key", (f"hosts/{h}/{key}.pub", f"hosts/{h}/{key}"),
                    (h,), (h,), self._ssh_keygen(key, f"root@{h}", t), (f"{h}/{key}-cert",))
                out[f"{h}/{key}-cert"] = Item(
                    f"{h}/{key}-cert", "ssh-host-cert", (f"hosts/{h}/{key}-cert.pub",), (h,),
                    (h,), self._signer(h, key))
        for d in decl.values():
            if d.name in CA_SECRETS:
                continue
            files = (f"shared/{d.name}.pub", f"shared/{d.name}") \
                if d.kind is SecretKind.ssh_key else (f"shared/{d.name}",)
            out[d.name] = Item(d.name, str(d.kind), files, d.holders, d.holders,
                               self._shared_maker(d))
        return out

    def _ssh_keygen(self, base: str, comment: str, type_: str = "ed25519"
                    ) -> Callable[[Path], None]:
        def make(d: Path) -> None:
            run([which("ssh-keygen", "openssh-client"), "-q", "-t", type_, "-N", "", "-C",
                 comment, "-f", d / base], what="ssh-keygen")
        return make

    def _signer(self, host: str, key: str) -> Callable[[Path], None]:
        def make(d: Path) -> None:
            shutil.copyfile(self.path / f"hosts/{host}/{key}.pub", d / f"{key}.pub")
            run([which("ssh-keygen", "openssh-client"), "-q", "-s",
                 self.path / "ca/ssh_host_ca", "-h", "-I", f"{self.inv.cluster.name}:{host}",
                 "-n", ",".join(principals(self.inv, host)), d / f"{key}.pub"],
                what="ssh-keygen -s")
        return make

    def _x509_ca(self, d: Path) -> None:
        run([which("openssl", "openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650", "-subj",
             f"/CN={self.inv.cluster.name} root CA", "-addext",
             "basicConstraints=critical,CA:TRUE", "-addext",
             "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", d / "tls_root_ca.key", "-out", d / "tls_root_ca.crt"],
            what="openssl req")

    def _shared_maker(self, d: Declared) -> Callable[[Path], None]:
        def make(folder: Path) -> None:
            if d.kind is SecretKind.password:
                (folder / d.name).write_text(random.token_urlsafe(24) + "\n")
            elif d.kind is SecretKind.tsig:
                (folder / d.name).write_text(tsig_text(d.name.replace("_", "-"), _b64(32)))
            else:
                self._ssh_keygen(d.name, f"{self.inv.cluster.name} {d.name}")(folder)
        return make

    def item(self, name: str) -> Item:
        items = self.items()
        if name not in items:
            from builder.inventory.schema import suggest
            raise SecretsError(f"{name}: no such secret in the inventory; see pibake secrets list"
                               f"{suggest(name, items)}")
        return items[name]

    def complete(self, item: Item) -> bool:
        return (self.path / item.files[-1]).is_file()

    def _write(self, item: Item) -> None:
        """Make ``item`` in a scratch folder inside the store and rename its
        files into place, the marking file last."""
        with tempfile.TemporaryDirectory(dir=self.path, prefix=".tmp-") as t:
            scratch = Path(t)
            item.make(scratch)
            for rel in item.files:
                src = scratch / Path(rel).name
                dest = self.path / rel
                for parent in reversed(dest.relative_to(self.path).parents[:-1]):
                    (self.path / parent).mkdir(mode=0o700, exist_ok=True)
                os.chmod(src, 0o600)
                os.replace(src, dest)

    def ensure(self, names: list[str]) -> list[str]:
        """Create the items named (and anything they need) that are missing;
        return the names created. Never replaces a complete item."""
        created = []
        items = self.items()
        with self.locked():
            for n in names:
                item = items[n]
                if self.complete(item):
                    continue
                self._write(item)
                created.append(n)
            for n in names:
                self.validate(items[n])
                if items[n].kind == "ssh-host-cert" and n not in created:
                    self._resign_if_renamed(items[n])
            self._write_known_hosts()
        return created

    def _resign_if_renamed(self, item: Item) -> None:
        """A host whose name or address changed gets a certificate for the new
        ones (the key stays): a stale one would fail every strict client."""
        host = item.name.split("/", 1)[0]
        out = run([which("ssh-keygen", "openssh-client"), "-L", "-f",
                   self.path / item.files[-1]], capture=True, what="ssh-keygen -L").stdout
        listed = out.decode().split("Principals:", 1)[-1].split("Critical Options:", 1)[0]
        if listed.split() != principals(self.inv, host):
            self._write(item)
            log.notice(f"{self.shown}/{item.files[-1]}: re-signed for {host}'s current names "
                       f"({', '.join(principals(self.inv, host))}); rebuild {host}")

    def validate(self, item: Item) -> None:
        for rel in item.files:
            p = self.path / rel
            shown = f"{self.shown}/{rel}"
            if not p.is_file():
                raise SecretsError(f"{shown}: missing although {self.shown}/{item.files[-1]} "
                                   f"exists; restore it from a backup or run: pibake secrets "
                                   f"rotate {item.name}")
            pattern, what = PATTERNS[_pattern_for(rel, item.kind)]
            try:
                text = p.read_text()
            except (UnicodeDecodeError, OSError):
                text = ""
            if not pattern.match(text):
                raise SecretsError(f"{shown}: not {what}; restore it from a backup or run: "
                                   f"pibake secrets rotate {item.name}")

    def _write_known_hosts(self) -> None:
        ca = self.path / "ca/ssh_host_ca.pub"
        if not ca.is_file():
            return
        text = known_hosts_line(self.inv, ca.read_text().strip()) + "\n"
        target = self.path / "known_hosts"
        if not target.is_file() or target.read_text() != text:
            tmp = self.path / ".known_hosts.new"
            tmp.write_text(text)
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)

    # --- what commands and builds use -------------------------------------

    def for_host(self, host: str) -> list[str]:
        """The names of the items ``host``'s image needs."""
        items = self.items()
        need = ["ssh_host_ca", "ssh_user_ca", "tls_root_ca", f"{host}/host_secret"]
        for t in key_types(self.inv, host):
            need += [f"{host}/ssh_host_{t}_key", f"{host}/ssh_host_{t}_key-cert"]
        need += [n for n in host_secret_names(self.inv, host) if n in items and n not in need]
        return need

    def init(self) -> list[str]:
        names = list(self.items())
        # the host CA first: certificates are signed with it
        return self.ensure(["ssh_host_ca"] + [n for n in names if n != "ssh_host_ca"])

    def rotate(self, name: str) -> tuple[list[str], list[str]]:
        """Replace ``name`` (and re-sign what depends on it); (renewed, hosts to rebuild)."""
        item = self.item(name)
        if not self.exists():
            self.check()
        renewed = [name, *item.then]
        with self.locked():
            missing = [n for n in self._prerequisites(renewed) if n not in renewed
                       and not self.complete(self.items()[n])]
            for n in missing:
                self._write(self.items()[n])
            for n in renewed:
                self._write(self.items()[n])
            self._write_known_hosts()
        return renewed, list(item.rebuild)

    def _prerequisites(self, names: list[str]) -> list[str]:
        """What must exist before ``names`` can be made (a cert needs its key and the CA)."""
        needs = []
        for n in names:
            if n.endswith("-cert"):
                needs += ["ssh_host_ca", n.removesuffix("-cert")]
        return needs

    def read(self, rel: str) -> str:
        p = self.path / rel
        try:
            return p.read_text()
        except OSError as exc:
            raise SecretsError(f"{self.shown}/{rel}: cannot read it ({exc.strerror}); run: "
                               "pibake secrets init") from None

    def value(self, name: str, part: str) -> str:
        item = self.item(name)
        kind = declared(self.inv)[name].kind
        if kind is SecretKind.tsig and part == "secret":
            m = re.search(r'secret "([^"]+)"', self.read(item.files[-1]))
            return m.group(1) if m else ""
        if part == "public":
            return self.read(item.files[0]).strip()
        return self.read(item.files[-1]).rstrip("\n") if kind is SecretKind.password \
            else self.read(item.files[-1])

    def sign_user(self, pub: Path, principal: str, validity: str) -> tuple[Path, str]:
        """Certify the SSH public key ``pub`` with the user CA for logins as
        ``principal``; the certificate goes beside it as ``NAME-cert.pub``,
        where ssh looks for it. Returns the certificate and its validity line."""
        keygen = which("ssh-keygen", "openssh-client")
        if not pub.is_file():
            raise SecretsError(f"{pub}: no such file; name your SSH public key "
                               "(e.g. ~/.ssh/id_ed25519.pub)")
        if not pub.name.endswith(".pub"):
            raise SecretsError(f"{pub}: not a public key file (*.pub); name the .pub file, "
                               "never the private key")
        probe = run([keygen, "-l", "-f", pub], capture=True, check=False, what="ssh-keygen -l")
        if probe.returncode != 0 or "-cert.pub" in pub.name:
            raise SecretsError(f"{pub}: not an SSH public key; name the .pub file ssh-keygen "
                               "wrote beside your private key")
        if not re.fullmatch(r"\+?\d+[mhdw]|forever", validity):
            raise SecretsError(f"--validity {validity!r}: expected a duration such as 52w, "
                               "30d or 12h, or forever")
        self.ensure(["ssh_user_ca"])
        comment = pub.read_text().split()[2:3] or [pub.stem]
        argv: list[str | os.PathLike[str]] = [
            keygen, "-q", "-s", self.path / "ca/ssh_user_ca",
            "-I", f"{self.inv.cluster.name}:{principal}:{comment[0]}", "-n", principal]
        if validity != "forever":
            argv += ["-V", "+" + validity.lstrip("+")]
        run([*argv, pub], what="ssh-keygen -s")
        cert = pub.with_name(pub.name.removesuffix(".pub") + "-cert.pub")
        shown = run([keygen, "-L", "-f", cert], capture=True, what="ssh-keygen -L")
        valid = next((ln.strip() for ln in shown.stdout.decode().splitlines()
                      if ln.strip().startswith("Valid:")), "Valid: ?")
        return cert, valid

    def host_hmac(self, host: str, purpose: str) -> bytes:
        """A value unique to ``host`` and ``purpose`` that nobody without the store can guess."""
        key = self.read(f"hosts/{host}/host_secret").strip().encode()
        return hmac.new(key, f"pibake:{purpose}".encode(), hashlib.sha256).digest()

    def listing(self) -> list[tuple[str, str, str, str]]:
        """(name, kind, created, holders) per item; never a value."""
        rows = []
        for item in self.items().values():
            marker = self.path / item.files[-1]
            created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(marker.stat().st_mtime)) \
                if marker.is_file() else "missing"
            holders = ", ".join(item.holders) if item.holders else "-"
            if item.kind in ("ssh-ca", "x509-ca"):
                holders = f"private: {holders}; public: every host"
            rows.append((item.name, item.kind, created, holders))
        return rows


class StandIns:
    """What ``pibake check`` and ``pibake render`` give templates instead of
    secrets: values of the right shape that are plainly not secret."""

    def __init__(self, inv: Inventory) -> None:
        self.inv = inv

    def value(self, name: str, part: str) -> str:
        kind = declared(self.inv)[name].kind
        fake = base64.b64encode(hashlib.sha256(f"stand-in:{name}".encode()).digest()).decode()
        if kind is SecretKind.password:
            return f"stand-in-{name}"
        if kind is SecretKind.tsig:
            return fake if part == "secret" else tsig_text(name.replace("_", "-"), fake)
        if kind is SecretKind.x509_ca:
            pem = "CERTIFICATE" if part == "public" else "PRIVATE KEY"
            return f"-----BEGIN {pem}-----\nstand-in for {name}\n-----END {pem}-----\n"
        if part == "public":
            return f"ssh-ed25519 AAAAstand-in {name}"
        return (f"-----BEGIN OPENSSH PRIVATE KEY-----\nstand-in for {name}\n"
                "-----END OPENSSH PRIVATE KEY-----\n")


SecretSource = Store | StandIns


def accessor(inv: Inventory, layer_name: str, source: SecretSource | None,
             where: Callable[[], str], used: list[str]) -> Callable[..., str]:
    """The templates' ``secret(name, part="value")``: only for secrets the
    layer declares (the CAs' public halves for any layer)."""
    layer = inv.layers[layer_name]
    src: SecretSource = source if source is not None else StandIns(inv)

    def secret(name: str, part: str = "value") -> str:
        kind = layer.secrets.get(name) or CA_SECRETS.get(name)
        if kind is not None and part not in PARTS[kind]:
            raise ConfigError(f"{where()}: secret({name!r}, {part!r}): a {kind} has no part "
                              f"{part!r} (known: {', '.join(PARTS[kind])})")
        if kind is None or (name not in layer.secrets and part != "public"):
            raise ConfigError(f"{where()}: secret({name!r}): layer {layer.name} does not declare "
                              f"it; add '{name}: password|tsig|ssh-key' under secrets: in "
                              f"{layer.shown}/layer.yaml")
        if part != "public":
            used.append(name)
        return src.value(name, part)
    return secret


def known_hosts_line(inv: Inventory, ca_pub: str) -> str:
    """The one known_hosts line that makes ssh trust every node of the cluster."""
    names = [f"*.{inv.cluster.domain}"]
    for node in inv.cluster.nodes.values():
        names += [node.name, str(node.ip)]
    return f"@cert-authority {','.join(names)} {ca_pub}"

