"""Webhooks: job events and alerts become one delivery each, sent as JSON or Slack, retried."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import Session

from training_platform.core.errors import InvalidInput
from training_platform.jobs.supervisor import reconcile_job
from training_platform.monitoring import webhooks


class Receiver:
    """A real HTTP server on loopback that records what is POSTed to it."""

    def __init__(self, status: int = 204) -> None:
        self.bodies: list[dict] = []  # type: ignore[type-arg]
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/s3cr3t-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    """The receivers listen on loopback: an administrator's opt-in (TP_ALLOW_PRIVATE_URLS)."""
    return settings.model_copy(update={"allow_private_urls": True})


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver, Receiver]]:
    made = (Receiver(), Receiver(), Receiver(status=500))
    yield made
    for receiver in made:
        receiver.close()


def _pass(engine, settings) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        webhooks.collect(session=session)
        return webhooks.send(session=session, settings=settings)


def test_events_and_alerts_are_sent_once_as_json_and_slack_and_failures_retried(
    api, engine, settings, runner, running_job, metrics_line, receivers
) -> None:  # type: ignore[no-untyped-def]
    plain, slack, broken = receivers
    for name, receiver, format in (("ops", plain, "json"), ("chat", slack, "slack")):
        made = api.post(
            "/api/v1/webhooks",
            json={"name": name, "url": receiver.url, "format": format},
        )
        assert made.status_code == 201, made.text
        assert "s3cr3t-token" not in made.text
    api.post("/api/v1/webhooks", json={"name": "down", "url": broken.url, "events": ["job.failed"]})
    job, run_dir = running_job()
    runner.write(run_dir, "metrics", metrics_line(1, loss=float("nan")))
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    runner.finish(run_dir, 3)
    reconcile_job(engine, settings, job.id, {runner.kind: runner})

    with Session(engine) as session:  # the maintenance tick hands these to the notify task
        webhooks.collect(session=session)
        assert webhooks.due_count(session=session) == 5
    report = _pass(engine, settings)
    assert report == {"sent": 4, "failed": 0, "retrying": 1}
    with Session(engine) as session:  # the failed one is due again in 5 s, not now
        assert webhooks.due_count(session=session) == 0
    events = sorted(body["event"] for body in plain.bodies)
    assert events == ["alert", "job.failed"]
    failed = next(b for b in plain.bodies if b["event"] == "job.failed")
    assert failed["job"]["id"] == job.id and "exited with code 3" in failed["reason"]
    alert = next(b for b in plain.bodies if b["event"] == "alert")
    assert alert["alert"]["message"] == "loss is nan at step 1"
    texts = sorted(body["text"] for body in slack.bodies)
    assert any("failed" in t and f"job {job.id}" in t for t in texts)
    assert any("alert: loss is nan" in t for t in texts)

    assert _pass(engine, settings) == {"sent": 0, "failed": 0, "retrying": 0}  # nothing twice
    assert len(plain.bodies) == 2
    listed = {h["name"]: h for h in api.get("/api/v1/webhooks").json()}
    assert listed["down"]["deliveries"] == {"pending": 1, "sent": 0, "failed": 0}
    assert listed["down"]["last_error"] == "HTTP 500"
    assert "s3cr3t-token" not in json.dumps(listed)
    tested = api.post("/api/v1/webhooks/ops/test").json()
    assert tested["delivered"] is True and plain.bodies[-1]["event"] == "test"


def test_a_webhook_needs_an_http_url(api) -> None:  # type: ignore[no-untyped-def]
    refused = api.post("/api/v1/webhooks", json={"name": "x", "url": "file:///etc/passwd"})
    assert refused.status_code == 422 and "http" in refused.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8000/hook",
        "https://100.64.0.1/hook",
    ],
)
def test_internal_addresses_are_refused_unless_allowed(url: str) -> None:
    from training_platform.core.netguard import internal_reason

    reason = internal_reason(url)
    assert reason is not None and "internal address" in reason
    assert "hook" not in reason and "meta-data" not in reason  # never the path
    assert internal_reason("https://93.184.216.34/hook") is None  # a public address


def test_by_default_a_webhook_to_an_internal_address_is_refused_and_nothing_is_sent(
    api, engine, settings, receivers
) -> None:  # type: ignore[no-untyped-def]
    plain = receivers[0]
    strict = settings.model_copy(update={"allow_private_urls": False})
    with Session(engine) as session:
        with pytest.raises(InvalidInput) as refused:
            webhooks.create(
                session=session, settings=strict, name="in", url=plain.url, format="json",
                events=["job.failed"],
            )  # fmt: skip
        assert refused.value.loc == ("body", "url")
        assert "internal address" in refused.value.message
        assert "s3cr3t" not in refused.value.message
        session.rollback()
        assert webhooks.list_webhooks(session=session) == []
    # Stored while allowed, then disallowed: the test delivery is refused, nothing arrives.
    assert api.post("/api/v1/webhooks", json={"name": "in", "url": plain.url}).status_code == 201
    with Session(engine) as session:
        result = webhooks.send_test(session=session, settings=strict, name="in")
    assert result["delivered"] is False and "internal address" in result["error"]
    assert plain.bodies == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:8000/hook",  # a name that resolves to loopback
    ],
)
def test_the_api_refuses_webhooks_to_internal_addresses(url: str, settings) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from training_platform.api.app import create_app

    strict = settings.model_copy(update={"allow_private_urls": False})
    with TestClient(create_app(strict)) as client:
        token = strict.admin_token_file.read_text().strip()
        client.headers["Authorization"] = f"Bearer {token}"
        refused = client.post("/api/v1/webhooks", json={"name": "inward", "url": url})
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"][0]
        assert detail["loc"] == ["body", "url"] and "internal address" in detail["msg"]
        assert "hook" not in detail["msg"] and "meta-data" not in detail["msg"]
        assert client.get("/api/v1/webhooks").json() == []


def test_link_local_needs_its_network_named_even_where_private_addresses_are_allowed() -> None:
    from training_platform.core.netguard import Refused, check

    metadata = "http://169.254.169.254/latest"
    with pytest.raises(Refused, match="internal address"):
        check(metadata, allow_private=True)
    assert check(metadata, allowed=["169.254.169.254/32"])
    assert check("http://10.0.0.1/x", allowed=["10.0.0.0/8"])
    with pytest.raises(Refused):
        check("http://10.0.0.1/x", allowed=["10.1.0.0/16"])


def test_a_delivery_goes_to_the_address_resolved_once_under_the_url_s_name(
    api, engine, settings, receivers
) -> None:  # type: ignore[no-untyped-def]
    """DNS rebinding: the request connects to the address the check resolved; the receiver
    still sees the name the URL gave."""
    from training_platform.core.netguard import pin

    plain = receivers[0]
    port = plain.server.server_address[1]
    hosts: list[str] = []
    original = plain.server.RequestHandlerClass.do_POST

    def do_post(handler) -> None:  # type: ignore[no-untyped-def]
        hosts.append(handler.headers["Host"])
        original(handler)

    plain.server.RequestHandlerClass.do_POST = do_post  # type: ignore[attr-defined]
    target = pin(f"http://localhost:{port}/hook", allow_private=True)
    assert target.url in (f"http://127.0.0.1:{port}/hook", f"http://[::1]:{port}/hook")
    assert target.headers == {"Host": f"localhost:{port}"} and target.extensions == {}
    https = pin("https://user:pw@localhost:8443/x?q=1", allow_private=True)
    assert https.extensions == {"sni_hostname": "localhost"} and "user:pw@" in https.url

    made = api.post("/api/v1/webhooks", json={"name": "named", "url": f"http://localhost:{port}/h"})
    assert made.status_code == 201, made.text
    assert api.post("/api/v1/webhooks/named/test").json() == {"delivered": True}
    assert hosts == [f"localhost:{port}"]


def test_the_test_call_says_delivered_or_not_and_nothing_of_the_answer(api, receivers) -> None:  # type: ignore[no-untyped-def]
    """A status code or a kind of connection failure would make the test call a port scanner."""
    broken = receivers[2]  # answers 500
    api.post("/api/v1/webhooks", json={"name": "broken", "url": broken.url})
    assert api.post("/api/v1/webhooks/broken/test").json() == {"delivered": False}
    from training_platform.cli.services import free_port

    closed = f"http://127.0.0.1:{free_port()}/hook"
    api.post("/api/v1/webhooks", json={"name": "closed", "url": closed})
    assert api.post("/api/v1/webhooks/closed/test").json() == {"delivered": False}
