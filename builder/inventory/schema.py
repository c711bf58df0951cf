"""Small helpers to read YAML mappings into typed values with one-line errors.

Every error names the file (relative to the project), the key path, the bad
value and the fix; an unknown key suggests the nearest known one.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from builder.errors import ConfigError

HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
VAR_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def suggest(word: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for a near match, else an empty string."""
    match = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def known_list(known: Iterable[str]) -> str:
    return ", ".join(sorted(known)) or "none"


_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def read_source_bytes(path: Path, shown: str) -> bytes:
    """The one reader of the project's own files (profiles, layer parts,
    templates, hooks, files): whatever is wrong with the file itself is one
    ConfigError naming it, never a traceback and never a hang on a fifo."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ConfigError(f"{shown}: broken symlink (-> {os.readlink(path)}); point it at "
                              "an existing file or remove it") from None
        raise ConfigError(f"{shown}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read: {exc.strerror}; check the path and its "
                          "permissions") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a file")
        raise ConfigError(f"{shown}: {kind}, not a regular file; replace it with a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot read: {exc.strerror}; check its permissions "
                          "(ls -l) and the disk") from None


def read_source(path: Path, shown: str) -> str:
    """A project text file as str; a byte that is not UTF-8 is one line with its
    line number."""
    data = read_source_bytes(path, shown)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{shown}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                          "save the file as UTF-8") from None


def load_yaml(path: Path, shown: str) -> Any:
    """Load one YAML file with ``safe_load``; syntax errors carry line and column."""
    text = read_source(path, shown)
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"{where}: YAML syntax error: {problem}; fix the indentation or quoting there"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: YAML error: {exc}") from None


class Reader:
    """Reads one mapping at ``where`` (file + key path), enforcing known keys."""

    def __init__(self, data: Any, shown: str, path: str, allowed: Iterable[str]) -> None:
        self.shown = shown
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{self.loc()}: expected a mapping of keys, got {type_name(data)} {short(data)}"
            )
        allowed = list(allowed)
        for key in data:
            if not isinstance(key, str) or key not in allowed:
                raise ConfigError(
                    f"{self.loc(str(key))}: unknown key (known: {known_list(allowed)})"
                    f"{suggest(str(key), allowed)}"
                )
        self.data: Mapping[str, Any] = data

    def loc(self, key: str | None = None) -> str:
        parts = [p for p in (self.path, key) if p]
        dotted = ".".join(parts)
        return f"{self.shown}: {dotted}" if dotted else self.shown

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def required(self, key: str, hint: str) -> Any:
        if key not in self.data or self.data[key] is None:
            raise ConfigError(f"{self.loc(key)}: missing; {hint}")
        return self.data[key]

    def text(self, key: str, default: str | None = None, *, hint: str = "") -> str:
        if key not in self.data:
            if default is None:
                raise ConfigError(f"{self.loc(key)}: missing; {hint or 'add it'}")
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{self.loc(key)}: expected a non-empty string, got {type_name(value)} "
                f"{short(value)}"
            )
        return value

    def opt_str(self, key: str) -> str | None:
        if self.data.get(key) is None:
            return None
        return self.text(key)

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(
                f"{self.loc(key)}: expected a list of strings, got {short(value)}"
            )
        return tuple(value)

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{self.loc(key)}: expected a mapping, got {type_name(value)} {short(value)}"
            )
        return value

    def child(self, key: str, allowed: Iterable[str]) -> Reader:
        return Reader(self.data.get(key), self.shown, ".".join(p for p in (self.path, key) if p),
                      allowed)


def type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", int: "a number",
            float: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hostname(value: Any, loc: str) -> str:
    if not isinstance(value, str) or not HOSTNAME_RE.match(value):
        raise ConfigError(
            f"{loc}: {short(value)} is not a valid hostname; use lower-case letters, digits "
            "and '-', at most 63 characters, not starting or ending with '-'"
        )
    return value


def ipv4(value: Any, loc: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ConfigError(
            f"{loc}: {short(value)} is not an IPv4 address; write it like 10.20.0.11"
        ) from None


def cidr(value: Any, loc: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        if isinstance(value, str) and "/" in value and "host bits set" in str(exc):
            fixed = ipaddress.IPv4Network(value, strict=False)
            raise ConfigError(
                f"{loc}: {short(value)} has host bits set; did you mean '{fixed}'?"
            ) from None
        raise ConfigError(
            f"{loc}: {short(value)} is not a network in CIDR form; write it like 10.20.0.0/24"
        ) from None
    except TypeError:
        raise ConfigError(
            f"{loc}: {short(value)} is not a network in CIDR form; write it like 10.20.0.0/24"
        ) from None


def mac(value: Any, loc: str) -> str:
    if not isinstance(value, str) or not MAC_RE.match(value.lower()):
        raise ConfigError(
            f"{loc}: {short(value)} is not a MAC address; write it like b8:27:eb:12:34:56"
        )
    return value.lower()
