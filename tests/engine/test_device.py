"""The device thread (`otas.engine.device.Device`): batches in order, each future settled once with the runner's
result or its error; a runner launching ahead holds at most its slots on the device, launches a batch behind
the running one until shortly before that one's predicted end, and has every launched batch read."""

import threading
import time

import numpy as np
import pytest

from otas.adapt.fast import Launch
from otas.engine.batches import RunResult
from otas.engine.device import Device


class Gated:
    """A runner whose launched batches finish when the test says (`go`); `fail` names a stage
    ("launch", "ready" or "wait") at which the batch whose gamma is -1 raises."""

    def __init__(self, pipelined: bool = True, slots: int = 2, fail: str = ""):
        self.pipelined, self.slots, self.fail = pipelined, slots, fail
        self.gates: list[threading.Event] = []
        self.launched = 0
        self.in_flight = self.most_in_flight = 0
        self.readies = 0
        self._lock = threading.Lock()

    def run(self, images, tasks, gamma):
        if gamma == -1 and self.fail:
            raise RuntimeError("bad run")
        return RunResult(np.zeros((len(images), 2), np.float32), 1.0)

    def launch(self, images, tasks, gamma):
        bad = gamma == -1
        if bad and self.fail == "launch":
            raise RuntimeError("bad launch")
        gate = threading.Event()
        with self._lock:
            self.gates.append(gate)
            self.launched += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

        def ready():
            self.readies += 1
            if bad and self.fail == "ready":
                raise RuntimeError("bad ready")
            return gate.is_set()

        def wait():
            assert gate.wait(10), "the test never let the batch finish"
            with self._lock:
                self.in_flight -= 1
            if bad and self.fail in ("ready", "wait"):
                raise RuntimeError(f"bad {self.fail}")
            return RunResult(np.full((len(images), 2), gamma, np.float32), 0.5)

        return Launch(ready, wait)

    def go(self, k: int) -> None:
        """Let the k-th launched batch finish, once it is launched."""
        deadline = time.monotonic() + 10
        while len(self.gates) <= k:
            assert time.monotonic() < deadline, f"batch {k} was never launched"
            time.sleep(0.001)
        self.gates[k].set()


def clock():
    t0 = time.perf_counter()
    return lambda: (time.perf_counter() - t0) * 1e3


def batch(gamma: int, device_ms: float = 0.1) -> tuple:
    return [np.zeros((2, 2, 3), np.uint8)], ["t"], gamma, device_ms


def test_one_at_a_time_in_order_with_each_error_its_own():
    dev = Device(Gated(pipelined=False, fail="run"), clock())
    futs = [dev.submit(*batch(g)) for g in (0, -1, 2)]
    dev.shutdown()
    assert futs[0].result()[2].probs.shape == (1, 2) and futs[2].result()[2].ms == 1.0
    with pytest.raises(RuntimeError, match="bad run"):
        futs[1].result()
    t0, t1, _, began = futs[0].result()
    assert began == t0 <= t1  # one at a time, a batch begins when the thread takes it up


def test_launching_ahead_holds_at_most_the_runners_slots():
    runner = Gated(slots=2)
    dev = Device(runner, clock())
    futs = [dev.submit(*batch(g, device_ms=1e6)) for g in range(5)]  # each predicted to run long
    for k in range(5):
        time.sleep(0.02)  # time for a third launch, were it allowed
        assert runner.in_flight <= 2
        runner.go(k)
    dev.shutdown()
    assert runner.most_in_flight == 2 and [f.result()[2].probs[0, 0] for f in futs] == [0, 1, 2, 3, 4]
    # each begun when launched: the third only once a slot came free, after the first was done
    begun, done = [f.result()[3] for f in futs], [f.result()[1] for f in futs]
    assert begun == sorted(begun) and begun[1] < done[0] <= begun[2]
    assert all(b <= d for b, d in zip(begun, done, strict=True))


@pytest.mark.parametrize("stage", ["launch", "ready", "wait"])
def test_a_batch_failing_at_any_stage_fails_alone(stage):
    runner = Gated(fail=stage)
    dev = Device(runner, clock())
    futs = [dev.submit(*batch(g)) for g in (0, -1, 2)]
    for k in range(3 if stage != "launch" else 2):
        runner.go(k)
    dev.shutdown()
    assert futs[0].result()[2].probs[0, 0] == 0 and futs[2].result()[2].probs[0, 0] == 2
    with pytest.raises(RuntimeError, match=f"bad {stage}"):
        futs[1].result()
    assert runner.in_flight == 0  # every launched batch read: its slot freed


def test_a_batch_cancelled_before_it_is_taken_up_never_runs():
    runner = Gated()
    dev = Device(runner, clock())
    first, second = dev.submit(*batch(0)), dev.submit(*batch(1))  # two slots: both launched
    third = dev.submit(*batch(2))  # waits for a slot
    time.sleep(0.02)
    assert third.cancel()
    runner.go(0)
    runner.go(1)
    dev.shutdown()
    assert third.cancelled() and runner.launched == 2 and first.done() and second.done()


def test_shutdown_reads_every_launched_batch():
    runner = Gated()
    dev = Device(runner, clock())
    futs = [dev.submit(*batch(g, device_ms=1e6)) for g in (0, 1)]  # predicted to end far later
    threading.Timer(0.05, lambda: (runner.go(0), runner.go(1))).start()
    dev.shutdown()
    assert all(f.done() for f in futs) and runner.in_flight == 0


def test_a_launch_that_captures_first_waits_for_every_batch_in_flight():
    """A launch that captures graphs waits on slots only the device thread frees: the thread reads every
    launched batch first (else it would wait on itself)."""

    class Capturing(Gated):
        def captures(self, gamma, b):
            return gamma == 5

        def launch(self, images, tasks, gamma):
            if gamma == 5:
                self.seen_in_flight = self.in_flight
            return super().launch(images, tasks, gamma)

    runner = Capturing()
    dev = Device(runner, clock())
    futs = [dev.submit(*batch(g, device_ms=1e6)) for g in (0, 5)]
    threading.Timer(0.05, lambda: (runner.go(0), runner.go(1))).start()
    dev.shutdown()
    assert runner.seen_in_flight == 0 and [f.result()[2].probs[0, 0] for f in futs] == [0, 5]


def test_a_batch_is_read_near_its_predicted_end_with_nothing_behind_it():
    runner = Gated()
    dev = Device(runner, clock())
    fut = dev.submit(*batch(0, device_ms=0.0))
    runner.go(0)
    assert fut.result(timeout=10)[2].ms == 0.5  # (no shutdown, no next batch)
    dev.shutdown()


def test_a_batch_done_long_before_its_predicted_end_is_answered_at_once():
    """The thread looks at a launched batch's readiness while it sleeps: an answer is not held back to a
    prediction that runs long (here 2 s; the answer comes within a look or two)."""
    runner = Gated()
    dev = Device(runner, clock())
    t0 = time.perf_counter()
    fut = dev.submit(*batch(0, device_ms=2000.0))
    runner.go(0)
    fut.result(timeout=10)
    took = time.perf_counter() - t0
    dev.shutdown()
    assert took < 1.0


def test_a_batch_that_ran_long_moves_the_next_ones_expected_end():
    """The next batch runs from when the one before was read: its expected end moves with it, so the thread
    keeps taking new batches meanwhile rather than blocking on it at once (the clock is the test's)."""
    now = [0.0]
    runner = Gated()
    dev = Device(runner, lambda: now[0])
    first = dev.submit(*batch(0, device_ms=1.0))
    dev.submit(*batch(1, device_ms=300.0))  # expected to end at 301, were it not moved
    until = time.monotonic() + 10
    while runner.launched < 2 and time.monotonic() < until:
        time.sleep(0.001)
    now[0] = 600.0  # the first ran long
    runner.go(0)
    first.result(timeout=10)
    time.sleep(0.05)  # (the thread back to waiting; unmoved, it would be blocked on the second by now)
    dev.submit(*batch(2, device_ms=1.0))
    deadline = time.monotonic() + 2  # (unmoved: launched only once the second is read, after the test lets it go)
    while runner.launched < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    launched = runner.launched
    runner.go(1)
    runner.go(2)
    dev.shutdown()
    assert launched == 3


def test_no_batch_is_taken_after_shutdown():
    dev = Device(Gated(pipelined=False), clock())
    dev.submit(*batch(0)).result(timeout=10)
    dev.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        dev.submit(*batch(1))


def test_a_result_that_breaks_after_its_wait_fails_its_batch_alone():
    class Broken(Gated):
        def launch(self, images, tasks, gamma):
            inner = super().launch(images, tasks, gamma)
            return Launch(inner.ready, lambda: None) if gamma == -1 else inner  # (None has no .ms)

    runner = Broken()
    dev = Device(runner, clock())
    futs = [dev.submit(*batch(g)) for g in (0, -1, 2)]
    for k in range(3):
        runner.go(k)
    dev.shutdown()
    assert futs[0].result()[2].probs[0, 0] == 0 and futs[2].result()[2].probs[0, 0] == 2
    with pytest.raises(AttributeError):
        futs[1].result()


def test_a_failure_of_the_thread_itself_fails_every_batch_it_holds():
    broken = threading.Event()
    tick = clock()

    def now_ms():
        if broken.is_set():
            raise OSError("the clock broke")
        return tick()

    runner = Gated()
    dev = Device(runner, now_ms)
    held = dev.submit(*batch(0, device_ms=1e6))
    while not runner.gates:  # launched
        time.sleep(0.001)
    broken.set()
    with pytest.raises(OSError, match="clock broke"):
        held.result(timeout=10)
    with pytest.raises(RuntimeError, match="shut down"):
        dev.submit(*batch(1))
    runner.go(0)  # (the failed thread frees the batch's slot once it is done)
    dev.shutdown()
    assert runner.in_flight == 0
