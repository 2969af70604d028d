import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from otas.cli import app
from tests.cli_runs import assert_refused, invoke, write


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
    # without --task: the package's first task after source, not the shipped model's `novel`
    from otas.predict import Predictor

    first = next(t for t in Predictor.load(pkg).model.tasks if t != "source")
    res = CliRunner().invoke(app, ["predict", str(img), "--model", str(pkg)])
    assert res.exit_code == 0, res.output
    assert set(Predictor.load(pkg).labels(first)) & set(res.output.replace(",", " ").split()), res.output
    res = CliRunner().invoke(app, ["predict", str(img), "--model", str(pkg), "--task", "nosuch"])
    assert res.exit_code == 2 and "unknown task 'nosuch'" in res.output and "Traceback" not in res.output


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header declares w × h (no pixel data: a decoder that trusted it would try)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: "/dev/zero", "not a regular file"),
        (lambda d: str(d), "not a regular file"),  # a directory
        (lambda d: (os.mkfifo(d / "fifo"), str(d / "fifo"))[1], "not a regular file"),  # never blocks on open
        (lambda d: str(d / "missing.png"), "cannot read it"),
        (lambda d: write(d / "empty.png", b""), "empty"),
        (lambda d: write(d / "huge.png", _png_header(12_000, 12_000)), "the limits are"),
        (lambda d: write(d / "thin.png", _png_header(20_000, 1)), "the limits are"),
        (lambda d: write(d / "fake.png", b"GIF89a" + b"\0" * 100), "not a PNG/JPEG/WEBP image"),
        (lambda d: write(d / "text.png", b"hello"), "not a PNG/JPEG/WEBP image"),
    ],
)
def test_predict_refuses_what_is_not_an_image_file_clearly(tmp_path, make, message):
    """`otas predict` reads only regular files within a size limit and decodes them with the
    server's checks: devices, FIFOs, directories and decode bombs are clear errors, at once."""
    path = make(tmp_path)
    res = CliRunner().invoke(app, ["predict", path, "--task", "novel"], terminal_width=400)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    assert path in res.output.replace("\n", "")


def test_predict_file_size_limit(tmp_path):
    from otas.predict import read_image_file

    p = tmp_path / "big.png"
    p.write_bytes(b"\0" * 1001)
    with pytest.raises(ValueError, match="1001 bytes is over the limit of 1000"):
        read_image_file(p, max_bytes=1000)
    assert read_image_file(p, max_bytes=1001) == b"\0" * 1001


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "replay", "--load", "nan"], "--load"),
        (["bench", "replay", "--load", "inf"], "--load"),
        (["bench", "replay", "--duration-s", "nan"], "--duration-s"),
        (["bench", "replay", "--senders", "0"], "--senders 0: use 1..64"),
        (["bench", "replay", "--senders", "65"], "--senders 65: use 1..64"),
        (["bench", "overhead", "--concurrency", "0"], "--concurrency"),
        (["bench", "overhead", "--clients", "0"], "--clients"),
        (["bench", "overhead", "--duration-s", "-1"], "--duration-s"),
        (["bench", "overhead", "--batches", "100000"], "--batches"),
        (["bench", "overhead", "--url", "http://127.0.0.1:9", "--duration-s", "1", "--out", "{tmp}"], "cannot reach"),
        (["bench", "summary", "{tmp}/empty.json"], "otas bench replay"),
        (["bench", "summary", "{tmp}"], "otas bench replay"),
    ],
)
def test_bench_commands_refuse_bad_input_without_a_traceback(tmp_path, args, message):
    """Checked before any traffic is sent or any result written."""
    (tmp_path / "empty.json").write_text("")
    assert_refused(invoke([a.replace("{tmp}", str(tmp_path)) for a in args]), message)
    assert not list((tmp_path).glob("*/*.json"))  # nothing written


@pytest.mark.parametrize(
    "args, message",
    [
        (["profile", "{ckpt}", "--batch-sizes", "0"], "--batch-sizes"),
        (["profile", "{ckpt}", "--batch-sizes", "-1"], "--batch-sizes"),
        (["profile", "{ckpt}", "--batch-sizes", ","], "--batch-sizes"),
        (["profile", "{ckpt}", "--min-time-s", "nan"], "--min-time-s"),
        (["profile", "{ckpt}", "--min-time-s", "-1"], "--min-time-s"),
        (["profile", "{ckpt}", "--accuracy-limit", "-1"], "--accuracy-limit"),
        (["profile", "{ckpt}", "--device", "tpu"], "--device"),
        (["profile", "{ckpt}", "--out", "{tmp}"], "--out"),
        (["report", "{tmp}/missing.json"], "does not exist"),
        (["report", "{profile}", "--batch", "7"], "--batch 7"),
        (["report", "{profile}", "--out", "{tmp}/file"], "--out"),
        (["demo", "--model", "{tmp}"], "error"),
        (["demo", "--model", "{tmp}/missing.safetensors"], "error"),
        (["predict", "{tmp}/file", "--top-k", "0"], "--top-k"),
        (["predict", "{tmp}/file", "--top-k", "-1"], "--top-k"),
    ],
)
def test_commands_refuse_bad_options_without_a_traceback(tmp_path, tiny_ckpt, args, message):
    """Checked before anything is measured or written."""
    (tmp_path / "file").write_text("x")
    profile = Path(__file__).parent / "data" / "handmade_tiny__cpu.json"
    subs = {"{tmp}": str(tmp_path), "{ckpt}": str(tiny_ckpt), "{profile}": str(profile)}
    for k, v in subs.items():
        args = [a.replace(k, v) for a in args]
    assert_refused(invoke(args), message)
