"""Logging set-up, done once by the CLI: plain ``key=value`` lines or JSON lines for production."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC ISO 8601), level, logger, message, exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Configure the root logger to write to stderr; quiet noisy libraries to WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in (
        "httpx",
        "httpcore",
        "urllib3",
        "aiokafka",
        "faust",
        "mode",
        "sentence_transformers",
        "transformers",
        "huggingface_hub",
        "librdkafka",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
