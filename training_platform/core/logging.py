"""Logging setup shared by every process."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactQueries(logging.Filter):
    """Request lines keep their path, never their query string: a query may carry a secret
    (a client that puts a token in a URL), and logs are read by more people than tokens are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        return True


def _redacted(value: object) -> object:
    if isinstance(value, str) and value.startswith("/") and "?" in value:
        return value.split("?", 1)[0] + "?<redacted>"
    return value


def keep_secrets_out_of_logs() -> None:
    """Uvicorn's access and WebSocket lines without query strings; no request line from httpx
    (a webhook's URL holds its token). Idempotent."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactQueries) for existing in logger.filters):
            logger.addFilter(RedactQueries())
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr at `level`; called once per process."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT)
    root.setLevel(level)
    keep_secrets_out_of_logs()
