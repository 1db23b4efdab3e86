"""Alert rules on ingested metrics: NaN, thresholds, once per attempt, and their actions."""

from __future__ import annotations

from sqlmodel import Session

from training_platform.jobs.models import Job
from training_platform.jobs.supervisor import reconcile_job
from training_platform.monitoring import alerts


def _alerts(engine, job_id: int) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    with Session(engine) as session:
        return [alerts.public(a) for a in alerts.list_alerts(session=session, job_id=job_id)]


def _status(engine, job_id: int) -> str:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


def test_a_nan_loss_raises_one_alert_and_the_stop_rule_stops_the_job(
    engine, settings, runner, running_job, metrics_line
) -> None:  # type: ignore[no-untyped-def]
    job, run_dir = running_job(alerts=[{"rule": "nan", "key": "loss", "action": "stop"}])
    runner.write(run_dir, "metrics", metrics_line(1, loss=2.5) + metrics_line(2, loss=float("nan")))
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    [raised] = _alerts(engine, job.id)
    assert raised["rule"] == "nan" and raised["key"] == "loss" and raised["step"] == 2
    assert raised["severity"] == "critical" and raised["value"] is None
    assert raised["action"] == "stop" and raised["action_result"] == "stop requested"
    assert _status(engine, job.id) == "cancelling"
    # The supervisor carries the stop out: the process group is signalled, the job ends.
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    assert runner.runs[run_dir].signals
    runner.finish(run_dir, -15)
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    assert _status(engine, job.id) == "cancelled"
    # More NaN in the same attempt raises nothing new.
    runner.write(run_dir, "metrics", metrics_line(3, loss=float("inf")))
    assert len(_alerts(engine, job.id)) == 1


def test_without_rules_a_nan_loss_is_only_notified(
    engine, settings, runner, running_job, metrics_line
) -> None:  # type: ignore[no-untyped-def]
    job, run_dir = running_job()
    runner.write(run_dir, "metrics", metrics_line(1, **{"train/loss": float("nan"), "lr": 0.1}))
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    [raised] = _alerts(engine, job.id)
    assert raised["key"] == "train/loss" and raised["action_result"] == "notified"
    assert _status(engine, job.id) == "running"
    with Session(engine) as session:
        acknowledged = alerts.acknowledge(session=session, alert_id=raised["id"], actor="me")
        assert acknowledged.acknowledged_by == "me"


def test_thresholds_watch_kl_and_reward_and_pause_acts(
    engine, settings, runner, running_job, metrics_line
) -> None:  # type: ignore[no-untyped-def]
    job, run_dir = running_job(
        alerts=[
            {"rule": "above", "key": "*kl*", "threshold": 0.5},
            {"rule": "below", "key": "reward", "threshold": 0.1, "action": "pause"},
        ]
    )
    runner.write(run_dir, "metrics", metrics_line(1, kl=0.1, reward=0.5))
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    assert _alerts(engine, job.id) == []
    runner.write(run_dir, "metrics", metrics_line(2, kl=0.9, reward=0.05))
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    raised = {a["rule"]: a for a in _alerts(engine, job.id)}
    assert raised["above"]["message"] == "kl = 0.9 at step 2, above 0.5"
    assert raised["above"]["action_result"] == "notified"
    assert raised["below"]["action_result"] == "pause requested"
    assert _status(engine, job.id) == "pausing"


def test_rules_are_checked_on_submit(api) -> None:  # type: ignore[no-untyped-def]
    body = {
        "name": "bad rule",
        "algorithm": "sft",
        "model": "tiny-qwen2",
        "dataset": "tiny-sft",
        "alerts": [{"rule": "above", "key": "kl"}],
    }
    refused = api.post("/api/v1/jobs", json=body)
    assert refused.status_code == 422
    assert "needs a threshold" in refused.text


def test_a_stalled_job_raises_a_stalled_alert_saying_what_its_policy_did(
    engine, settings, runner, running_job
) -> None:  # type: ignore[no-untyped-def]
    import time

    job, _ = running_job(policy={"stall_timeout_s": 0.2, "on_stall": "keep"})
    time.sleep(0.5)
    reconcile_job(engine, settings, job.id, {runner.kind: runner})
    assert _status(engine, job.id) == "stalled"
    [raised] = _alerts(engine, job.id)
    assert raised["rule"] == "stalled" and raised["action_result"] == "left running"
    assert raised["message"].startswith("no log or metrics output for")
