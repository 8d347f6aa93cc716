"""Logging: text (one line per record) or JSON (one object per line)."""

from __future__ import annotations

import json
import logging
import sys
import time

from draco.settings import Settings

_CONTROL = {i: f"\\x{i:02x}" for i in range(32)}


class TextFormatter(logging.Formatter):
    """One line per record: control characters in messages are escaped, so a
    client-chosen path cannot forge a log line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).translate(_CONTROL)


class JsonFormatter(logging.Formatter):
    """Each record one JSON object per line, whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("hypercorn.access").setLevel(logging.INFO)
