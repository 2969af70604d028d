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
