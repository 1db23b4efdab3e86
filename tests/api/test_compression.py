"""Answers are gzipped for clients that accept it (JSON, the dashboard's files, streamed
downloads), plain for the others; a stream stays incremental and events are never held back."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from training_platform.api.app import compress
from training_platform.api.dashboard import BUILD_DIR
from training_platform.jobs.supervisor import reconcile_job

GZIP = {"Accept-Encoding": "gzip"}
PLAIN = {"Accept-Encoding": "identity"}


def test_json_and_the_dashboards_files_are_gzipped_when_accepted(api) -> None:  # type: ignore[no-untyped-def]
    for path in ("/api/v1/ws/schema", "/openapi.json"):
        zipped = api.get(path, headers=GZIP)
        plain = api.get(path, headers=PLAIN)
        assert zipped.headers["content-encoding"] == "gzip", path
        assert "content-encoding" not in plain.headers, path
        assert zipped.json() == plain.json() and plain.json()
        assert zipped.num_bytes_downloaded < len(plain.content) / 3, path
    page = api.get("/jobs/1", headers={**GZIP, "Authorization": ""})  # 496 bytes: left plain
    assert '<div id="app"></div>' in page.text
    script = next(p for p in page.text.split('"') if p.startswith("/assets/") and p.endswith(".js"))
    on_disk = (BUILD_DIR / script.lstrip("/")).read_bytes()
    zipped = api.get(script, headers=GZIP)
    assert zipped.headers["content-encoding"] == "gzip" and zipped.content == on_disk
    assert "immutable" in zipped.headers["cache-control"]
    plain = api.get(script, headers=PLAIN)
    assert "content-encoding" not in plain.headers and plain.content == on_disk
    assert zipped.num_bytes_downloaded < len(on_disk) / 2
    # a small answer is not worth it
    assert "content-encoding" not in api.get("/healthz", headers=GZIP).headers


def test_a_streamed_download_is_gzipped_and_whole(  # type: ignore[no-untyped-def]
    api, engine, settings, runner, running_job, metrics_line
) -> None:
    job, run_dir = running_job()
    runner.write(run_dir, "metrics", b"".join(metrics_line(s, loss=1.0 / s) for s in range(1, 301)))
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    path = f"/api/v1/jobs/{job.id}/metrics/export"
    zipped = api.get(path, headers=GZIP)
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.text == api.get(path, headers=PLAIN).text
    assert zipped.text.splitlines()[-1] == f"300,1,loss,{1.0 / 300}"


def _app(gate: asyncio.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/stream")
    def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first chunk " * 200
            await gate.wait()  # the second is not even made until the first has arrived
            yield b"second chunk " * 200

        return StreamingResponse(chunks(), media_type="text/csv")

    @app.get("/events")
    def events() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: " + b"x" * 2000 + b"\n\n"
            await gate.wait()
            yield b"data: done\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    compress(app)
    return app


def _get(path: str) -> tuple[dict[str, str], list[bytes]]:
    """Drive the app as a server does; each body message as it was sent, the first arriving
    before the app may make the second."""

    async def run() -> tuple[dict[str, str], list[bytes]]:
        gate = asyncio.Event()
        app = _app(gate)
        headers: dict[str, str] = {}
        bodies: list[bytes] = []

        async def receive() -> dict[str, object]:
            await asyncio.Event().wait()  # the client never sends more
            return {}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                headers.update({k.decode(): v.decode() for k, v in message["headers"]})  # type: ignore[attr-defined]
            elif message["type"] == "http.response.body":
                bodies.append(message.get("body", b""))  # type: ignore[arg-type]
                gate.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"accept-encoding", b"gzip"), (b"host", b"test")],
            "scheme": "http",
            "server": ("test", 80),
            "client": ("127.0.0.1", 1),
            "root_path": "",
        }
        await asyncio.wait_for(app(scope, receive, send), 10)
        return headers, bodies

    return asyncio.run(run())


def test_a_gzipped_stream_sends_each_chunk_as_it_is_made_and_events_stay_plain() -> None:
    headers, bodies = _get("/stream")
    assert headers["content-encoding"] == "gzip"
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    # the first message alone decodes to the first chunk: nothing was held back
    assert inflate.decompress(bodies[0]) == b"first chunk " * 200
    rest = b"".join(inflate.decompress(b) for b in bodies[1:])
    assert rest == b"second chunk " * 200
    assert gzip.decompress(b"".join(bodies)) == b"first chunk " * 200 + b"second chunk " * 200
    headers, bodies = _get("/events")
    assert "content-encoding" not in headers
    assert bodies[0].startswith(b"data: xxx") and b"data: done" in b"".join(bodies)
