"""What the peers in bench/peers/ serve: otas's own runner at a fixed γ, the same labels as otas's
predictor, and queue budgets within each SLO. Needs none of the peer packages."""

import sys
from pathlib import Path

import pytest

from otas.config import default_apps_path, load_apps
from otas.predict import Predictor, sample_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "peers"))
from peer_model import PeerModel, queue_budget_ms  # noqa: E402

APPS = load_apps(default_apps_path("cpu"))


def test_noop_model_answers_every_image_in_chunks():
    files = sorted((sample_dir() / "novel").glob("*/*.png"))[:5]
    m = PeerModel(0, max_batch=2, noop=True)
    labels = m.classify([f.read_bytes() for f in files], ["novel"] * len(files))
    assert len(labels) == len(files) and set(labels) <= set(m.runner.classes["novel"])


@pytest.mark.parametrize("gamma", [0, -20])
def test_peer_labels_are_otas_labels(gamma):
    """The peer path (decode, runner at γ) gives otas's predictor's top-1 for every sample image."""
    m = PeerModel(gamma, max_batch=8)
    pred = Predictor.load()
    for app in APPS:
        files = sorted((sample_dir() / app.task).glob("*/*.png"))[:8]
        want = [r[0][0] for r in pred.classify_files(files, app.task, gamma, k=1)]
        assert m.classify([f.read_bytes() for f in files], [app.name] * len(files)) == want


def test_unservable_gamma_is_refused():
    with pytest.raises(ValueError, match="gamma=3"):
        PeerModel(3, max_batch=4)


def test_queue_budget_leaves_room_for_a_batch():
    b = queue_budget_ms(APPS, 0, 16)
    assert all(a.slo_ms / 10 <= b[a.name] < a.slo_ms for a in APPS)
    assert queue_budget_ms(APPS, -48, 16)["blur"] > b["blur"]  # a faster γ leaves more time to queue
    assert queue_budget_ms(APPS, 0, 16, noop=True) == {a.name: a.slo_ms for a in APPS}
