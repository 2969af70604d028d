import pytest
import torch
from typer.testing import CliRunner

from otas.cli import app


def test_help_lists_every_command():
    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    for cmd in ("demo", "predict", "train", "profile", "report", "simulate", "serve", "bench"):
        assert cmd in out, cmd
    out = CliRunner().invoke(app, ["bench", "--help"], terminal_width=200).output
    for cmd in ("replay", "overhead", "summary", "gpu"):
        assert cmd in out, cmd


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_bench_gpu_refuses_clearly_without_cuda(tmp_path):
    res = CliRunner().invoke(app, ["bench", "gpu", str(tmp_path / "m.safetensors")], terminal_width=200)
    assert res.exit_code == 2 and "needs a CUDA device" in res.output


def test_predict_your_own_model_with_its_class_names(byo_model, tmp_path):
    import shutil

    ckpt, folders = byo_model
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copy(ckpt, pkg / "model.safetensors")
    img = next((folders["colours"] / "red").glob("*.png"))
    res = CliRunner().invoke(app, ["predict", str(img), "--model", str(pkg), "--task", "colours", "--gamma", "4"])
    assert res.exit_code == 0 and {"red", "green", "blue"} <= set(res.output.replace(",", " ").split()), res.output
    res = CliRunner().invoke(app, ["predict", str(img), "--model", str(pkg), "--task", "nosuch"])
    assert res.exit_code == 2 and "unknown task 'nosuch'" in res.output and "Traceback" not in res.output
