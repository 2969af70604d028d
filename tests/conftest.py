import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    p = Path(os.environ.get("OTAS_CIFAR10", SHARED_DATA / "cifar10-jpg.tar.gz"))
    if not p.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {p}")
    return p


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory) -> Path:
    """One decoded copy of CIFAR-10 for the whole run, for $OTAS_CACHE (entries are keyed by archive,
    split and preprocessing, so tests can share it)."""
    return tmp_path_factory.mktemp("cifar-cache")


# Serving fixtures, shared by tests/engine, tests/server, tests/bench and tests/scale.
@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from tests.server.helpers import tiny_checkpoint

    p = tmp_path_factory.mktemp("serve") / "tiny.safetensors"
    tiny_checkpoint(p)
    return p


@pytest.fixture(scope="session")
def runner(tiny_ckpt):
    from otas.engine.runner import Runner

    runner = Runner.load(tiny_ckpt, "cpu", max_batch=16)
    runner.warmup()  # as `otas serve` does: every γ traced before a test times a batch
    return runner


@pytest.fixture
def paced(runner):
    from tests.server.helpers import PacedRunner, paced_profile

    return PacedRunner(runner, paced_profile())


# Your own model: timm's test ViT (weights written locally) prompted for two generated folder tasks.
@pytest.fixture(scope="session")
def byo_model(tmp_path_factory):
    """(checkpoint, {task: folder}) of timm:test_vit trained briefly on two generated folder tasks."""
    from otas.train.prompts import PromptConfig, train_prompts
    from tests.folders import make_task, write_timm_weights

    root = tmp_path_factory.mktemp("byo")
    folders = {
        "colours": make_task(root / "colours", ["red", "green", "blue"], n=6),
        "lights": make_task(root / "lights", ["yellow", "blue"], n=6, seed=1),
    }
    weights = write_timm_weights(root / "test_vit.safetensors")
    cfg = PromptConfig(tasks=tuple(f"{t}={d}" for t, d in folders.items()), gammas=(-4, 0, 4), epochs=1, head_epochs=2)
    ckpt = root / "model.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTAS_CACHE", str(root / "cache"))
        train_prompts(cfg, "timm:test_vit", ckpt, device="cpu", log=lambda *a: None, pretrained_file=weights)
    return ckpt, folders
