import tarfile

import numpy as np
import pytest
from PIL import Image

from otas.data.folder import load_image_folder


def _make_folder(root, split="train", n=3, size=8):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        d = root / split / cls
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_directory_and_archive_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("OTAS_CACHE", str(tmp_path / "cache"))
    _make_folder(tmp_path / "ds")
    a = load_image_folder(tmp_path / "ds", "train", progress=False)
    assert a.images.shape == (6, 8, 8, 3) and a.classes == ["cat", "dog"] and a.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with tarfile.open(tmp_path / "ds.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "ds", arcname="top")  # an extra top-level folder is fine
    b = load_image_folder(tmp_path / "ds.tar.gz", "train", progress=False)
    np.testing.assert_array_equal(a.images, b.images)
    assert list((tmp_path / "cache").glob("*.npz"))  # decoded once, cached
    c = load_image_folder(tmp_path / "ds.tar.gz", "train", progress=False)
    np.testing.assert_array_equal(b.images, c.images)


def test_resize_subset_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("OTAS_CACHE", str(tmp_path / "cache"))
    _make_folder(tmp_path / "ds")
    s = load_image_folder(tmp_path / "ds", "train", image_size=4, progress=False)
    assert s.images.shape == (6, 4, 4, 3)
    sub = s.subset(["dog"])
    assert len(sub) == 3 and sub.labels.tolist() == [0, 0, 0] and sub.classes == ["dog"]
    with pytest.raises(ValueError, match="not in this dataset"):
        s.subset(["horse"])
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no 'test' folder"):
        load_image_folder(tmp_path / "ds", "test", progress=False)


def test_cifar_archive_layout(cifar_archive, tmp_path, monkeypatch):
    from otas.data.cifar import load_cifar10

    test = load_cifar10("test", cifar_archive, progress=False)
    assert test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(test.labels).tolist() == [1000] * 10


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_an_archive_that_cannot_be_read_is_a_value_error(tmp_path, monkeypatch, kind):
    """Not tar's or gzip's own exceptions (a truncated .tar.gz once ended a command as a bare "Aborted.")."""
    monkeypatch.setenv("OTAS_CACHE", str(tmp_path / "cache"))
    _make_folder(tmp_path / "ds")
    with tarfile.open(tmp_path / "ds.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "ds", arcname="ds")
    whole = (tmp_path / "ds.tar.gz").read_bytes()
    data = {"empty": b"", "text": b"not an archive\n" * 50, "truncated": whole[: len(whole) // 2]}[kind]
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data)
    with pytest.raises(ValueError, match="bad.tar.gz is neither a folder nor a readable tar archive"):
        load_image_folder(bad, "train", progress=False)
