"""A bad request, as every transport reports it: a status, a stable `reason` code and a message
that names the offending value and the fix. HTTP answers `status` with `error_body`; gRPC maps the
status to its own code (`otas.server.grpc_api.service`)."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A bad request: HTTP `status`, a stable `reason` code, and a message with the fix."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def __reduce__(self):  # crosses the process boundary from the JSON parser (`parsing.py`)
        return ProtocolError, (self.status, self.reason, self.message)


MAX_MESSAGE = 1024
"""Characters of an error message sent at most: a message may quote the client's own values, and a
7 MB field must not come back as a 7 MB error (nor a gRPC status over 16 KiB, which clients drop)."""


def clip(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` cut to about `limit` characters in its middle: its start names the value, its end the fix."""
    if len(message) <= limit:
        return message
    tail = limit // 4
    return f"{message[: limit - tail]} ...({len(message) - limit} characters cut)... {message[-tail:]}"


def error_body(message: str, reason: str) -> dict[str, str]:
    """The protocol's error body (`error`, `clip`ped) plus `reason`, a stable code for programs."""
    return {"error": clip(message), "reason": reason}
