"""Structured logs: one JSON object per line, for `otas serve` and the Ray deployments."""

from __future__ import annotations

import json
import logging


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


CLIENT_FAULTS = ("Invalid HTTP request received.", "Unsupported upgrade request.", "No supported WebSocket library")
"""uvicorn's warnings about what a client sent (each is also answered: 400 `bad_http`, or the
request served as plain HTTP/1.1)."""


class ClientFaults(logging.Filter):
    """A client's fault is not the operator's: uvicorn's warnings about malformed or upgrade
    requests and python-multipart's about malformed bodies become INFO `client_fault` lines (dropped
    below INFO), so a client cannot fill the log with warnings."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and (
            record.name.startswith(("python_multipart", "multipart"))
            or record.name == "uvicorn.error"
            and str(record.msg).startswith(CLIENT_FAULTS)
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.event = "client_fault"
            return self.level <= logging.INFO
        return True


def setup_logging(level: str = "info") -> None:
    """otas and uvicorn at `level`; every other library (python-multipart, asyncio, grpc, ...)
    through the same JSON handler on the root logger, at WARNING and above, so no line of the log
    is anything but JSON."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ClientFaults(logging.getLevelName(level.upper())))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in ("otas", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)  # warnings.warn (torch, timm, our own) through the same handler
