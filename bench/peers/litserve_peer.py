"""LitServe serving the shipped model at a fixed γ.

Configured as LitServe's batching docs recommend: `LitAPI(max_batch_size, batch_timeout)` (the API
server collects requests into a batch of at most max_batch_size, waiting at most batch_timeout),
one worker on the CPU, and the server's request `timeout` set to the loosest application SLO: a
request still queued after it is answered 504 instead of being served late. LitServe has no
queue-size limit. Clients POST JSON `{"app": ..., "image": base64 PNG}` to /predict and get
`{"label": ..., "gamma": ...}`.

Run: python bench/peers/litserve_peer.py --port 8100 --gamma 0 --max-batch 16 --delay-ms 10
Needs the `peers` extra.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import litserve as ls  # noqa: E402
from peer_model import PeerModel, peer_args  # noqa: E402

from otas.config import default_apps_path, load_apps  # noqa: E402


class ClassifierAPI(ls.LitAPI):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(max_batch_size=args.max_batch, batch_timeout=args.delay_ms / 1e3)
        self.args = args

    def setup(self, device: str) -> None:
        a = self.args
        self.model = PeerModel(a.gamma, a.max_batch, a.noop, a.apps)

    def decode_request(self, request: dict) -> tuple[bytes, str]:
        return base64.b64decode(request["image"]), request["app"]

    def predict(self, items: list[tuple[bytes, str]]) -> list[str]:
        return self.model.classify([i for i, _ in items], [a for _, a in items])

    def encode_response(self, label: str) -> dict:
        return {"label": label, "gamma": self.model.gamma}


def main() -> None:
    args = peer_args(__doc__.splitlines()[0]).parse_args()
    slo_s = max(a.slo_ms for a in load_apps(args.apps or default_apps_path("cpu"))) / 1e3
    server = ls.LitServer(ClassifierAPI(args), accelerator="cpu", workers_per_device=1, timeout=slo_s)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
