"""No secret in a log line: query strings out of uvicorn's request lines, httpx quiet."""

from __future__ import annotations

import logging

import pytest

from training_platform.core.logging import keep_secrets_out_of_logs


def test_request_lines_keep_their_path_and_lose_their_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keep_secrets_out_of_logs()
    keep_secrets_out_of_logs()  # idempotent: one filter
    access = logging.getLogger("uvicorn.access")
    assert len(access.filters) == 1
    with caplog.at_level(logging.INFO):
        access.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/api/v1/jobs?token=s3cr3t", "1.1", 200
        )
        logging.getLogger("uvicorn.error").info(
            '%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/api/v1/ws/jobs/1?token=s3cr3t"
        )
        logging.getLogger("httpx").info("HTTP Request: POST https://hooks.example/T/s3cr3t")
    text = caplog.text
    assert "s3cr3t" not in text
    assert '"GET /api/v1/jobs?<redacted> HTTP/1.1" 200' in text
    assert '"WebSocket /api/v1/ws/jobs/1?<redacted>" [accepted]' in text
