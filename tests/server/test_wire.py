"""Frames between the HTTP front ends and the engine process: what is packed is read back, however
the stream is cut; a frame that breaks the format is an error, never a wrong request."""

import numpy as np
import pytest

from otas.engine.serving import Served
from otas.server.wire import (
    HEAD,
    FrameReader,
    Kind,
    WireError,
    pack,
    pack_served,
    pack_submit,
    unpack_served,
    unpack_submit,
)


def read_all(stream: bytes, cuts: np.random.Generator | None = None, max_frame: int = 1 << 24):
    """Every frame of `stream`, fed to a reader in random pieces (as a socket delivers them)."""
    r, frames, pos = FrameReader(max_frame), [], 0
    while pos < len(stream):
        buf = r.buffer()
        n = min(len(buf), len(stream) - pos, int(cuts.integers(1, 5000)) if cuts is not None else len(buf))
        buf[:n] = stream[pos : pos + n]
        pos += n
        f = r.advance(n)
        if f is not None:
            frames.append(f)
    return frames


def served(n: int, k: int, app: str = "novel") -> list[Served]:
    rng = np.random.default_rng(n)
    return [
        Served(100 + i, app, -8, rng.random(k, dtype=np.float32), [f"c{j}" for j in range(k)], 1.5 * i, 2.0, 3.5 + i,
               i % 2 == 0, n, 0.25 * i)
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_requests_and_answers_survive_any_cutting_of_the_stream(seed):
    rng = np.random.default_rng(seed)
    pixels = [rng.integers(0, 256, (int(n), 8, 8, 3), dtype=np.uint8) for n in rng.integers(1, 40, 6)]
    answers = [served(int(n), 5) for n in rng.integers(1, 30, 4)]
    parts = []
    for i, p in enumerate(pixels):
        head, payload = pack_submit(i + 1, f"app{i}", 10.0 * i, p)
        parts += [head, bytes(payload)]
    parts.append(pack(Kind.CANCEL, 99))
    for i, a in enumerate(answers):
        parts += pack_served(50 + i, a)
    frames = read_all(b"".join(parts), rng)

    assert [f.kind for f in frames] == [Kind.SUBMIT] * 6 + [Kind.CANCEL] + [Kind.SERVED] * 4
    for i, (f, p) in enumerate(zip(frames[:6], pixels, strict=True)):
        app, arrival, got = unpack_submit(f, 8)
        assert (f.id, app, arrival) == (i + 1, f"app{i}", 10.0 * i)
        np.testing.assert_array_equal(got, p)
    assert frames[6].id == 99 and len(frames[6].payload) == 0
    for f, want in zip(frames[7:], answers, strict=True):
        a = unpack_served(f)
        assert a.app == "novel"
        np.testing.assert_array_equal(a.probs, np.stack([s.probs for s in want]))
        assert a.ints[:, 0].tolist() == [s.id for s in want]
        assert a.ints[:, 3].astype(bool).tolist() == [s.deadline_met for s in want]
        np.testing.assert_allclose(a.floats[:, 2], [s.total_ms for s in want])


def test_pixels_are_not_copied_on_the_way_in():
    p = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    head, payload = pack_submit(1, "a", 0.0, p)
    (f,) = read_all(head + bytes(payload))
    _, _, got = unpack_submit(f, 4)
    assert np.shares_memory(got, np.frombuffer(f.payload, np.uint8))  # a view of the frame's own buffer


def frame(kind: int, meta: bytes, payload: bytes = b"", rid: int = 1) -> bytes:
    return HEAD.pack(len(meta) + len(payload), kind, rid, len(meta)) + meta + payload


@pytest.mark.parametrize(
    "raw, why",
    [
        (HEAD.pack(1 << 30, 3, 1, 2), "over the limit"),
        (frame(77, b"{}"), "unknown frame kind"),
        (frame(3, b"{not json"), "not JSON"),
        (frame(3, b"[1, 2]"), "not a JSON object"),
        (HEAD.pack(4, 3, 1, 9) + b"{}{}", "over the limit"),  # meta longer than the frame
        (frame(3, b"[" * 100_000 + b"]" * 100_000), "not JSON"),  # nested past the parser's depth
    ],
)
def test_a_frame_that_breaks_the_format_is_refused(raw, why):
    with pytest.raises(WireError, match=why):
        read_all(raw, max_frame=1 << 20)


@pytest.mark.parametrize(
    "meta, payload",
    [
        (b'{"app":"a","arrival_ms":0,"n":2,"h":4,"w":4}', bytes(4 * 4 * 3)),  # one image's bytes for two
        (b'{"app":"a","arrival_ms":0,"n":1,"h":5,"w":5}', bytes(5 * 5 * 3)),  # not the model's size
        (b'{"app":"a","arrival_ms":0,"n":0,"h":4,"w":4}', b""),
        (b'{"app":3,"arrival_ms":0,"n":1,"h":4,"w":4}', bytes(48)),
        (b'{"app":"a","arrival_ms":"soon","n":1,"h":4,"w":4}', bytes(48)),
        (b'{"app":"a","arrival_ms":0,"n":1.0,"h":4,"w":4}', bytes(48)),
        (b'{"app":"a","arrival_ms":NaN,"n":1,"h":4,"w":4}', bytes(48)),
        (b'{"app":"a","arrival_ms":0,"n":1,"h":4,"w":4,"at":0}', bytes(48)),  # a place, but no segment
    ],
)
def test_a_request_whose_pixels_do_not_match_its_shape_is_refused(meta, payload):
    (f,) = read_all(frame(3, meta, payload))
    with pytest.raises(WireError):
        unpack_submit(f, 4)


@pytest.mark.parametrize(
    "meta",
    [
        b'{"app":"a","n":4,"k":5,"runs":[[0,3,0,1,1,1,1,3,1]]}',  # 4 images announced, payload for 3
        b'{"app":"a","n":3,"k":5,"runs":[[0,2,0,1,1,1,1,3,1]]}',  # runs cover 2 of 3
        b'{"app":"a","n":3,"k":5,"runs":[[0,3,0]]}',  # a run without its fields
        b'{"app":"a","n":3,"k":5,"runs":[[0,4,0,1,1,1,1,3,1],[9,-1,0,1,1,1,1,3,1]]}',  # a negative count
        b'{"app":"a","n":3,"k":5}',
    ],
)
def test_an_answer_whose_parts_do_not_match_its_counts_is_refused(meta):
    payload = np.zeros((3, 5), np.float32).tobytes()
    (f,) = read_all(frame(5, meta, payload))
    with pytest.raises(WireError):
        unpack_served(f)


def test_answers_from_several_batches_and_any_rows_read_back_as_they_were():
    rng = np.random.default_rng(0)
    full = rng.random((6, 7), dtype=np.float32)
    rows = [full[0, :5], full[1, :5], full[2:3, :5][0], full[3, :5].astype(np.float64), full[4, :5], full[5, :5]]
    served = [
        Served(i + (10 if i >= 4 else 0), "a", g, r, ["c"] * 5, q, 2.0, q + 2, q < 3, b, 0.5 * i)
        for i, (r, g, q, b) in enumerate(zip(rows, [0, 0, 0, -8, -8, -8], [1.0, 1.0, 1.0, 4.0, 4.0, 4.0],
                                             [3, 3, 3, 64, 64, 64], strict=True))
    ]  # fmt: skip
    (f,) = read_all(b"".join(pack_served(7, served)))
    a = unpack_served(f)
    np.testing.assert_allclose(a.probs, np.stack([np.asarray(r, np.float32) for r in rows]))
    assert a.ints.tolist() == [[s.id, s.gamma, s.batch_size, int(s.deadline_met)] for s in served]
    np.testing.assert_allclose(a.floats, [[s.queue_ms, s.exec_ms, s.total_ms, s.utility] for s in served])


def test_only_pixel_arrays_are_sent():
    with pytest.raises(WireError, match="uint8"):
        pack_submit(1, "a", 0.0, np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(WireError, match="uint8"):
        pack_submit(1, "a", 0.0, np.zeros((4, 4, 3), np.uint8))
