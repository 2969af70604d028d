"""Request formats of the servers `otas bench replay` drives, and how to read their answers.

- `otas`: KServe v2 JSON to /v2/models/{model}/infer, the application as a request parameter;
  outputs `label`, `gamma`, `deadline_met`, `latency_ms`.
- `otas-uint8`: the same endpoint and answer, the images as raw RGB pixels (`image_uint8`, UINT8
  [n, H, W, 3]) in the KServe v2 binary tensor extension: what a gateway that holds decoded images
  sends, with nothing for the server to decode (a GPU serves more images per second than a few cores
  decode PNGs).
- `triton`: KServe v2 JSON as Triton reads it: inputs `image` and `app` with a batch dimension
  ([1, 1]), the application's priority level as the request parameter `priority`; outputs `label`
  and `gamma` (bench/peers/pytriton_peer.py).
- `json`: the plain JSON a Ray Serve or LitServe handler reads, `{"app": ..., "image": base64}`,
  answered `{"label": ..., "gamma": ...}` (bench/peers/rayserve_peer.py, bench/peers/litserve_peer.py).

Every answer is one of: answered (200), rejected (the server refused with a status: overload,
queue full or queue timeout), error (any other status), lost (no answer: connection or timeout).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from otas.types import App

FORMATS = ("otas", "otas-uint8", "triton", "json")
HEADER_LENGTH = "Inference-Header-Content-Length"
REJECT_STATUS = (429, 503, 504)
"""Overload answers: 429/503 (queue full, backpressure), 504 (LitServe's queue timeout)."""


def priority_levels(apps: Sequence[App]) -> dict[str, int]:
    """Application -> Triton priority level, 1 (served first) for the tightest SLO."""
    order = sorted(apps, key=lambda a: (a.slo_ms, -a.utility, a.name))
    return {a.name: i + 1 for i, a in enumerate(order)}


@dataclass
class Format:
    name: str
    path: str
    """Endpoint path on the server's base URL."""
    levels: dict[str, int]
    size: int = 32
    """otas-uint8: the side of the model's raw-pixel input (images are sent at exactly this size)."""

    @property
    def raw(self) -> bool:
        """Images are raw pixels (`Pool.pixels`), not base64 PNGs (`Pool.bodies`)."""
        return self.name == "otas-uint8"

    @property
    def speaks_otas(self) -> bool:
        """Sent to otas itself: multi-image requests and the server's own deadline fields."""
        return self.name in ("otas", "otas-uint8")

    def headers(self, body: bytes) -> dict[str, str]:
        """The HTTP headers of `body`: a binary-tensor request names the length of its JSON header."""
        if not self.raw:
            return {"content-type": "application/json"}
        _, end = json.JSONDecoder().raw_decode(body.decode("latin-1"))  # the JSON header is ASCII (ensure_ascii)
        return {"content-type": "application/octet-stream", HEADER_LENGTH: str(end)}

    def body(self, b64png: bytes, app: str) -> bytes:
        """One request for one base64 PNG (otas-uint8: raw pixels) of application `app`."""
        a = app.encode()
        if self.raw:
            return self.body_many([b64png], app)
        if self.name == "otas":
            head = b'{"parameters":{"app":"%s"},"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"data":["' % a
            return head + b64png + b'"]}]}'
        if self.name == "triton":
            head = (
                b'{"parameters":{"priority":%d},"inputs":[{"name":"app","datatype":"BYTES","shape":[1,1],'
                % (self.levels[app])
            )
            head += b'"data":["%s"]},{"name":"image","datatype":"BYTES","shape":[1,1],"data":["' % a
            return head + b64png + b'"]}]}'
        return b'{"app":"%s","image":"' % a + b64png + b'"}'

    def body_many(self, b64pngs: Sequence[bytes], app: str) -> bytes:
        """One request for several base64 PNGs of application `app` (`otas` only: one KServe v2 BYTES
        input of shape [n]; `otas-uint8`: raw pixels, one UINT8 input of shape [n, size, size, 3] in
        binary; the other servers' handlers read one image per request)."""
        if self.raw:
            raw = b"".join(b64pngs)
            if len(raw) != len(b64pngs) * self.size * self.size * 3:
                raise ValueError(f"{len(raw)} bytes of pixels for {len(b64pngs)} images of {self.size}x{self.size}x3")
            shape = [len(b64pngs), self.size, self.size, 3]
            inp = {
                "name": "image_uint8",
                "datatype": "UINT8",
                "shape": shape,
                "parameters": {"binary_data_size": len(raw)},
            }
            return json.dumps({"parameters": {"app": app}, "inputs": [inp]}, separators=(",", ":")).encode() + raw
        if len(b64pngs) == 1:
            return self.body(b64pngs[0], app)
        if not self.speaks_otas:
            raise ValueError(f"the {self.name!r} format sends one image per request; coalescing needs 'otas'")
        head = b'{"parameters":{"app":"%s"},"inputs":[{"name":"image","datatype":"BYTES","shape":[%d],"data":["' % (
            app.encode(),
            len(b64pngs),
        )
        return head + b'","'.join(b64pngs) + b'"]}]}'

    def parse_many(self, status: int, raw: bytes, n: int) -> list[dict[str, Any]]:
        """The fields of each of the `n` images of one answer (`parse`'s, per image); a refusal is every
        image's."""
        if n == 1 or status != 200:
            one = self.parse(status, raw)
            return [dict(one) for _ in range(n)]
        if not self.speaks_otas:
            raise ValueError(f"the {self.name!r} format answers one image per request, not {n}")
        out = {o["name"]: o["data"] for o in json.loads(raw)["outputs"]}
        if not len(out["label"]) == len(out["gamma"]) == len(out["deadline_met"]) == n:
            raise ValueError(f"answer holds {len(out['label'])} images, the request {n}")
        return [
            {"label": out["label"][i], "gamma": int(out["gamma"][i]), "server_met": out["deadline_met"][i],
             "server_ms": out["latency_ms"][3 * i + 2]}
            for i in range(n)
        ]  # fmt: skip

    def parse(self, status: int, raw: bytes) -> dict[str, Any]:
        """Fields of one answer: label and gamma when answered, else the server's reason."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if status != 200:
            text = raw[:120].decode(errors="replace").strip()
            if isinstance(body, dict):
                text = body.get("reason") or body.get("error") or body.get("detail") or text
            reason = text if isinstance(text, str) else json.dumps(text)[:120]
            return {"reason": f"{status}: {reason}" if not self.speaks_otas else reason}
        if not isinstance(body, dict):
            raise ValueError(f"answer is not a JSON object: {raw[:80]!r}")
        if self.name == "json":
            return {"label": body["label"], "gamma": int(body["gamma"])}
        out = {o["name"]: o["data"] for o in body["outputs"]}
        rec = {"label": out["label"][0], "gamma": int(out["gamma"][0])}
        if self.speaks_otas:
            rec.update(server_met=out["deadline_met"][0], server_ms=out["latency_ms"][2])
        return rec


def make_format(name: str, apps: Sequence[App], model: str = "", path: str = "", size: int = 32) -> Format:
    """The format `name` for these applications; `path` overrides the endpoint (json: default /predict);
    `size`: the model's raw-pixel input side (otas-uint8)."""
    if name not in FORMATS:
        raise ValueError(f"format {name!r}: use one of {', '.join(FORMATS)}")
    if name != "json" and not path:
        if not model:
            raise ValueError(f"format {name!r} needs the model name for /v2/models/{{model}}/infer; pass --model")
        path = f"/v2/models/{model}/infer"
    return Format(name, path or "/predict", priority_levels(apps), size)


def input_size(url: str, model: str) -> int:
    """The side of the model's raw-pixel input (`image_uint8`), from its KServe v2 metadata."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/v2/models/{model}", timeout=10) as r:
        meta = json.loads(r.read())
    return next(int(i["shape"][1]) for i in meta["inputs"] if i["name"] == "image_uint8")


def rejected(status: int) -> bool:
    return status in REJECT_STATUS
