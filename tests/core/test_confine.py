"""Runs execute as the run user and cannot read the platform's secrets (core/confine.py).

As root (CI), the platform creates the suite's throwaway run user (TP_RUN_AS, see conftest) and
every local run, cold or forked from a warm server, and every scorer file runs as it. A run
that tries to read the admin token, the secret key and the database is refused; it still
reads its dataset and writes in its run directory; it cannot replace the platform's files
there, and a symbolic link it leaves is never followed by the platform.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from training_platform.backends.base import LaunchPlan
from training_platform.bootstrap import bootstrap
from training_platform.core import confine
from training_platform.core.secrets import load_keys
from training_platform.runners.base import RunnerError
from training_platform.runners.launcher import PLAN_FILE
from training_platform.runners.local import LocalRunner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs change user only as root")

# What a run's code tries: the platform's secrets (refused), a dataset file (read), files of
# its own and the platform's in its run directory.
PROBE = """
import json, os, sys
home = sys.argv[1]
report = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
report["home"] = os.environ["HOME"]
for name in ("admin-token", "secret.key", "platform.db", "platform.db-wal", "logs/api.log"):
    try:
        with open(os.path.join(home, name), "rb") as secret:
            secret.read(1)
        report[name] = "read"
    except OSError as error:
        report[name] = type(error).__name__
with open(sys.argv[2], "rb") as dataset:
    report["dataset"] = len(dataset.read())
with open("mine.txt", "w") as mine:
    mine.write("written")
for name in ("plan.json", "launcher.log"):
    try:
        os.replace("mine.txt", name)
        report["replace " + name] = "done"
    except OSError as error:
        report["replace " + name] = type(error).__name__
os.symlink(os.path.join(home, "admin-token"), "metrics.jsonl")
os.symlink(os.path.join(home, "admin-token"), "stop-request")
print(json.dumps(report), flush=True)
"""


@pytest.fixture
def home(sqlite_settings, template_home: Path):  # type: ignore[no-untyped-def]
    """A bootstrapped TP_HOME with a secret key, a log and a dataset file, and its account."""
    settings = sqlite_settings
    bootstrap(settings).dispose()
    load_keys(settings)
    confine.private_dir(settings.logs_dir)  # as `tp up` makes it
    (settings.logs_dir / "api.log").write_text("GET /api/v1/jobs\n")
    dataset = settings.datasets_dir / "probe" / "train.jsonl"
    dataset.parent.mkdir(parents=True, exist_ok=True)
    dataset.write_text('{"prompt": "1+1", "response": "2"}\n')
    account = confine.prepare(settings)
    assert account is not None and account.name == os.environ["TP_RUN_AS"]
    return settings, account, dataset


def _plan(settings, dataset: Path) -> LaunchPlan:  # type: ignore[no-untyped-def]
    return LaunchPlan(
        backend="test",
        algorithm="script",
        argv=(sys.executable, "-c", PROBE, str(settings.home), str(dataset)),
        env={},
        files={},
    )


def _report(run_dir: Path) -> dict:  # type: ignore[type-arg]
    lines = (run_dir / "output.log").read_text().splitlines()
    return json.loads(next(line for line in lines if line.startswith("{")))


def _check(report: dict, account: confine.Account) -> None:  # type: ignore[type-arg]
    assert (report["uid"], report["gid"], report["groups"]) == (account.uid, account.gid, [])
    assert report["home"] == str(account.home)
    for secret in ("admin-token", "secret.key", "platform.db", "logs/api.log"):
        assert report[secret] == "PermissionError", (secret, report)
    assert report["platform.db-wal"] in ("PermissionError", "FileNotFoundError"), report
    assert report["dataset"] > 0
    assert report["replace plan.json"] == report["replace launcher.log"] == "PermissionError"


def test_a_run_cannot_read_the_platforms_secrets_yet_does_its_work(home) -> None:  # type: ignore[no-untyped-def]
    settings, account, dataset = home
    runner = LocalRunner(node="test", run_as=account)
    run_dir = settings.runs_dir / "1" / "attempt-1"
    handle = runner.submit(_plan(settings, dataset), str(run_dir))
    deadline = time.monotonic() + 60
    while runner.poll(handle).status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.poll(handle).exit_code == 0, (run_dir / "output.log").read_text()
    _check(_report(run_dir), account)
    assert (run_dir / "mine.txt").stat().st_uid == account.uid
    assert json.loads((run_dir / PLAN_FILE).read_text())["backend"] == "test"
    # What the run left in place of files the platform reads or writes is not followed.
    with pytest.raises(RunnerError, match="symbolic link"):
        runner.read(handle, "metrics", 0, 1 << 16)
    runner.request_stop(handle)
    token = settings.admin_token_file.read_text()
    assert (
        run_dir / "stop-request"
    ).is_symlink() and settings.admin_token_file.read_text() == token


def test_a_trainer_forked_from_a_warm_server_runs_as_the_run_user(home) -> None:  # type: ignore[no-untyped-def]
    """The warm path forks the trainer from a root process: the fork drops to the run user."""
    settings, account, dataset = home
    run_dir = settings.runs_dir / "2" / "attempt-1"
    module = run_dir / "probe_module.py"
    plan = LaunchPlan(
        backend="test",
        algorithm="script",
        argv=(sys.executable, "-m", "probe_module", str(settings.home), str(dataset)),
        env={},
        files={"probe_module.py": PROBE},
    )
    from training_platform.runners import launcher
    from training_platform.runners.base import write_run_dir

    write_run_dir(plan, run_dir, PLAN_FILE)  # as LocalRunner.submit lays it out
    launcher.open_log(run_dir / "launcher.log").close()
    confine.hand_over(run_dir, account, [])
    assert module.is_file()
    forked = textwrap.dedent(
        f"""
        from pathlib import Path
        from training_platform.runners import launcher, warm
        raise SystemExit(launcher.run(Path({str(run_dir)!r}), start=warm._fork_trainer,
                                      run_as={account.spec!r}))
        """
    )
    done = subprocess.run(  # the launcher leads its own group, as a warm server's does
        [sys.executable, "-c", forked],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        start_new_session=True,
        env={**os.environ, **account.environment()},  # as LocalRunner starts a warm server
    )
    assert done.returncode == 0, (done.stderr, (run_dir / "output.log").read_text())
    _check(_report(run_dir), account)


def test_a_scorer_file_runs_as_the_run_user(home) -> None:  # type: ignore[no-untyped-def]
    from training_platform.evaluation.deferred import Item, run_file

    settings, account, _ = home
    scorer = settings.home / "rewards" / "peek.py"
    scorer.parent.mkdir(exist_ok=True)
    scorer.write_text(
        textwrap.dedent(
            f"""
            def compute_score(data_source, solution_str, ground_truth, extra_info=None):
                try:
                    open({str(settings.admin_token_file)!r}).read()
                except PermissionError:
                    return 0.0
                return 1.0
            """
        )
    )
    item = Item(prompt="p", reference="r", output="o", labels={})
    assert run_file(scorer, [item], run_as=account) == [0.0]
