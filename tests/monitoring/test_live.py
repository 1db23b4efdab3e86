"""WebSocket /api/v1/ws/jobs/{id}: auth, snapshot, live points and log, exact resume."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
from starlette.websockets import WebSocketDisconnect

from training_platform.jobs.supervisor import reconcile_job

# A socket that never gets the message it waits for blocks in receive_json: fail in two
# minutes rather than hold a worker for the suite's ten.
pytestmark = pytest.mark.timeout(120)


def _token(settings) -> str:  # type: ignore[no-untyped-def]
    return str(settings.admin_token_file.read_text().strip())


def _receive_until(ws, predicate, limit: int = 50) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    seen = []
    for _ in range(limit):
        message = ws.receive_json()
        seen.append(message)
        if predicate(message):
            return seen
    raise AssertionError(f"no matching message in {seen}")


def _pairs(snapshot: dict) -> list[tuple[int, str]]:  # type: ignore[type-arg]
    """(step, key) of every point of a snapshot, by step."""
    return sorted((step, key) for key, pairs in snapshot["series"].items() for step, _ in pairs)


def test_a_socket_without_a_valid_token_is_refused(api, settings, running_job) -> None:  # type: ignore[no-untyped-def]
    job, _ = running_job()
    # the URL never carries the token (access logs keep URLs): a socket whose URL does is closed
    url = f"/api/v1/ws/jobs/{job.id}?token={_token(settings)}"
    with api.websocket_connect(url) as ws:
        error = ws.receive_json()
        assert error["type"] == "error" and "never in the URL" in error["message"]
        with pytest.raises(WebSocketDisconnect) as refused:
            ws.receive_json()
    assert refused.value.code == 4401
    with api.websocket_connect(f"/api/v1/ws/jobs/{job.id}") as ws:
        ws.send_json({"type": "hello", "token": "also-wrong"})
        error = ws.receive_json()
        assert error["type"] == "error" and "token" in error["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4401
    schema = api.get("/api/v1/ws/schema").json()
    assert schema["version"] == 1 and "snapshot" in str(schema["server"])


def test_points_stream_live_and_a_reconnect_gets_exactly_what_it_missed(
    api, engine, settings, runner, running_job, metrics_line
) -> None:  # type: ignore[no-untyped-def]
    job, run_dir = running_job()
    watch = {runner.kind: runner}
    runner.write(run_dir, "metrics", b"".join(metrics_line(s, loss=10.0 - s) for s in (1, 2, 3)))
    runner.write(run_dir, "log", b"step 1\nstep 2\nstep 3\n")
    reconcile_job(engine, settings, job.id, watch)
    url = f"/api/v1/ws/jobs/{job.id}"
    received: list[tuple[int, str]] = []
    with api.websocket_connect(url) as ws:
        ws.send_json({"type": "hello", "token": _token(settings)})
        snapshot = ws.receive_json()
        assert snapshot["v"] == 1 and snapshot["type"] == "snapshot"
        assert snapshot["job"]["status"] == "running" and snapshot["last_step"] == 3
        assert snapshot["log_tail"] == "step 1\nstep 2\nstep 3\n"
        received += _pairs(snapshot)
        runner.write(run_dir, "metrics", b"".join(metrics_line(s, loss=1.0) for s in (4, 5)))
        runner.write(run_dir, "log", b"step 4\nstep 5\n")
        reconcile_job(engine, settings, job.id, watch)
        seen = _receive_until(
            ws, lambda m: m["type"] == "metrics" and m["last_step"] == 5, limit=10
        )
        for message in seen:
            if message["type"] == "metrics":
                received += [(p["step"], p["key"]) for p in message["points"]]
        logs = [m for m in seen if m["type"] == "log"]
        if not logs:
            logs = _receive_until(ws, lambda m: m["type"] == "log", limit=5)[-1:]
        assert logs[0]["offset"] == len(b"step 1\nstep 2\nstep 3\n")
        assert logs[0]["text"] == "step 4\nstep 5\n"
        last_step = max(step for step, _ in received)
    # Disconnected: the run goes on; a reconnect with the last step gets exactly the rest.
    runner.write(run_dir, "metrics", b"".join(metrics_line(s, loss=0.5) for s in (6, 7, 8)))
    reconcile_job(engine, settings, job.id, watch)
    with api.websocket_connect(f"{url}?last_step={last_step}") as ws:
        ws.send_json({"type": "hello", "token": _token(settings)})
        resumed = ws.receive_json()
        received += _pairs(resumed)
        assert resumed["last_step"] == 8
        runner.finish(run_dir, 0)
        reconcile_job(engine, settings, job.id, watch)
        status = _receive_until(ws, lambda m: m["type"] == "status", limit=10)[-1]
        assert status["job"]["status"] in ("succeeded", "failed")
    assert received == [(s, "loss") for s in range(1, 9)]  # each once, none missing


def test_a_client_that_cannot_keep_up_is_dropped_not_waited_for() -> None:
    from training_platform.monitoring.hub import QUEUE_LIMIT, Subscription

    async def flood() -> Subscription:
        subscription = Subscription(job_id=1)
        for step in range(QUEUE_LIMIT + 10):
            subscription.offer({"type": "metrics", "points": [], "last_step": step})
        return subscription

    subscription = asyncio.run(flood())
    # Memory stays bounded; the handler closes the socket (4008) and the client resumes.
    assert subscription.dropped.is_set() and subscription.queue.qsize() == QUEUE_LIMIT


def test_the_overview_socket_shows_counts_and_each_job_change(
    api, engine, settings, running_job
) -> None:  # type: ignore[no-untyped-def]
    job, _ = running_job()
    with api.websocket_connect("/api/v1/ws/overview") as ws:
        ws.send_json({"type": "hello", "token": _token(settings)})
        snapshot = ws.receive_json()
        assert snapshot["type"] == "overview" and snapshot["counts"] == {"running": 1}
        assert [j["id"] for j in snapshot["jobs"]] == [job.id]
        cancelled = api.post(f"/api/v1/jobs/{job.id}/cancel")
        assert cancelled.status_code == 200
        # The status and the new counts come in either order: one poll may read the counts
        # after the change committed and the changed rows before it.
        statuses: list[dict] = []  # type: ignore[type-arg]
        counts: list[dict] = []  # type: ignore[type-arg]

        def both_seen(message: dict) -> bool:  # type: ignore[type-arg]
            if message["type"] in ("status", "counts"):
                (statuses if message["type"] == "status" else counts).append(message)
            return any(m["job"]["status"] == "cancelling" for m in statuses) and bool(
                counts and counts[-1]["counts"] == {"cancelling": 1}
            )

        _receive_until(ws, both_seen, limit=10)
        assert {m["job_id"] for m in statuses} == {job.id}


def test_the_overview_socket_pushes_a_running_jobs_steps_and_each_pipeline_change(
    api, engine, settings, runner, running_job, metrics_line
) -> None:  # type: ignore[no-untyped-def]
    """What the jobs list and the pipeline pages wait for instead of polling."""
    job, run_dir = running_job()
    with api.websocket_connect("/api/v1/ws/overview") as ws:
        ws.send_json({"type": "hello", "token": _token(settings)})
        assert ws.receive_json()["type"] == "overview"
        runner.write(run_dir, "metrics", b"".join(metrics_line(s, loss=1.0) for s in (1, 2, 3)))
        reconcile_job(engine, settings, job.id, {runner.kind: runner})
        moved = _receive_until(
            ws, lambda m: m["type"] == "progress" and m["job"]["progress_step"] == 3, limit=20
        )[-1]
        assert moved["job_id"] == job.id and moved["job"]["id"] == job.id

        made = api.post("/api/v1/pipelines", json={"template": "sft-dpo"})
        assert made.status_code == 201, made.text
        pipeline_id = made.json()["id"]
        created = _receive_until(ws, lambda m: m["type"] == "pipeline", limit=20)[-1]
        assert created["pipeline"]["id"] == pipeline_id
        assert api.post(f"/api/v1/pipelines/{pipeline_id}/cancel").status_code == 200
        _receive_until(
            ws,
            lambda m: m["type"] == "pipeline" and m["pipeline"]["status"] != "running",
            limit=20,
        )


def test_a_change_between_a_snapshot_and_the_first_overview_poll_is_reported(
    engine, running_job
) -> None:  # type: ignore[no-untyped-def]
    """The overview poller's first read used to take its own starting mark: a job that changed
    after a client's snapshot and before that read was never reported to it."""
    from sqlalchemy import update
    from sqlmodel import Session, col

    from training_platform.core.types import utcnow
    from training_platform.jobs.models import Job
    from training_platform.monitoring import service
    from training_platform.monitoring.hub import OVERVIEW, LiveHub

    job, _ = running_job()

    def read_changes(mark):  # type: ignore[no-untyped-def]
        with Session(engine) as session:
            return service.changes_since(session=session, mark=mark)

    async def scenario() -> dict:  # type: ignore[type-arg]
        hub = LiveHub("redis://127.0.0.1:1/0", lambda _: None, read_changes)  # no Redis needed
        subscription = hub.subscribe(OVERVIEW)
        with Session(engine) as session:  # what the route reads before the snapshot
            mark = service.changes_since(session=session, mark=None).mark
        with Session(engine) as session:  # the job changes before the poller's first read
            session.execute(
                update(Job)
                .where(col(Job.id) == job.id)
                .values(status="cancelling", updated_at=utcnow())
            )
            session.commit()
        hub.watch_overview(mark)
        try:
            return await asyncio.wait_for(subscription.queue.get(), timeout=10)
        finally:
            await hub.stop()

    message = asyncio.run(scenario())
    assert message["type"] == "status" and message["job"]["id"] == job.id
    assert message["job"]["status"] == "cancelling"


def test_a_job_that_ends_before_the_status_poller_first_reads_still_reports_its_end(  # type: ignore[no-untyped-def]
    api, engine, settings, runner, running_job
) -> None:
    # Defect (a CI run under load): the poller took its first read as where it started, so a
    # job that ended between a client's snapshot and that read never sent the client its
    # final status, and the client waited forever. The poller's reads are held back here
    # until the job has ended.
    job, run_dir = running_job()
    hub = api.app.state.live_hub
    read_state, gate = hub._read_state, threading.Event()

    def held_back(job_id: int):  # type: ignore[no-untyped-def]
        gate.wait(30)
        return read_state(job_id)

    hub._read_state = held_back
    try:
        with api.websocket_connect(f"/api/v1/ws/jobs/{job.id}") as ws:
            ws.send_json({"type": "hello", "token": _token(settings)})
            assert ws.receive_json()["job"]["status"] == "running"
            runner.finish(run_dir, 0)
            reconcile_job(engine, settings, job.id, {runner.kind: runner})
            gate.set()
            status = _receive_until(ws, lambda m: m["type"] == "status", limit=10)[-1]
            assert status["job"]["status"] == "succeeded"
    finally:
        gate.set()
        hub._read_state = read_state


# --- a long run: the first message is a thinned snapshot ------------------------------------

# What verl logs at each step (16 keys), and a validation score every 50 steps.
VERL_KEYS = [
    "actor/pg_loss",
    "actor/entropy",
    "actor/pg_clipfrac",
    "actor/ppo_kl",
    "actor/grad_norm",
    "actor/lr",
    "critic/score/mean",
    "critic/score/max",
    "critic/score/min",
    "critic/rewards/mean",
    "critic/advantages/mean",
    "response_length/mean",
    "response_length/clip_ratio",
    "timing_s/generate_sequences",
    "timing_s/update_actor",
    "perf/throughput",
]
VAL_KEY = "val-core/openai/gsm8k/reward/mean@1"
ONCE_KEY = "eval/before_train"


def verl_run(steps: range) -> bytes:
    """metrics.jsonl lines as a verl run writes them (values with a float's full digits)."""
    import json
    import random

    from tests.conftest import metrics_record

    rng = random.Random(steps.start)
    out = []
    for step in steps:
        values = {key: rng.random() * 10 for key in VERL_KEYS}
        if step % 50 == 0:
            values[VAL_KEY] = rng.random()
        if step == 2:  # a step that thinning leaves out
            values[ONCE_KEY] = rng.random()
        out.append(metrics_record(step, **values))
    assert json.loads(out[0])["values"]  # as the trainers write them
    return b"".join(out)


@contextlib.contextmanager
def serving(app):  # type: ignore[no-untyped-def]
    """The app on a real port (uvicorn, as `tp up` runs it), for a real WebSocket client."""
    import uvicorn

    from tests.conftest import free_port

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    try:
        yield f"ws://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _ingest_all(engine, settings, job_id: int, watch, steps: int) -> None:  # type: ignore[no-untyped-def]
    from sqlmodel import Session

    from training_platform.jobs.models import Job

    for _ in range(30):  # a live run is caught up ROUNDS_BUDGET_S at a time
        reconcile_job(engine, settings, job_id, watch)
        with Session(engine) as session:
            if (session.get(Job, job_id).progress_step or 0) >= steps:  # type: ignore[union-attr]
                return
    raise AssertionError("the run was not ingested")


def test_a_long_runs_first_message_is_a_thinned_snapshot_then_every_new_point(  # type: ignore[no-untyped-def]
    engine, settings, runner, running_job
) -> None:
    """2,000 steps of 18 keys (32,041 points): the job page's first message
    stays under 60 KB, keeps every key, the first and last step; live points follow, and a
    reconnect gets exactly the points after its last step."""
    import json

    from websockets.sync.client import connect

    from training_platform.api.app import create_app

    job, run_dir = running_job()
    watch = {runner.kind: runner}
    runner.write(run_dir, "metrics", verl_run(range(1, 2001)))
    line = 'step {:>4}: {{"actor/pg_loss": 0.0123, "critic/score/mean": 0.5}} "quoted"\n'
    runner.write(run_dir, "log", "".join(line.format(i) for i in range(3000)).encode())
    _ingest_all(engine, settings, job.id, watch, 2000)
    hello = json.dumps({"type": "hello", "token": _token(settings)})
    with serving(create_app(settings)) as base:
        url = f"{base}/api/v1/ws/jobs/{job.id}"
        with connect(url, open_timeout=30) as ws:
            ws.send(hello)
            first = ws.recv(timeout=60)
            snapshot = json.loads(first)
            size = len(first.encode())
            print(f"first message: {size} bytes")
            assert snapshot["type"] == "snapshot" and size < 60_000
            assert snapshot["thinned"] is True and snapshot["last_step"] == 2000
            series = snapshot["series"]
            # Every key is listed, even one whose only step was thinned out.
            assert set(series) == {*VERL_KEYS, VAL_KEY, ONCE_KEY} and series[ONCE_KEY] == []
            loss = [step for step, _ in series["actor/pg_loss"]]
            assert loss[0] == 1 and loss[-1] == 2000 and 50 <= len(loss) <= 200
            assert loss == sorted(set(loss))
            assert snapshot["log_tail"].startswith("step") and snapshot["log_tail"].endswith(
                '"quoted"\n'
            )
            # Live: every point of the new steps, each once.
            runner.write(run_dir, "metrics", verl_run(range(2001, 2004)))
            reconcile_job(engine, settings, job.id, watch)
            live: list[tuple[int, str]] = []
            while len(live) < 3 * len(VERL_KEYS):
                message = json.loads(ws.recv(timeout=60))
                if message["type"] == "metrics":
                    live += [(p["step"], p["key"]) for p in message["points"]]
            expected = [(s, k) for s in (2001, 2002, 2003) for k in VERL_KEYS]
            assert sorted(live) == sorted(expected)
        # A reconnect after its last step: exactly the points it missed, not thinned.
        runner.write(run_dir, "metrics", verl_run(range(2004, 2006)))
        reconcile_job(engine, settings, job.id, watch)
        with connect(f"{url}?last_step=2003", open_timeout=30) as ws:
            ws.send(hello)
            resumed = json.loads(ws.recv(timeout=60))
        assert resumed["thinned"] is False and resumed["last_step"] == 2005
        assert _pairs(resumed) == sorted((s, k) for s in (2004, 2005) for k in VERL_KEYS)


def test_earlier_log_lines_are_read_before_an_offset(  # type: ignore[no-untyped-def]
    api, engine, settings, runner, running_job
) -> None:
    job, run_dir = running_job()
    text = "".join(f"line {i}\n" for i in range(100))  # 'line 0\n' .. 'line 99\n'
    runner.write(run_dir, "log", text.encode())
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    logs = f"/api/v1/jobs/{job.id}/logs"
    end = len(text)
    last = api.get(logs, params={"before": end, "limit": 30}).json()
    # 30 bytes end at the log's end; the partial first line is left out: whole lines only
    assert last["text"] == "line 97\nline 98\nline 99\n"
    assert (last["offset"], last["next_offset"]) == (end - 24, end)
    above = api.get(logs, params={"before": last["offset"], "limit": 30}).json()
    assert above["text"] == "line 94\nline 95\nline 96\n" and above["next_offset"] == last["offset"]
    first = api.get(logs, params={"before": 14, "limit": 1000}).json()
    assert (first["offset"], first["text"]) == (0, "line 0\nline 1\n")
    assert api.get(logs, params={"before": 0}).json()["text"] == ""
    # Bad input names the field.
    for params, field in (
        ({"before": end + 1}, "before"),
        ({"before": -1}, "before"),
        ({"before": 10, "offset": 5}, "offset"),
        ({"before": 10, "limit": 0}, "limit"),
    ):
        refused = api.get(logs, params=params)
        assert refused.status_code == 422, params
        assert refused.json()["detail"][0]["loc"] == ["query", field], params
    assert api.get(logs, params={"before": 10, "attempt": 2}).status_code == 404
