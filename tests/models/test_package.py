"""The model package: a checkpoint, a profile per device, apps.yaml."""

import shutil
from pathlib import Path

import pytest
import yaml

from otas.config import load_apps
from otas.models.package import ModelPackage, save_apps
from otas.server.cli import resolve_package
from otas.types import App


@pytest.fixture
def pkg(tmp_path, tiny_ckpt):
    d = tmp_path / "mymodel"
    d.mkdir()
    shutil.copy(tiny_ckpt, d / "model.safetensors")
    return d


def test_directory_package_finds_its_profile_for_the_device(pkg):
    p = ModelPackage.open(pkg)
    assert p.checkpoint == pkg / "model.safetensors" and p.name == "mymodel"
    with pytest.raises(ValueError, match=r"no profile of .*mymodel for this device \(cpu-intel\): make one with "
                       r"`otas profile .*mymodel --device cpu` \(writes .*profiles/cpu-intel.json\)"):  # fmt: skip
        p.find_profile("cpu-intel", "cpu")
    (pkg / "profiles").mkdir()
    (pkg / "profiles" / "h100.json").write_text("{}")
    with pytest.raises(ValueError, match=r"it has \['h100'\]"):
        p.find_profile("cpu-intel", "cpu")
    (pkg / "profiles" / "cpu-intel.json").write_text("{}")
    assert p.find_profile("cpu-intel", "cpu") == pkg / "profiles" / "cpu-intel.json"


def test_single_checkpoint_uses_the_profile_commands_default(tmp_path, tiny_ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = ModelPackage.open(tiny_ckpt)
    assert p.apps_path is None and p.profile_path("h100") == Path("profiles/tiny__h100.json")


def test_bad_packages_are_refused(tmp_path, pkg):
    with pytest.raises(ValueError, match="no such package directory or checkpoint"):
        ModelPackage.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no model.safetensors"):
        ModelPackage.open(tmp_path / "empty")
    with pytest.raises(ValueError, match="apps.yaml does not exist"):
        resolve_package(pkg, tmp_path / "p.json", None, "cpu", False)
    save_apps(pkg / "apps.yaml", [App("a", 100.0, 1.0, "novel")])
    assert resolve_package(pkg, tmp_path / "p.json", None, "cpu", False) == (
        pkg / "model.safetensors", tmp_path / "p.json", pkg / "apps.yaml"
    )  # fmt: skip


def test_save_apps_is_atomic_and_round_trips(tmp_path, monkeypatch):
    path = tmp_path / "apps.yaml"
    apps = [App("a", 100.0, 1.0, "novel"), App("b", 250.0, 2.5, "blur")]
    save_apps(path, apps)
    assert load_apps(path) == apps
    before = path.read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(yaml, "safe_dump", boom)
    with pytest.raises(OSError):
        save_apps(path, apps[:1])
    assert path.read_text() == before and [f.name for f in tmp_path.iterdir()] == ["apps.yaml"]  # no debris


def test_otas_serve_says_how_to_make_a_missing_profile(pkg):
    from typer.testing import CliRunner

    from otas.cli import app

    res = CliRunner().invoke(app, ["serve", "--model", str(pkg)], terminal_width=200)
    out = res.output.strip()
    assert res.exit_code == 2 and out.startswith("error: no profile of") and len(out.splitlines()) == 1, res.output
    assert f"otas profile {pkg} --device cpu" in out and "Traceback" not in out


def test_save_apps_follows_a_symlink_and_keeps_permissions(tmp_path):
    """A mounted apps file is often a symlink (a Kubernetes ConfigMap): the target is rewritten and
    the link kept; the file's mode is kept, and a new file is 0644 (not mkstemp's 0600)."""
    import os

    from otas.config import load_apps

    real = tmp_path / "data" / "real.yaml"
    real.parent.mkdir()
    real.write_text("apps: []\n")
    os.chmod(real, 0o640)
    link = tmp_path / "apps.yaml"
    link.symlink_to(real)
    save_apps(link, [App("a", 100.0, 1.0, "novel")])
    assert link.is_symlink() and [a.name for a in load_apps(real)] == ["a"]
    assert real.stat().st_mode & 0o777 == 0o640
    fresh = tmp_path / "new.yaml"
    save_apps(fresh, [App("b", 100.0, 1.0, "novel")])
    assert fresh.stat().st_mode & 0o777 == 0o644
