"""Layers: folders under ``layers/`` whose parts are switched on by presence.

A layer may hold ``layer.yaml`` (description, requires), ``defaults.yaml``
(every var prefixed ``<layer>_``, each with a comment), ``packages`` (one per
line, ``#`` comments) and ``packages.<suite>`` overrides, ``files/`` (copied
as is, modes kept), ``templates/**/*.j2`` (rendered per host), ``hooks.d/NN-*.sh``
(run in the image's emulated chroot), ``firstboot.d/NN-*.sh`` (handed to the
first-boot runner) and ``README.md``. layer.yaml's ``generate:`` names build-host
tools (content/generate.py) that turn a folder of rendered files into more
files per host, e.g. a Hugo site into HTML. Everything is checked here, before
any image work starts.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from builder.content.generate import GENERATORS
from builder.errors import ConfigError
from builder.inventory.schema import (
    VAR_RE,
    Reader,
    known_list,
    load_yaml,
    read_source,
    read_source_bytes,
    short,
    suggest,
)
from builder.inventory.vartypes import load_types

LAYER_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
SCRIPT_RE = re.compile(r"^[0-9]{2}-[A-Za-z0-9][A-Za-z0-9_.-]*\.sh$")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9]+)?$")
SECRET_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class SecretKind(StrEnum):
    """What a named secret is; the store generates and checks each kind."""

    password = "password"      # 32 random URL-safe characters
    tsig = "tsig"              # a BIND key statement, as tsig-keygen writes it
    ssh_key = "ssh-key"        # an ed25519 key pair (secret(name, "public") for the .pub)
    ssh_ca = "ssh-ca"          # only ssh_host_ca and ssh_user_ca: the holder gets the private key
    x509_ca = "x509-ca"        # only tls_root_ca


# The cluster's certificate authorities: every image carries their public
# halves; a layer that declares one puts its private key into its hosts' images.
CA_SECRETS = {"ssh_host_ca": SecretKind.ssh_ca, "ssh_user_ca": SecretKind.ssh_ca,
              "tls_root_ca": SecretKind.x509_ca}

KNOWN_PARTS = {
    "layer.yaml", "defaults.yaml", "packages", "files", "templates", "hooks.d",
    "firstboot.d", "README.md",
}


@dataclass(frozen=True)
class FileItem:
    """One entry a layer puts into the image (from files/ or a rendered template)."""

    src: Path           # the file in the layer
    dest: str           # absolute path in the image
    mode: int           # permission bits (incl. setuid etc.)
    kind: str           # "file" | "dir" | "symlink"
    target: str = ""    # for symlinks
    owner: str = ""     # "user:group" (names or numbers) from layer.yaml owners:; "" = root


@dataclass(frozen=True)
class Generate:
    """One ``generate:`` entry of layer.yaml: ``tool`` builds the layer's
    rendered files under ``source`` into files under ``dest`` (image paths)."""

    index: int          # its place in the list, for messages: generate[0]
    tool: str           # a key of content.generate.GENERATORS
    source: str         # a folder of the layer's templates/ or files/
    dest: str           # a folder of its own, neither inside nor around source


@dataclass(frozen=True)
class Layer:
    name: str
    path: Path
    shown: str                              # "layers/compute"
    description: str
    requires: tuple[str, ...]
    defaults: Mapping[str, Any]
    packages: tuple[str, ...]
    package_overrides: Mapping[str, tuple[str, ...]]
    files: tuple[FileItem, ...]
    templates: tuple[FileItem, ...]        # src = .j2 file, dest = output path
    hooks: tuple[Path, ...]
    firstboot: tuple[Path, ...]
    content_hash: str                       # every file of the layer
    secrets: Mapping[str, SecretKind] = field(default_factory=lambda: MappingProxyType({}))
    build_hash: str = field(default="")     # the parts that shape the role rootfs
    hook_vars: tuple[str, ...] = ()         # variables its hooks read (layer.yaml hook_vars:)
    creates_admin: bool = False             # a hook creates the cluster's admin account
    types: Mapping[str, str] = field(default_factory=dict)  # var -> vartypes name
    bases: tuple[str, ...] = ()             # layer.yaml bases: the only ones it works on; () = any
    addon: bool = False                     # hardware for some hosts, not a role of its own
    generate: tuple[Generate, ...] = ()     # build-host tools run per host (layer.yaml generate:)

    def packages_for(self, suite: str) -> tuple[str, ...]:
        return self.package_overrides.get(suite, self.packages)


def load_layers(root: Path) -> dict[str, Layer]:
    layers_dir = root / "layers"
    if not layers_dir.is_dir():
        raise ConfigError("layers/: folder not found; run pibake from the project folder or "
                          "pass --project DIR")
    result: dict[str, Layer] = {}
    for entry in sorted(layers_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise ConfigError(f"layers/{entry.name}: not a folder; a layer is a folder, "
                              "move the file into one")
        result[entry.name] = load_layer(entry, f"layers/{entry.name}")
    for layer in result.values():
        for req in layer.requires:
            if req not in result:
                raise ConfigError(
                    f"{layer.shown}/layer.yaml: requires: no layer named '{req}' "
                    f"(known: {known_list(result)}){suggest(req, result)}"
                )
    return result


def load_layer(path: Path, shown: str) -> Layer:
    name = path.name
    if not LAYER_NAME_RE.match(name):
        raise ConfigError(f"{shown}: layer names are lower-case letters, digits and '-'; "
                          "rename the folder")
    for part in sorted(os.listdir(path)):
        base = part.split(".", 1)[0] if part.startswith("packages.") else part
        if base not in KNOWN_PARTS and not part.startswith("packages."):
            raise ConfigError(
                f"{shown}/{part}: unknown layer part (known: {known_list(KNOWN_PARTS)})"
                f"{suggest(part, KNOWN_PARTS)}"
            )
        if (path / part).is_symlink() and not (path / part).exists():
            read_source_bytes(path / part, f"{shown}/{part}")  # says: broken symlink

    meta = Reader(load_yaml(path / "layer.yaml", f"{shown}/layer.yaml")
                  if (path / "layer.yaml").exists() else {},
                  f"{shown}/layer.yaml", "",
                  ["description", "requires", "modes", "owners", "secrets", "types",
                   "hook_vars", "creates_admin", "bases", "addon", "generate"])
    description = meta.text("description") if meta.has("description") else ""
    requires = meta.str_list("requires")
    bases = meta.str_list("bases")
    modes = _modes(meta)
    owners = _owners(meta)
    secrets = _secrets(meta)
    creates_admin, addon = (meta.raw(k, False) for k in ("creates_admin", "addon"))
    for key, value in (("creates_admin", creates_admin), ("addon", addon)):
        if not isinstance(value, bool):
            raise ConfigError(f"{meta.loc(key)}: {short(value)} is not true or false")

    defaults = _load_defaults(path, shown, name)
    types = load_types(meta, defaults)
    hook_vars = _hook_vars(meta, defaults)
    packages = _load_packages(path / "packages", f"{shown}/packages") \
        if (path / "packages").exists() else ()
    overrides = {
        p.name.split(".", 1)[1]: _load_packages(p, f"{shown}/{p.name}")
        for p in sorted(path.glob("packages.*"))
    }
    files = tuple(_walk_files(path / "files", f"{shown}/files", path))
    templates = tuple(_walk_templates(path / "templates", f"{shown}/templates", path))
    files, templates = _apply_modes(modes, files, templates, f"{shown}/layer.yaml")
    files, templates = _apply_owners(owners, files, templates, f"{shown}/layer.yaml")
    generate = _generate(meta, files, templates)
    hooks = _scripts(path / "hooks.d", f"{shown}/hooks.d")
    firstboot = _scripts(path / "firstboot.d", f"{shown}/firstboot.d")
    lint_hook_vars(name, shown, hooks, hook_vars)

    content_hash = tree_hash(path, shown=shown)
    build_parts = [p for p in ("layer.yaml", "packages", "files", "hooks.d") if (path / p).exists()]
    build_parts += [p.name for p in sorted(path.glob("packages.*"))]
    # secrets: and generate: are read in the host stage only: editing them never
    # rebuilds a role
    build_hash = tree_hash(path, only=build_parts, shown=shown,
                           text={"layer.yaml": _without_host_keys(path / "layer.yaml")})
    return Layer(
        name=name, path=path, shown=shown, description=description, requires=requires,
        defaults=MappingProxyType(defaults), packages=packages,
        package_overrides=MappingProxyType(overrides), files=files, templates=templates,
        hooks=hooks, firstboot=firstboot, content_hash=content_hash, build_hash=build_hash,
        hook_vars=hook_vars, creates_admin=creates_admin, bases=bases, addon=addon,
        secrets=MappingProxyType(secrets),
        types=MappingProxyType(types), generate=generate,
    )


def _generate(meta: Reader, files: tuple[FileItem, ...],
              templates: tuple[FileItem, ...]) -> tuple[Generate, ...]:
    """``generate: [{tool: hugo, source: /srv/hugo/site, dest: /var/www/site}]``."""
    value = meta.raw("generate", [])
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{meta.loc('generate')}: expected a list of entries like "
                          "{tool: hugo, source: /srv/site, dest: /var/www/site}, got "
                          f"{short(value)}")
    ours = [i.dest for i in files + templates if i.kind != "dir"]
    folders = {posixpath.dirname(d) for d in ours}
    folders |= {p for d in folders for p in _parents(d)}
    result = []
    for i, entry in enumerate(value):
        r = Reader(entry, meta.shown, f"generate[{i}]", ["tool", "source", "dest"])
        tool = r.text("tool", hint=f"name the tool, e.g. tool: hugo (known: "
                                   f"{known_list(GENERATORS)})")
        if tool not in GENERATORS:
            hint = suggest(tool, GENERATORS) or "; use one of these"
            raise ConfigError(f"{r.loc('tool')}: unknown tool {short(tool)} (known: "
                              f"{known_list(GENERATORS)}){hint}")
        source = _folder(r, "source", "the folder of this layer's templates or files to "
                                      "build, e.g. source: /srv/hugo/site")
        dest = _folder(r, "dest", "the folder the output goes to in the image, e.g. "
                                  "dest: /var/www/site")
        if not any(_under(d, source) for d in ours):
            hint = suggest(source, folders) or "; name a folder that holds some"
            raise ConfigError(f"{r.loc('source')}: no file of this layer's templates/ or "
                              f"files/ lies under {source}{hint}")
        if _under(dest, source) or _under(source, dest):
            raise ConfigError(f"{r.loc('dest')}: {dest} overlaps the source {source} (one "
                              "holds the other); give the output a folder outside it")
        result.append(Generate(i, tool, source, dest))
    return tuple(result)


def _folder(r: Reader, key: str, hint: str) -> str:
    """An absolute, normalised folder path in the image (not the root)."""
    value = r.text(key, hint=hint)
    if not value.startswith("/"):
        raise ConfigError(f"{r.loc(key)}: {short(value)} is not an absolute path in the "
                          f"image; write it as '/{value}'")
    norm = posixpath.normpath(value)
    if norm != value.rstrip("/") or norm.startswith("//"):
        raise ConfigError(f"{r.loc(key)}: {short(value)} is not a plain folder path; write it "
                          "without '.', '..' or '//', below /, e.g. /srv/site")
    return norm


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:n]) for n in range(1, len(parts))]


def _hook_vars(meta: Reader, defaults: dict[str, Any]) -> tuple[str, ...]:
    """``hook_vars: [web_port]``: the layer's variables its hooks read. Exactly
    these reach the hooks (as WEB_PORT) and enter the role's cache key."""
    names = meta.str_list("hook_vars")
    for i, key in enumerate(names):
        if key not in defaults:
            raise ConfigError(f"{meta.loc('hook_vars')}[{i}]: {key!r} is not a variable of this "
                              f"layer's defaults.yaml{suggest(key, defaults)}; declare it there")
    return tuple(names)


def lint_hook_vars(name: str, shown: str, hooks: tuple[Path, ...],
                   declared: tuple[str, ...]) -> None:
    """A hook that reads ``$WEB_PORT`` without ``hook_vars: [web_port]`` would
    get an empty value (and a role cached under the wrong key): refuse it."""
    prefix = name.replace("-", "_").upper() + "_"
    allowed = {k.upper() for k in declared}
    pattern = re.compile(r"\$\{?(" + re.escape(prefix) + r"[A-Z0-9_]+)")
    for hook in hooks:
        text = read_source(hook, f"{shown}/hooks.d/{hook.name}")
        for n, line in enumerate(text.splitlines(), 1):
            for found in pattern.findall(line):
                if found not in allowed:
                    raise ConfigError(
                        f"{shown}/hooks.d/{hook.name}:{n}: reads ${found}, which the layer does "
                        f"not pass to hooks; add {found.lower()} to hook_vars: in "
                        f"{shown}/layer.yaml")


def _modes(meta: Reader) -> dict[str, int]:
    """``modes: {/etc/sudoers.d/x: "0440"}``: git keeps only the run bit, so
    other permission bits of files and templates are declared here."""
    result = {}
    for dest, value in meta.mapping("modes").items():
        loc = meta.loc(f"modes.{dest}")
        if not isinstance(value, str) or not re.match(r"^0?[0-7]{3,4}$", value):
            raise ConfigError(f"{loc}: {short(value)} is not an octal mode; quote it, "
                              "e.g. \"0640\"")
        result[str(dest)] = int(value, 8)
    return result


OWNER_RE = re.compile(r"^([a-z_][a-z0-9_-]*|[0-9]+):([a-z_][a-z0-9_-]*|[0-9]+)$")


def _owners(meta: Reader) -> dict[str, str]:
    """``owners: {/etc/x.conf: "root:adm"}``: user and group (names, resolved in
    the image, or numbers) of files and templates that are not root's."""
    result = {}
    for dest, value in meta.mapping("owners").items():
        if not isinstance(value, str) or not OWNER_RE.match(value):
            raise ConfigError(f"{meta.loc(f'owners.{dest}')}: {short(value)} is not an owner; "
                              "write user:group, e.g. \"root:adm\" or \"1000:1000\"")
        result[str(dest)] = value
    return result


def _apply_owners(owners: dict[str, str], files: tuple[FileItem, ...],
                  templates: tuple[FileItem, ...], shown: str,
                  ) -> tuple[tuple[FileItem, ...], tuple[FileItem, ...]]:
    known = {i.dest for i in files + templates}
    for dest in owners:
        if dest not in known:
            raise ConfigError(f"{shown}: owners.{dest}: no such file in files/ or templates/ "
                              f"of this layer{suggest(dest, known)}")

    def fix(items: tuple[FileItem, ...]) -> tuple[FileItem, ...]:
        return tuple(replace(i, owner=owners[i.dest]) if i.dest in owners else i for i in items)
    return fix(files), fix(templates)


def resolve_owner(owner: str, passwd: str, group: str) -> tuple[int, int] | None:
    """(uid, gid) of "user:group" in an image's /etc/passwd and /etc/group text;
    None when a name is not there."""
    if not owner:
        return 0, 0
    user, grp = owner.split(":")

    def look(name: str, table: str) -> int | None:
        if name.isdigit():
            return int(name)
        for line in table.splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
        return None
    uid, gid = look(user, passwd), look(grp, group)
    return None if uid is None or gid is None else (uid, gid)


def _secrets(meta: Reader) -> dict[str, SecretKind]:
    """``secrets: {lanmain_xfer: tsig}``: the secrets this layer's templates
    read with ``secret(name)``; every host of the layer holds them."""
    result = {}
    kinds = [k.value for k in SecretKind]
    for name, kind in meta.mapping("secrets").items():
        loc = meta.loc(f"secrets.{name}")
        if not isinstance(name, str) or not SECRET_NAME_RE.match(name):
            raise ConfigError(f"{loc}: secret names are lower-case letters, digits and '_'")
        if kind not in kinds:
            raise ConfigError(f"{loc}: {short(kind)} is not a secret kind (known: "
                              f"{known_list(kinds)}){suggest(str(kind), kinds)}")
        want = CA_SECRETS.get(name)
        if (want is not None and kind != want) or (
                want is None and kind in (SecretKind.ssh_ca, SecretKind.x509_ca)):
            cas = ", ".join(f"{n}: {k}" for n, k in CA_SECRETS.items())
            raise ConfigError(f"{loc}: {kind!r} is only for the cluster's CAs ({cas}); "
                              "use password, tsig or ssh-key")
        result[name] = SecretKind(kind)
    return result


def _apply_modes(modes: dict[str, int], files: tuple[FileItem, ...],
                 templates: tuple[FileItem, ...], shown: str,
                 ) -> tuple[tuple[FileItem, ...], tuple[FileItem, ...]]:
    known = {i.dest for i in files + templates if i.kind != "symlink"}
    for dest in modes:
        if dest not in known:
            raise ConfigError(f"{shown}: modes.{dest}: no such file in files/ or templates/ "
                              f"of this layer{suggest(dest, known)}")

    def fix(items: tuple[FileItem, ...]) -> tuple[FileItem, ...]:
        return tuple(replace(i, mode=modes[i.dest]) if i.dest in modes else i for i in items)
    return fix(files), fix(templates)


def _load_defaults(path: Path, shown: str, name: str) -> dict[str, Any]:
    file = path / "defaults.yaml"
    if not file.exists():
        return {}
    where = f"{shown}/defaults.yaml"
    data = load_yaml(file, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of variables, got {short(data)}")
    prefix = name.replace("-", "_") + "_"
    lines = read_source(file, where).splitlines()
    for key in data:
        if not isinstance(key, str) or not VAR_RE.match(key):
            raise ConfigError(f"{where}: {short(key)}: variable names are lower-case "
                              "letters, digits and '_'")
        if not key.startswith(prefix):
            raise ConfigError(f"{where}: {key}: layer variables carry the layer's name as "
                              f"prefix; rename it to '{prefix}{key}'")
        if not _has_comment(lines, key):
            raise ConfigError(f"{where}: {key}: every default needs a comment saying what it "
                              "is (on its line or the line above)")
    return data


def _has_comment(lines: list[str], key: str) -> bool:
    for i, line in enumerate(lines):
        if line.startswith(f"{key}:"):
            if "#" in line.split(":", 1)[1]:
                return True
            return i > 0 and lines[i - 1].lstrip().startswith("#")
    return True  # not at top level in plain form (flow style): nothing to check


def _load_packages(file: Path, shown: str) -> tuple[str, ...]:
    result: list[str] = []
    for n, raw in enumerate(read_source(file, shown).splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        for pkg in line.split():
            if not PACKAGE_RE.match(pkg):
                raise ConfigError(f"{shown}:{n}: {pkg!r} is not a Debian package name; "
                                  "write one name per line, '#' for comments")
            result.append(pkg)
    return tuple(result)


def _inside(path: Path, layer_root: Path) -> bool:
    try:
        (path.parent.resolve() / os.readlink(path)).resolve().relative_to(layer_root.resolve())
    except ValueError:
        return False
    return True


def _walk_files(base: Path, shown: str, layer_root: Path) -> list[FileItem]:
    items: list[FileItem] = []
    if not base.exists():
        return items
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        d = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = d / name
            rel = p.relative_to(base).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(p)
                if os.path.isabs(target) or not _inside(p, layer_root):
                    raise ConfigError(
                        f"{shown}/{rel}: symlink points outside the layer (-> {target}); "
                        "copy the file into the layer, or create the link in a hooks.d script"
                    )
                items.append(FileItem(p, "/" + rel, 0o777, "symlink", target))
            elif stat.S_ISDIR(st.st_mode):
                items.append(FileItem(p, "/" + rel, stat.S_IMODE(st.st_mode), "dir"))
            elif stat.S_ISREG(st.st_mode):
                items.append(FileItem(p, "/" + rel, stat.S_IMODE(st.st_mode), "file"))
            else:
                raise ConfigError(f"{shown}/{rel}: not a regular file, folder or symlink; "
                                  "create device nodes and fifos in a hooks.d script")
    return items


def _walk_templates(base: Path, shown: str, layer_root: Path) -> list[FileItem]:
    items: list[FileItem] = []
    for item in _walk_files(base, shown, layer_root):
        if item.kind == "dir":
            continue
        rel = item.dest.lstrip("/")
        if item.kind != "file" or not rel.endswith(".j2"):
            raise ConfigError(f"{shown}/{rel}: templates must be files ending in .j2; "
                              "move other files to files/")
        read_source(item.src, f"{shown}/{rel}")  # the template engine reads UTF-8
        items.append(FileItem(item.src, item.dest[: -len(".j2")], item.mode, "file"))
    return items


def _scripts(base: Path, shown: str) -> tuple[Path, ...]:
    if not base.exists():
        return ()
    result = []
    for p in sorted(base.iterdir()):
        if p.name.startswith(".") or p.name == "README.md":
            continue
        if not SCRIPT_RE.match(p.name):
            raise ConfigError(f"{shown}/{p.name}: scripts are named NN-name.sh (two digits, "
                              "a dash, a name); rename it, e.g. '50-{}'".format(
                                  re.sub(r"[^A-Za-z0-9_.-]", "-", p.stem) + ".sh"))
        if not p.is_file() or p.is_symlink():
            raise ConfigError(f"{shown}/{p.name}: not a regular file")
        read_source(p, f"{shown}/{p.name}")
        if not os.access(p, os.X_OK) or not p.stat().st_mode & 0o100:
            raise ConfigError(f"{shown}/{p.name}: not executable; run: chmod +x "
                              f"{shown}/{p.name}")
        result.append(p)
    return tuple(result)


HOST_STAGE_KEYS = (b"secrets:", b"generate:")


def _without_host_keys(file: Path) -> bytes | None:
    """layer.yaml without its top-level ``secrets:`` and ``generate:`` blocks
    (and the indented, list or blank lines under them); unchanged bytes when it
    has neither."""
    if not file.is_file():
        return None
    data = file.read_bytes()
    lines = data.splitlines(keepends=True)
    if not any(line.startswith(HOST_STAGE_KEYS) for line in lines):
        return data
    kept, skipping = [], False
    for line in lines:
        if line.startswith(HOST_STAGE_KEYS):
            skipping = True
            continue
        if skipping and (line[:1] in (b" ", b"\t", b"-") or not line.strip()):
            continue
        skipping = False
        kept.append(line)
    return b"".join(kept)


def tree_hash(root: Path, only: list[str] | None = None,
              text: Mapping[str, bytes | None] | None = None, shown: str | None = None) -> str:
    """sha256 over every path, mode and content below ``root`` (lexical order);
    ``text`` gives other content for some top-level files. A file that cannot be
    read is one ConfigError naming it as ``shown/rel``."""
    shown = shown if shown is not None else str(root)
    h = hashlib.sha256()
    names = sorted(only) if only is not None else sorted(os.listdir(root))
    for top in names:
        start = root / top
        paths = [start] if not start.is_dir() or start.is_symlink() else []
        if start.is_dir() and not start.is_symlink():
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames.sort()
                paths.append(Path(dirpath))
                paths.extend(Path(dirpath) / f for f in sorted(filenames))
        for p in sorted(paths):
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            h.update(f"{rel}\0{stat.S_IMODE(st.st_mode):o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L" + os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                other = (text or {}).get(rel)
                h.update(b"F" + (read_source_bytes(p, f"{shown}/{rel}") if other is None
                                 else other))
            else:
                h.update(b"D")
            h.update(b"\0")
    return h.hexdigest()
