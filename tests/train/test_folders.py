"""Your own tasks from image folders on your own timm ViT (weights written locally), through the CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from otas.cli import app
from otas.models.checkpoint import load_checkpoint, read_header
from tests.folders import make_task, write_timm_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_timm_weights(tmp_path_factory.mktemp("w") / "test_vit.safetensors")


def train(tmp_path, weights, *tasks: str, extra: tuple[str, ...] = ()):
    args = ["train", "prompts", "--backbone", "timm:test_vit", "--pretrained-file", str(weights)]
    for t in tasks:
        args += ["--task", t]
    args += ["--gammas", "-4,0,4", "--epochs", "1", "--head-epochs", "2", "--out", str(tmp_path / "m.safetensors")]
    return CliRunner().invoke(app, args + list(extra), terminal_width=200)


def test_two_folder_tasks_train_and_store_their_classes(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("OTAS_CACHE", str(tmp_path / "cache"))
    make_task(tmp_path / "colours", ["red", "green", "blue"], n=6)
    make_task(tmp_path / "lights", ["yellow", "blue"], n=5, seed=1, split="train")
    make_task(tmp_path / "lights", ["yellow", "blue"], n=3, seed=2, split="val")
    res = train(tmp_path, weights, f"colours={tmp_path / 'colours'}", f"lights={tmp_path / 'lights'}")
    assert res.exit_code == 0, res.output
    model = load_checkpoint(tmp_path / "m.safetensors")
    assert model.task_classes == {"colours": ["blue", "green", "red"], "lights": ["blue", "yellow"]}
    assert model.preprocess.mean == (0.5, 0.5, 0.5) and model.preprocess.size == 160  # test_vit's own
    meta = read_header(tmp_path / "m.safetensors")["meta"]
    src = meta["task_sources"]
    assert src["colours"]["split"] == {"kind": "seeded", "seed": 0, "val_fraction": 0.2}
    assert (src["colours"]["train_images"], src["colours"]["val_images"]) == (15, 3)  # 1 of 6 per class held out
    assert src["lights"]["split"] == {"kind": "folders"} and src["lights"]["val_images"] == 6
    assert {t: sorted(map(int, accs)) for t, accs in meta["val_accuracy"].items()} == {
        "colours": [-4, 0, 4],
        "lights": [-4, 0, 4],
    }


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: make_task(r, ["red"], n=4), "has one class"),
        (lambda r: (make_task(r, ["red"], n=4), (r / "green").mkdir()), r"\['green'\] .* hold no images"),
        (lambda r: r.mkdir(), "has no class folders"),
        (lambda r: (make_task(r, ["red", "green"]), (r / "red" / "bad.png").write_bytes(b"\x89PNG garbage")),
         r"1 image\(s\) .* cannot be decoded: red/bad.png"),
        (lambda r: make_task(r, ["red", "green"], n=1), "needs at least 2 per class"),
        (lambda r: make_task(r, ["red", "green"], split="train"), "has train/ but no val/"),
    ],
)  # fmt: skip
def test_bad_folders_are_refused_in_one_line(tmp_path, weights, monkeypatch, make, message):
    monkeypatch.setenv("OTAS_CACHE", str(tmp_path / "cache"))
    make(tmp_path / "t")
    res = train(tmp_path, weights, f"t={tmp_path / 't'}")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    out = res.output.strip()  # (a finished progress bar may leave an empty line)
    assert out.startswith("error: ") and len(out.splitlines()) == 1, res.output
    import re

    assert re.search(message, res.output), res.output
    assert not (tmp_path / "m.safetensors").exists()


def test_bad_backbones_are_refused_in_one_line(tmp_path, weights):
    make_task(tmp_path / "t", ["red", "green"])
    cases = [
        (["--backbone", "timm:vit_no_such_model"], "timm has no model"),
        (["--backbone", "timm:test_vit2", "--pretrained-file", str(weights)], "do not match timm:test_vit2"),
        (["--backbone", str(tmp_path / "missing.safetensors")], "no such checkpoint"),
        (["--backbone", "timm:test_vit"], "needs its weights: add --pretrained"),
        (["--backbone", "timm:test_vit", "--pretrained-file", str(tmp_path / "w.bin")], "pickled weights are refused"),
    ]
    for backbone, message in cases:
        args = ["train", "prompts", *backbone, "--task", f"t={tmp_path / 't'}", "--out", str(tmp_path / "m.st")]
        res = CliRunner().invoke(app, args, terminal_width=200)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_a_rerun_continues_only_the_same_tasks(tmp_path, weights, monkeypatch):
    monkeypatch.setenv("OTAS_CACHE", str(tmp_path / "cache"))
    make_task(tmp_path / "t", ["red", "green"], n=4)
    assert train(tmp_path, weights, f"t={tmp_path / 't'}").exit_code == 0
    res = train(tmp_path, weights, f"t={tmp_path / 't'}")  # nothing left to train
    assert res.exit_code == 0, res.output
    before = (tmp_path / "m.safetensors").read_bytes()
    make_task(tmp_path / "t", ["blue"], n=4)  # the task's classes changed since
    res = train(tmp_path, weights, f"t={tmp_path / 't'}")
    assert res.exit_code == 2 and "with classes ['green', 'red'], the data now has" in res.output, res.output
    assert (tmp_path / "m.safetensors").read_bytes() == before  # refused: the file is untouched
