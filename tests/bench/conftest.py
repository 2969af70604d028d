import pytest

from tests.server.helpers import PacedRunner, paced_profile, tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    p = tmp_path_factory.mktemp("serve") / "tiny.safetensors"
    tiny_checkpoint(p)
    return p


@pytest.fixture(scope="session")
def runner(tiny_ckpt):
    from otas.engine.runner import Runner

    return Runner.load(tiny_ckpt, "cpu", max_batch=16)


@pytest.fixture
def paced(runner):
    return PacedRunner(runner, paced_profile())
