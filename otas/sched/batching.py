"""Application-aware selective batching (method §4).

Queries wait in one FIFO deque per application: within an application arrival order is deadline
order (same SLO), so expiry only ever looks at deque fronts. Applications are grouped into
*queues*: one per SLO class (selective batching) or a single global queue (the FIFO / EDF
baselines). A queue's order is the merge of its deques by deadline or by arrival. A batch is a
prefix of one queue, so it never mixes SLO classes; its deadline is its earliest member's.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from operator import attrgetter

import numpy as np

from otas.types import App, Request


def slo_classes(apps: Sequence[App], tolerance: float) -> list[list[str]]:
    """Group applications so that within a class max SLO ≤ (1 + tolerance) · min SLO.

    Greedy over applications sorted by SLO: a class opens at its tightest SLO and takes every
    following application within the factor. Equal SLOs always share a class.
    """
    classes: list[list[str]] = []
    floor = None
    for app in sorted(apps, key=lambda a: (a.slo_ms, a.name)):
        if floor is None or app.slo_ms > floor * (1.0 + tolerance):
            classes.append([])
            floor = app.slo_ms
        classes[-1].append(app.name)
    return classes


@dataclass
class Candidate:
    """A pending batch: a prefix (or a later chunk) of one queue."""

    requests: list[Request]
    queue: int
    deadline_ms: float
    deadlines: np.ndarray | None = None
    """Members' deadlines, ascending, when the batch holds one application (else None)."""
    groups: dict[str, np.ndarray] | None = None
    """Where the cut read them, for a batch of a deadline-ordered queue of several applications:
    each application's members' deadlines, ascending, the applications in order of first
    appearance in the batch (else None)."""


_DEADLINE, _ARRIVAL, _ID = 0, 1, 2  # the columns of `_Keys`


class _Keys:
    """One application's queued requests' deadline, arrival and id in queue order, as one array (kept
    along with its deque, so cutting and merging batches reads no request). A view handed out never
    changes: data is only appended past it, and compaction copies to a new array."""

    __slots__ = ("buf", "head", "tail")

    def __init__(self, reqs: Iterable[Request] = ()) -> None:
        k = [(r.deadline_ms, r.arrival_ms, r.id) for r in reqs]
        self.buf = np.empty((max(64, 2 * len(k)), 3))  # (capacity, 3): deadline, arrival, id
        self.buf[: len(k)] = np.reshape(k, (-1, 3))
        self.head, self.tail = 0, len(k)

    def push(self, reqs: Sequence[Request]) -> None:
        """The queries of one request (one deadline and arrival; ids as they come)."""
        n, r = len(reqs), reqs[0]
        if self.tail + n > len(self.buf):
            k = self.tail - self.head
            buf = np.empty((max(64, 2 * (k + n)), 3))
            buf[:k] = self.buf[self.head : self.tail]
            self.buf, self.head, self.tail = buf, 0, k
        rows = self.buf[self.tail : self.tail + n]
        rows[:, _DEADLINE], rows[:, _ARRIVAL] = r.deadline_ms, r.arrival_ms
        rows[:, _ID] = [q.id for q in reqs] if n > 1 else r.id
        self.tail += n

    def view(self, start: int, n: int, col: int = _DEADLINE) -> np.ndarray:
        """One column of the queued requests start .. start + n - 1 (read-only use)."""
        return self.buf[self.head + start : self.head + start + n, col]


app_of = attrgetter("app")
"""A request's application (`map(app_of, requests)` walks a batch in C)."""


def _by_deadline(r: Request) -> tuple[float, int]:
    return (r.deadline_ms, r.id)


def _by_arrival(r: Request) -> tuple[float, int]:
    return (r.arrival_ms, r.id)


class Queues:
    """Per-application deques grouped into queues; `order` is 'deadline' or 'arrival'."""

    def __init__(self, groups: list[list[str]], order: str = "deadline", _share: Queues | None = None) -> None:
        if order not in ("deadline", "arrival"):
            raise ValueError(f"queue order {order!r}: use 'deadline' or 'arrival'")
        self.groups = groups
        self.order = order
        self._key = _by_deadline if order == "deadline" else _by_arrival
        if _share is not None:  # a view over another's deques (`merged`)
            self._dq, self._dl, self._n = _share._dq, _share._dl, _share._n
            return
        self._dq: dict[str, deque[Request]] = {a: deque() for g in groups for a in g}
        self._dl = {a: _Keys() for a in self._dq}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def count(self, app: str) -> int:
        """Queued queries of one application."""
        return len(self._dq[app])

    def push(self, req: Request) -> None:
        self.push_many((req,))

    def push_many(self, reqs: Sequence[Request]) -> None:
        """Queue the queries of one request (one application and deadline), in order."""
        req = reqs[0]
        dq = self._dq[req.app]
        if dq and dq[-1].deadline_ms > req.deadline_ms:
            raise ValueError(
                f"request {req.id} of {req.app!r} has an earlier deadline than one already queued; "
                "submit each application's requests in arrival order"
            )
        dq.extend(reqs)
        self._dl[req.app].push(reqs)
        self._n += len(reqs)

    def expire_front(self, late: Callable[[Request], bool]) -> list[Request]:
        """Pop, from every deque's front, the requests for which `late` holds."""
        out: list[Request] = []
        for app, dq in self._dq.items():
            k = len(out)
            while dq and late(dq[0]):
                out.append(dq.popleft())
            self._dl[app].head += len(out) - k
        self._n -= len(out)
        return out

    def remove(self, ids: Sequence[int], app: str | None = None) -> list[Request]:
        """Take the requests with these ids out of their deques, wherever they are (a caller that went
        away), or only `app`'s; the rest keep their order. O(queue), found from the id column
        (vectorised): an id not queued costs no pass over requests."""
        out: list[Request] = []
        want = np.sort(np.asarray(ids, dtype=float))  # (k,) ascending
        if not len(want):
            return out
        for a in list(self._dq) if app is None else [app] if app in self._dq else []:  # (an app not served: none)
            dq = self._dq[a]
            queued = self._dl[a].view(0, len(dq), _ID)  # (len(dq),)
            # membership by binary search (np.isin's first call imports numpy.ma: a stall mid-serving)
            hit = want[np.minimum(want.searchsorted(queued), len(want) - 1)] == queued  # (len(dq),) bool
            if hit.any():
                keep = deque()
                for r, h in zip(dq, hit.tolist(), strict=True):
                    (out if h else keep).append(r)
                self._dq[a] = keep
                self._dl[a] = _Keys(keep)
        self._n -= len(out)
        return out

    def iter_app(self, app: str) -> Iterator[Request]:
        """One application's queued requests, in order."""
        return iter(self._dq[app])

    def iter(self, queue: int) -> Iterator[Request]:
        """A queue's requests in queue order (lazily merged across its applications)."""
        dqs = [self._dq[a] for a in self.groups[queue] if self._dq[a]]
        if len(dqs) == 1:
            return iter(dqs[0])
        return heapq.merge(*dqs, key=self._key)

    def deadlines(self, app: str, start: int, n: int) -> np.ndarray:
        """Deadlines of one application's queued requests start .. start + n - 1, ascending."""
        return self._dl[app].view(start, n)

    def head_deadlines(self, queue: int, n: int) -> tuple[list[Request], np.ndarray]:
        """The first n requests of a queue, in queue order, and their deadlines (n,)."""
        return self._head(queue, n)[:2]

    def _head(self, queue: int, n: int) -> tuple[list[Request], np.ndarray, list[str], np.ndarray | None]:
        """`head_deadlines`, with the queue's non-empty applications and, if several, each
        request's among them (an index, (n,)).

        OPTIMIZATION: merged across applications from the key columns (one stable sort by key, then
        by id: `iter`'s order), not request by request; only the first n of each application can
        be among them."""
        apps = [a for a in self.groups[queue] if self._dq[a]]
        if not apps:
            return [], np.empty(0), apps, None
        if len(apps) == 1:
            dq = self._dq[apps[0]]
            k = min(n, len(dq))
            return list(islice(dq, k)), self._dl[apps[0]].view(0, k), apps, None
        col = _DEADLINE if self.order == "deadline" else _ARRIVAL
        keys, ids, dls, sizes = [], [], [], []
        for a in apps:
            k = min(n, len(self._dq[a]))
            keys.append(self._dl[a].view(0, k, col))
            ids.append(self._dl[a].view(0, k, _ID))
            dls.append(self._dl[a].view(0, k))
            sizes.append(k)
        key = np.concatenate(keys)
        order = np.lexsort((np.concatenate(ids), key))[:n]  # (≤ n,): by key, then id
        d = (key if col == _DEADLINE else np.concatenate(dls))[order]
        src = np.repeat(np.arange(len(apps)), sizes)[order]
        # OPTIMIZATION: the requests reordered as an object array (in C), not one by one
        queued = chain.from_iterable(islice(self._dq[a], k) for a, k in zip(apps, sizes, strict=True))
        return np.fromiter(queued, object, len(key))[order].tolist(), d, apps, src

    def pop(self, batch: list[Request]) -> None:
        """Remove a batch that is a prefix of its queue (so a prefix of each deque)."""
        # OPTIMIZATION: a batch of one application (the usual case) counted by its length
        one = len({r.app: None for r in batch}) == 1
        for app, k in ({batch[0].app: len(batch)} if one else Counter(map(app_of, batch))).items():
            dq = self._dq[app]
            if k < len(batch):  # its first and last member of `app` (OPTIMIZATION: found from the ends)
                first = next(r for r in batch if r.app == app)
                last = next(r for r in reversed(batch) if r.app == app)
            else:
                first, last = batch[0], batch[-1]
            assert dq[0] is first and dq[k - 1] is last, "a batch must be a prefix of its queue"
            popleft = dq.popleft
            for _ in range(k):
                popleft()
            self._dl[app].head += k
        self._n -= len(batch)

    def merged(self, order: str = "deadline") -> Queues:
        """One queue over every application (deadline or arrival `order`), sharing these deques: a
        read-only view for planning (a batch cut from it is a prefix of each deque; pop it through
        `self`)."""
        return Queues([[a for g in self.groups for a in g]], order, _share=self)

    def nonempty(self) -> list[int]:
        return [i for i, g in enumerate(self.groups) if any(self._dq[a] for a in g)]


def deadline_cut(deadlines: Sequence[float], now_ms: float, cap: int, lat_fast: Sequence[float]) -> int:
    """Size of the next batch from a queue's head: the one whose members most often finish by their
    deadlines if it started now at the fastest setting (the smallest such size on ties).

    `deadlines` of the head in queue order, `lat_fast[b]` the fastest latency of a batch of b. On a
    device whose latency grows about linearly with the batch (a CPU) this is about the largest
    batch that still lets its most urgent member finish; on one with nearly flat latency (a GPU) a
    large batch serves more queries even if a few nearly hopeless members finish late, so
    throughput does not collapse under overload.
    """
    cap = min(cap, len(deadlines))
    d = np.asarray(deadlines[:cap], dtype=float)  # (cap,)
    finish = now_ms + np.asarray(lat_fast[1 : cap + 1], dtype=float)  # (cap,): a batch of b = 1..cap
    b = np.arange(1, cap + 1)
    if cap < 2 or (d[1:] >= d[:-1]).all():
        return _cut_sorted(d, finish, b)
    on_time = (d[None, :] >= finish[:, None]) & np.tri(cap, dtype=bool)  # (cap, cap): row b-1 = first b
    return int(on_time.sum(1).argmax()) + 1


def _cut_sorted(d: np.ndarray, finish: np.ndarray, b: np.ndarray) -> int:
    """`deadline_cut` of ascending deadlines `d`, given finish times and sizes 1.. of at least as
    many batches. OPTIMIZATION: O(cap log cap), and `finish` and `b` computed once per decision."""
    k = len(d)
    late = np.minimum(d.searchsorted(finish[:k], side="left"), b[:k])
    return int((b[:k] - late).argmax()) + 1


def _chunks(queues: Queues, qi: int, now_ms: float, cap: int, n: int, lat_fast, cut) -> Iterator[Candidate]:
    """A queue's pending batches in order, cut lazily (only as many as the caller takes); `cut`:
    (finish, b) of `_cut_sorted`, unless `lat_fast` is None."""
    if lat_fast is None:  # plain batching: consecutive batches of up to `cap`
        items, d = queues.head_deadlines(qi, cap * n)
        for p in range(0, len(items), cap):
            yield Candidate(items[p : p + cap], qi, float(d[p : p + cap].min()))
        return
    if len(queues.groups[qi]) > 1:  # several applications, merged: at most n batches of at most cap
        buf, d, apps, src = queues._head(qi, cap * n)  # (≤ cap · n,) deadlines of `buf`
        grouped = queues.order == "deadline"  # (then each application's members' deadlines ascend)
        pos = 0
        while pos < len(buf):
            w = d[pos : pos + cap]  # as cut from a window of cap (ascending in a deadline-ordered queue)
            m = _cut_sorted(w, *cut) if grouped else deadline_cut(w, now_ms, cap, lat_fast)
            reqs, dm = buf[pos : pos + m], d[pos : pos + m]
            groups = _groups(dm, None if src is None else src[pos : pos + m], apps) if grouped else None
            yield Candidate(reqs, qi, float(dm.min()), groups=groups)
            pos += m
        return
    # one application: deadlines ascending, kept by the queue
    it = queues.iter(qi)
    buf = list(islice(it, cap))
    app, pos = queues.groups[qi][0], 0
    while buf:
        d = queues.deadlines(app, pos, len(buf))  # (≤ cap,)
        m = _cut_sorted(d, *cut)
        yield Candidate(buf[:m], qi, float(d[0]), d[:m])
        pos += m
        buf = buf[m:] + list(islice(it, m))


def _groups(d: np.ndarray, src: np.ndarray | None, apps: list[str]) -> dict[str, np.ndarray]:
    """`Candidate.groups` of a batch: `d` its members' deadlines, `src` each one's application (an
    index into `apps`; None: `apps[0]`'s alone). OPTIMIZATION: from the key columns, not a pass
    over the requests (a shared batch holds up to B_max members)."""
    if src is None:
        return {apps[0]: d}
    return {apps[k]: d[src == k] for k in dict.fromkeys(src.tolist())}


def candidates(
    queues: Queues,
    now_ms: float,
    cap: int,
    n: int,
    lat_fast: Sequence[float] | None,
) -> list[Candidate]:
    """The next n pending batches over all queues, in execution order.

    Several queues (SLO classes): batches merged by the queue order (their head's arrival, or the
    batch deadline), ties by queue then position. One queue: its own order. Batches are cut
    lazily, so a decision cuts about n of them whatever the number of queues.
    """
    cut = None
    if lat_fast is not None:  # (cap,) each: as in deadline_cut, once for every queue
        cut = now_ms + np.asarray(lat_fast[1 : cap + 1], dtype=float), np.arange(1, cap + 1)
    streams = [_chunks(queues, qi, now_ms, cap, n, lat_fast, cut) for qi in queues.nonempty()]
    if len(streams) == 1:
        return list(islice(streams[0], n))
    if queues.order == "deadline":
        merged = heapq.merge(*streams, key=lambda c: c.deadline_ms)
    else:
        merged = heapq.merge(*streams, key=lambda c: c.requests[0].arrival_ms)
    return list(islice(merged, n))
