"""The one exception hierarchy. Only cli.py turns these into output and exit codes.

Every message is a single line that names the file, key or value at fault and
the fix, e.g. ``profiles/compute-01.yaml: layers[1]: no layer named 'compte'
(known: base, compute); did you mean 'compute'?``.
"""


class PibakeError(Exception):
    """Base for every error a user can cause or fix. ``str(err)`` is one line."""

    exit_code = 1


class ConfigError(PibakeError):
    """An inventory, profile or layer file is wrong."""

    exit_code = 2


class PreflightError(PibakeError):
    """The host lacks a tool or kernel feature; the message says how to fix it."""

    exit_code = 3


class DownloadError(PibakeError):
    """A base image could not be fetched or failed verification."""

    exit_code = 4


class BuildError(PibakeError):
    """A build step failed (a command exited non-zero, a disk filled up, ...)."""

    exit_code = 5


class NoSpaceError(BuildError):
    """A disk filled up while a build wrote to it; callers may name the folder."""


class BootError(PibakeError):
    """A boot test failed: a first-boot step failed or the VM timed out."""

    exit_code = 6


class SecretsError(PibakeError):
    """The secrets store is missing, unsafe or holds a file that is not what it should be."""

    exit_code = 7


class FlashError(PibakeError):
    """Writing an image to a card was refused (unsafe device, stale image) or failed."""

    exit_code = 8
