"""Logging: text (one line per record) or JSON (one object per line)."""

from __future__ import annotations

import json
import logging
import sys
import time

from draco.settings import Settings


def escape(text: str) -> str:
    """`text` with every character that is not printable written as its escape: C0 and
    C1 controls, DEL, line and paragraph separators (U+2028, U+2029, U+0085), format
    characters. A path or header a client chose can then neither break a record into
    two lines nor send a terminal its own control sequences."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class TextFormatter(logging.Formatter):
    """One line per record, whatever it holds (a traceback too)."""

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


class JsonFormatter(logging.Formatter):
    """Each record one JSON object per line, whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        when = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z"
        )
        entry = {
            "time": when,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry).replace(
            "\x7f", "\\u007f"
        )  # ASCII out; DEL is the one control json leaves


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    text = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else text)
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("hypercorn.access").setLevel(logging.INFO)
