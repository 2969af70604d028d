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


def error_body(message: str, reason: str) -> dict[str, str]:
    """The protocol's error body (`error`) plus `reason`, a stable code for programs."""
    return {"error": message, "reason": reason}
