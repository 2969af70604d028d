"""A live A/B's tarball for the bench scripts' tests: JSON files packed as the A/B scripts pack them."""

import io
import json
import tarfile
from pathlib import Path


def pack(path: Path, members: dict[str, dict]) -> None:
    """Write `path` (.tar.xz) holding each of `members` (name inside the tarball -> its JSON)."""
    with tarfile.open(path, "w:xz") as t:
        for name, data in members.items():
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            t.addfile(info, io.BytesIO(raw))
