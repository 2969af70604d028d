"""Servable (task, γ) pairs are stated once (the model's `servable`, the profile's accuracy rows):
the server refuses a configuration that needs a missing pair, and never plans one."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest

from otas.config import SchedulerConfig
from otas.server.main import make_engine
from otas.types import App
from tests.server.helpers import PacedRunner, paced_profile, png, serving

SRC, NOV = App("src", 2000.0, 1.0, "source"), App("nov", 2000.0, 1.0, "novel")


def servable_profile(**kw):
    """The paced profile with the source task declared at γ ≤ 0 only, as the profiler writes it."""
    p = paced_profile(**kw)
    return replace(p, accuracy={**p.accuracy, "source": {g: a for g, a in p.accuracy["source"].items() if g <= 0}})


def test_fixed_gamma_a_task_cannot_use_is_refused(runner):
    with pytest.raises(ValueError, match="policy 'fixed:4' cannot serve app 'src'"):
        make_engine(runner, servable_profile(), [SRC, NOV], "fixed:4", SchedulerConfig(max_batch=16))
    make_engine(runner, servable_profile(), [NOV], "fixed:4", SchedulerConfig(max_batch=16))  # fine without src


def test_profile_claiming_pairs_the_model_lacks_is_refused(runner):
    with pytest.raises(ValueError, match="lists task 'source' at gammas \\[4\\].*re-profile"):
        make_engine(runner, paced_profile(), [SRC, NOV], "otas", SchedulerConfig(max_batch=16))
    with pytest.raises(ValueError, match="has no task 'nope'"):
        make_engine(runner, servable_profile(), [App("x", 100.0, 1.0, "nope")], "otas", SchedulerConfig())


class ServableRunner(PacedRunner):
    """The paced runner, declaring the model's servable pairs as the real runner does."""

    def __init__(self, runner, profile):
        super().__init__(runner, profile)
        self.servable = runner.servable


@pytest.mark.parametrize("policy", ["otas-fifo", "otas"])
def test_source_and_novel_share_batches_and_all_are_served(runner, policy):
    """A source-task app next to a prompted one: mixed batches run at a γ both serve, nothing fails."""
    prof = servable_profile(base_ms=5, per_image_ms=1)
    paced = ServableRunner(runner, prof)
    with serving(paced, prof, policy, apps=[SRC, NOV]) as (srv, _):

        def post(i):
            app = "src" if i % 2 else "nov"
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                r = c.post(f"/v1/apps/{app}/classify", content=png(i), headers={"content-type": "image/png"})
            return app, r.status_code, r.json()

        with ThreadPoolExecutor(12) as pool:
            out = list(pool.map(post, range(24)))
    assert [code for _, code, _ in out] == [200] * 24, out
    assert all(body["gamma"] <= 0 for app, _, body in out if app == "src")
    assert max(paced.sizes) > 1  # requests did share batches


def test_a_profile_of_another_architecture_is_refused(tiny_ckpt):
    """A package or --profile measured on another model (say the Small one's profile beside the
    Tiny checkpoint) is a clear error at start, not a server that plans with another model's times."""
    from otas.server.main import check_profile_arch
    from tests.server.helpers import paced_profile

    prof = paced_profile()
    prof.meta["arch"] = "vit_small_p2"
    with pytest.raises(ValueError, match="measured on a vit_small_p2 model"):
        check_profile_arch(prof, tiny_ckpt)
    prof.meta["arch"] = "vit_tiny_p2"
    check_profile_arch(prof, tiny_ckpt)
    del prof.meta["arch"]  # older profiles say nothing: accepted
    check_profile_arch(prof, tiny_ckpt)
