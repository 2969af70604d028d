"""Checkpoints are files from anywhere: every malformed or crafted one is a ValueError naming the
file and the defect, found before the model is allocated; never another exception, a huge
allocation, or a model that loads and answers wrongly."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.models.checkpoint import load_checkpoint, read_header, save_checkpoint
from otas.models.registry import build_vit


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    vit = build_vit("vit_tiny_p2", 5, img_size=16, depth=2)
    m = AdaptiveViT(vit, AdaptConfig(gammas=(-4, 0, 4), tasks={"novel": 5}), source_classes=list("abcde"))
    m.task_classes = {"novel": list("vwxyz")}
    path = tmp_path_factory.mktemp("ck") / "good.safetensors"
    save_checkpoint(m.eval(), path)
    return path


def rewrite(good, tmp_path, header_edit=None, tensors_edit=None, name="bad"):
    """A copy of the good checkpoint with its header and/or tensors edited, written by safetensors."""
    h, state = read_header(good), load_file(str(good))
    if header_edit:
        header_edit(h)
    if tensors_edit:
        tensors_edit(state)
    p = tmp_path / f"{name}.safetensors"
    save_file(state, str(p), metadata={"otas": json.dumps(h) if not isinstance(h, str) else h})
    return p


def setter(path: str, value):
    def edit(h):
        *parents, last = path.split(".")
        for k in parents:
            h = h[k]
        if value is KeyError:
            del h[last]
        else:
            h[last] = value

    return edit


HEADER_EDITS = [
    ("arch", 5), ("arch", None), ("arch", KeyError), ("arch", "vit_gigantic"), ("arch", "__import__"),
    ("arch_overrides", [1]), ("arch_overrides", {"nonsense": 1}), ("arch_overrides", {"embed_dim": 100_001}),
    ("arch_overrides", {"depth": {"x": 1}}), ("arch_overrides", {5: 1}), ("arch_overrides", {"img_size": "%s%s"}),
    ("num_classes", 10**12), ("num_classes", -5), ("num_classes", "five"), ("num_classes", True),
    ("num_classes", KeyError), ("adapt", [1]), ("adapt", KeyError), ("adapt.evil", 1), ("adapt.gammas", "abc"),
    ("adapt.gammas", [0, 10**6]), ("adapt.gammas", []), ("adapt.gammas", [0, 0]), ("adapt.tasks", [1]),
    ("adapt.tasks", {"novel": -1}), ("adapt.tasks", {"novel": 10**9}), ("adapt.merge_every", "x"),
    ("preprocess", "abc"), ("preprocess", {"size": -3}), ("source_classes", 5), ("source_classes", ["a"]),
    ("task_classes", "abc"), ("task_classes", {"novel": ["a"]}), ("task_classes", {"novel": [1, 2, 3, 4, 5]}),
    ("meta", []), ("format", "x"),
    ("preprocess", {"size": 16, "mean": [float("nan"), 0.5, 0.5]}),
    ("preprocess", {"size": 16, "std": [float("inf")] * 3}),
    ("preprocess", {"size": 16, "mean": "abc"}), ("preprocess", {"size": 16, "crop_pct": "1"}),
    ("preprocess", {"mean": [0.5] * 3}), ("preprocess", {"size": True}),
    ("task_classes", {"novel": ["v", "v", "x", "y", "z"]}), ("source_classes", ["a", "b", "a", "d", "e"]),
    # sizes the meta build walks, or divides by: a depth of 100,000 ran for minutes and GBs before any check
    ("arch_overrides", {"depth": 100_000}), ("arch_overrides", {"depth": 0}), ("arch_overrides", {"num_heads": 0}),
    ("arch_overrides", {"patch_size": 0}), ("arch_overrides", {"embed_dim": 0}), ("arch_overrides", {"depth": True}),
    ("arch_overrides", {"img_size": [16, 10**9]}),
]  # fmt: skip


@pytest.mark.parametrize("field,value", HEADER_EDITS, ids=[f"{f}={str(v)[:20]}" for f, v in HEADER_EDITS])
def test_a_crafted_header_is_a_value_error(good, tmp_path, field, value):
    p = rewrite(good, tmp_path, setter(field, value))
    with pytest.raises(ValueError) as e:
        load_checkpoint(p)
    assert "bad.safetensors" in str(e.value)


@pytest.mark.parametrize("raw", ["[1]", '"text"', "{not json", "[" * 100_000, "null"])
def test_header_metadata_that_is_not_an_object_is_a_value_error(good, tmp_path, raw):
    p = rewrite(good, tmp_path)
    state = load_file(str(p))
    save_file(state, str(p), metadata={"otas": raw})
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_checkpoint(p)


TENSOR_EDITS = {
    "missing": lambda s: s.pop(next(k for k in s if k.startswith("vit.blocks.0"))),
    "extra": lambda s: s.update({"vit.extra": torch.zeros(3)}),
    "wrong_shape": lambda s: s.update({k: torch.zeros(3, 3) for k in [next(k for k in s if k.endswith("qkv.weight"))]}),
    "integer": lambda s: s.update({k: torch.zeros_like(s[k], dtype=torch.int32) for k in [next(iter(s))]}),
    "nan": lambda s: s.update({k: s[k].clone().fill_(float("nan")) for k in [next(k for k in s if "norm" in k)]}),
    "inf": lambda s: s.update({k: s[k].clone().fill_(float("inf")) for k in [next(k for k in s if "head" in k)]}),
}  # fmt: skip


@pytest.mark.parametrize("edit", list(TENSOR_EDITS))
def test_tensors_that_do_not_match_the_header_are_a_value_error(good, tmp_path, edit):
    p = rewrite(good, tmp_path, tensors_edit=TENSOR_EDITS[edit])
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_checkpoint(p)


def test_many_class_names_with_one_twice_are_refused_at_once(good, tmp_path):
    """The names are checked in one pass (counting each over the list took hours at 100,000 classes)."""

    def edit(h):
        h["num_classes"] = 100_000
        h["source_classes"] = [f"c{i}" for i in range(99_999)] + ["c7"]

    with pytest.raises(ValueError, match=r"given more than once: \['c7'\]"):
        load_checkpoint(rewrite(good, tmp_path, edit))


def test_a_huge_model_in_the_header_is_refused_before_allocation(good, tmp_path):
    """A header describing a 1.5 TB model over the file's few MB: refused from the meta-device skeleton."""
    import resource

    p = rewrite(good, tmp_path, setter("arch_overrides", {"img_size": 16, "depth": 2, "embed_dim": 96_000}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="wrong shape|does not match"):
        load_checkpoint(p)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: < 200 MB grown


@pytest.mark.parametrize("seed", range(40))
def test_corrupted_files_are_value_errors_or_load(good, tmp_path, seed):
    """Random byte flips, truncations and header lengths: a ValueError, or a model that loads."""
    data = bytearray(good.read_bytes())
    rng = np.random.default_rng(seed)
    (hlen,) = struct.unpack("<Q", data[:8])
    kind = seed % 4
    if kind == 0:  # flips inside the JSON header
        for i in rng.integers(8, 8 + hlen, 6):
            data[i] = int(rng.integers(0, 256))
    elif kind == 1:  # truncated
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == 2:  # header length lies
        lies = [0, 1, hlen - 1, hlen + 1, len(data), 2**40, 2**64 - 1]
        data[:8] = struct.pack("<Q", lies[int(rng.integers(0, len(lies)))])
    else:  # flips anywhere
        for i in rng.integers(0, len(data), 6):
            data[i] = int(rng.integers(0, 256))
    p = tmp_path / "bad.safetensors"
    p.write_bytes(bytes(data))
    try:
        load_checkpoint(p)
    except ValueError as e:
        assert "bad.safetensors" in str(e)
