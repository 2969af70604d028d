"""A model package: everything `otas serve --model PATH` needs, in one place. No torch.

    PATH/                        a directory ...
      model.safetensors          the checkpoint (weights, prompts, heads, class names, preprocessing)
      profiles/<device>.json     one profile per device it was measured on (`otas profile PATH`)
      apps.yaml                  the applications served (kept up to date by POST/PUT/DELETE /v1/apps)

    PATH.safetensors             ... or a single checkpoint: its profiles are `otas profile`'s default
                                 outputs, profiles/<model>__<device>.json under the working directory

`<device>` is `otas.profile.measure.device_slug` of the device's name: h100, h200, cpu-intel, ...
so a server finds the profile of the device it runs on, and says how to make one if there is none.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from otas.types import App

CHECKPOINT = "model.safetensors"
APPS = "apps.yaml"
PROFILES = "profiles"


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    """What the user named: a package directory or a checkpoint file."""
    checkpoint: Path

    @classmethod
    def open(cls, path: str | Path) -> ModelPackage:
        p = Path(path)
        if p.is_dir():
            ckpt = p / CHECKPOINT
            if not ckpt.is_file():
                raise ValueError(
                    f"model package {p} has no {CHECKPOINT}; copy the checkpoint there "
                    f"(e.g. the --out of `otas train prompts`)"
                )
            return cls(p, ckpt)
        if p.is_file():
            return cls(p, p)
        raise ValueError(f"model {p}: no such package directory or checkpoint file")

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @property
    def name(self) -> str:
        return self.checkpoint.name.split(".")[0] if not self.is_dir else self.path.resolve().name

    def profile_path(self, slug: str) -> Path:
        """Where the profile of this model on device `slug` lives (whether or not it exists yet)."""
        if self.is_dir:
            return self.path / PROFILES / f"{slug}.json"
        return Path(PROFILES) / f"{self.checkpoint.name.split('.')[0]}__{slug}.json"

    def profiles(self) -> list[Path]:
        if self.is_dir:
            return sorted((self.path / PROFILES).glob("*.json"))
        return sorted(Path(PROFILES).glob(f"{self.checkpoint.name.split('.')[0]}__*.json"))

    def find_profile(self, slug: str, device: str) -> Path:
        """The profile for device `slug`; a ValueError saying how to make one if there is none."""
        p = self.profile_path(slug)
        if p.is_file():
            return p
        have = [q.stem for q in self.profiles()]
        raise ValueError(
            f"no profile of {self.path} for this device ({slug}){f'; it has {have}' if have else ''}: "
            f"make one with `otas profile {self.path} --device {device}` (writes {p}), or pass --profile"
        )

    @property
    def apps_path(self) -> Path | None:
        return self.path / APPS if self.is_dir else None


def save_apps(path: Path, apps: list[App]) -> None:
    """Write applications as YAML atomically: a temporary file in the same folder, fsynced, then
    renamed over `path`, so a crash leaves the old file or the new one, never half of one. A
    symlink is followed (its target is rewritten, the link kept, as with a mounted ConfigMap), and
    the file keeps its permissions (new files: 0644)."""
    data = {"apps": [{"name": a.name, "slo_ms": a.slo_ms, "utility": a.utility, "task": a.task} for a in apps]}
    path = path.resolve() if path.is_symlink() else path
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
