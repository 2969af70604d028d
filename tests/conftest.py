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

    return Runner.load(tiny_ckpt, "cpu", max_batch=16)


@pytest.fixture
def paced(runner):
    from tests.server.helpers import PacedRunner, paced_profile

    return PacedRunner(runner, paced_profile())
