"""The daemon's logs: one event per line on stderr, JSON by default (``log_format = "text"``: plain).

A line is an ``event`` name and its fields (``event("reloaded", generation=3)``), so an operator's
log pipeline filters on ``event`` rather than parsing sentences.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "event", "log"]

log = logging.getLogger("edgeexit.daemon")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event/message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        text = f"{record.levelname.lower()} {record.getMessage()}" + (f" {fields}" if fields else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("edgeexit")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def event(name: str, level: int = logging.INFO, **fields: object) -> None:
    log.log(level, name, extra={"fields": {"event": name, **fields}})
