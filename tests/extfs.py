"""Read an ext4 file system the way a test checks an image: with debugfs, in
place (a role's root.ext4, or an output image's root partition at its offset;
nothing is copied or mounted)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path


class Ext4:
    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path, self.offset = path, offset

    @classmethod
    def image_root(cls, img: Path) -> Ext4:
        """The root file system (second partition) of an output image."""
        out = subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True,
                             check=True).stdout
        start = json.loads(out)["partitiontable"]["partitions"][1]["start"]
        return cls(img, int(start) * 512)

    def debugfs(self, request: str) -> str:
        spec = f"{self.path}?offset={self.offset}" if self.offset else str(self.path)
        return subprocess.run(["debugfs", "-R", request, spec], capture_output=True,
                              text=True, check=True).stdout

    def read(self, path: str) -> str:
        return self.debugfs(f"cat {path}")

    def names(self, folder: str) -> list[str]:
        """The entries of FOLDER ('.' and '..' left out), sorted."""
        # ls -p: /inode/mode/uid/gid/name/size/ per entry
        return sorted(f[5] for f in (line.split("/") for line in
                                     self.debugfs(f"ls -p {folder}").splitlines())
                      if len(f) > 6 and f[5] not in (".", ".."))

    def regular_files(self, pattern: str) -> list[str]:
        """The regular files matching PATTERN (a path; '*' in its last part)."""
        folder, _, name = pattern.rpartition("/")
        rx = re.compile("^" + re.escape(name).replace(r"\*", ".*") + "$")
        found = []
        for line in self.debugfs(f"ls -p {folder}").splitlines():
            f = line.split("/")
            if len(f) > 6 and f[2].startswith("10") and rx.match(f[5]):
                found.append(f"{folder}/{f[5]}")
        return sorted(found)

    def owner_mode(self, path: str) -> tuple[int, int, int]:
        out = self.debugfs(f"stat {path}")
        m = re.search(r"Mode:\s+0?(\d+).*?User:\s+(\d+)\s+Group:\s+(\d+)", out, re.S)
        assert m, f"{path}: not in the image ({out[:200]!r})"
        return int(m.group(2)), int(m.group(3)), int(m.group(1), 8) & 0o7777
