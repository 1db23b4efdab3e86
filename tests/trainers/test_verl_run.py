"""The verl wrapper (trainers/verl_run.py) around a stand-in for verl: records, signals, exit codes.

The stand-in writes what verl 0.9.1 writes: `{"step", "data"}` lines to $VERL_FILE_LOGGER_PATH
and `global_step_N` directories finished by `latest_checkpointed_iteration.txt`. A stand-in for
`verl.model_merger` writes what the real one writes into `--target_dir` (a LoRA run's adapter in
`lora_adapter/`); the real pair runs in test_verl_cpu_sft.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from training_platform.backends.base import LaunchContext
from training_platform.backends.verl.merge import final_model_config
from training_platform.trainers.verl_run import (
    EXIT_BAD_CONFIG,
    EXIT_EXPORT_FAILED,
    CheckpointWatch,
    VerlLogTail,
    count_steps,
    last_checkpoint,
    load_config,
)

FAKE_VERL = r"""
import json, os, pathlib, signal, subprocess, sys, time
mode = sys.argv[1]
log = open(os.environ["VERL_FILE_LOGGER_PATH"], "wb", buffering=0)
pathlib.Path("env.json").write_text(json.dumps({"PLATFORM_TEST": os.environ.get("PLATFORM_TEST")}))
def line(step, data):
    log.write(json.dumps({"step": step, "data": data}).encode() + b"\n")
def checkpoint(step):
    d = pathlib.Path("checkpoints") / f"global_step_{step}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model_world_size_1_rank_0.pt").write_bytes(b"x" * 100)
    if os.environ.get("FAKE_HF"):
        (d / "huggingface").mkdir()
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            (d / "huggingface" / name).write_text(json.dumps({"name": name, "step": step}))
    (d.parent / "latest_checkpointed_iteration.txt").write_text(str(step))
if mode == "quick":
    line(1, {"train/loss": 1.0})
    checkpoint(2)
    line(2, {"train/loss": 0.5})
    checkpoint(4)
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
if mode == "raystart":  # the first time, Ray's node does not register in its 30 s
    if not os.path.exists("ray-tried"):
        pathlib.Path("ray-tried").write_text("")
        if sys.argv[2] == "after-a-step":
            line(1, {"train/loss": 1.0})
            time.sleep(1.2)  # the wrapper reads verl's metrics every 0.5 s
        print("Exception: The current node timed out during startup. This could happen "
              "because some of the raylet failed to startup or the GCS has become overloaded.",
              file=sys.stderr, flush=True)
        sys.exit(1)
    line(1, {"train/loss": 1.0})
    sys.exit(0)
if mode == "nockpt":
    line(1, {"train/loss": 1.0})
    sys.exit(0)
if mode == "wait":
    def stop(signum, frame):
        pathlib.Path("stopped").write_text(str(signum))
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    line(1, {"train/loss": 1.0})
    pathlib.Path("ready").write_text("")
    time.sleep(60)
if mode == "die":
    pathlib.Path("ready").write_text("")
    time.sleep(60)
if mode == "leave":  # a crash that leaves what Ray and vLLM leave: a worker and shared memory
    own = os.open(f"/dev/shm/{sys.argv[2]}-own", os.O_CREAT | os.O_RDWR)
    os.write(own, b"x" * 4096)
    worker = "import sys, time; f = open(sys.argv[1], 'wb'); f.write(b'y' * 4096); f.flush(); "
    worker += "open('worker-ready', 'w').close(); time.sleep(600)"
    subprocess.Popen(
        [sys.executable, "-c", worker, f"/dev/shm/{sys.argv[2]}-worker"], start_new_session=True
    )
    while not os.path.exists("worker-ready"):
        time.sleep(0.05)
    time.sleep(3)  # long enough for the wrapper to look (every 2 s)
    os._exit(1)
line(0, {"val-core/reward": 0.5})
log.write(b'{"step": 1, "data": {"actor/pg_loss": -0.1, ')  # a line still being written
time.sleep(1.2)
log.write(b'"critic/score/mean": 0.25, "note": "text", "flag": true, "bad": NaN}}\n')
line(2, {"actor/pg_loss": -0.2, "perf/throughput": 1234.5, "timing_s/step": 3})
checkpoint(2)
pathlib.Path("checkpoints/global_step_4").mkdir()  # started, not finished
time.sleep(1.2)
line(3, {"actor/pg_loss": -0.3})
(pathlib.Path("checkpoints/global_step_4") / "model.pt").write_bytes(b"y" * 10)
(pathlib.Path("checkpoints") / "latest_checkpointed_iteration.txt").write_text("4")
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""


FAKE_MERGER = r"""
import json, os, pathlib, signal, sys, time
args = sys.argv[1:]
shards = pathlib.Path(args[args.index("--local_dir") + 1])
target = pathlib.Path(args[args.index("--target_dir") + 1])
mode = os.environ["FAKE_MERGER"]
pathlib.Path("merger.json").write_text(json.dumps({"argv": args, "cwd": os.getcwd()}))
if mode == "fail":
    print("merger: cannot read the shards", file=sys.stderr)
    sys.exit(1)
if mode == "wait":
    pathlib.Path("ready").write_text("")
    time.sleep(60)
if mode == "nothing":
    sys.exit(0)
assert (shards / "model_world_size_1_rank_0.pt").is_file()
target.mkdir(parents=True, exist_ok=True)
(target / "config.json").write_text((shards / "huggingface" / "config.json").read_text())
(target / "model.safetensors").write_bytes(b"w" * 1000)
if mode in ("ok", "lora"):
    (target / "tokenizer_config.json").write_text("{}")
    (target / "tokenizer.json").write_text("{}")
if mode == "lora":
    adapter = target / "lora_adapter"
    adapter.mkdir()
    config = {"base_model_name_or_path": None, "r": 8, "peft_type": "LORA"}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes(b"a" * 50)
"""


def write_config(run_dir: Path, mode: str, *extra: str, **fields: Any) -> Path:
    """A verl_run.json whose command runs the stand-in."""
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "fake_verl.py"
    script.write_text(FAKE_VERL)
    config = {
        "command": [sys.executable, str(script), mode, *extra],
        "env": {"PLATFORM_TEST": "yes"},
        "run_dir": str(run_dir),
        "verl_metrics": "verl_metrics.jsonl",
        "checkpoint_dir": "checkpoints",
        "max_steps": 4,
        "steps_from": None,
        **fields,
    }
    path = run_dir / "verl_run.json"
    path.write_text(json.dumps(config))
    return path


def final_model(run_dir: Path, algorithm: str = "sft", merger: str = "ok") -> dict[str, Any]:
    """The backend's `final_model` entry, with the merger's module swapped for the stand-in."""
    script = run_dir / "fake_merger.py"
    script.write_text(FAKE_MERGER)
    context = LaunchContext(
        run_dir=str(run_dir),
        python=sys.executable,
        model_path="/models/base",
        dataset_path="/data/x.parquet",
        dataset_format="sft",
    )
    entry = final_model_config(context, algorithm)
    assert entry["argv"][1:3] == ["-m", "verl.model_merger"]
    entry["argv"] = [entry["argv"][0], str(script), *entry["argv"][3:]]
    entry["env"] = {**entry["env"], "FAKE_MERGER": merger}
    return entry


def with_merger(run_dir: Path, mode: str, merger: str, *extra: str, algorithm: str = "sft") -> Path:
    """A config whose verl stand-in writes huggingface/ files and whose merger runs in `merger`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return write_config(
        run_dir,
        mode,
        *extra,
        env={"PLATFORM_TEST": "yes", "FAKE_HF": "1"},
        final_model=final_model(run_dir, algorithm, merger),
    )


def start_wrapper(config: Path) -> subprocess.Popen[bytes]:
    """The wrapper as a launch plan starts it: in the run dir, its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "training_platform.trainers.verl_run", "--config", config.name],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def records(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics.jsonl records, strictly parsed."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON {c}")) for line in lines
    ]


def wait_for(path: Path, timeout: float = 20) -> None:
    """Until `path` exists."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("code", [0, 3])
def test_verl_output_becomes_platform_records_and_its_exit_code_is_kept(
    tmp_path: Path, code: int
) -> None:
    run_dir = tmp_path / "run"
    wrapper = start_wrapper(write_config(run_dir, "train", str(code)))
    output = wrapper.communicate(timeout=60)[0].decode()
    assert wrapper.returncode == code, output

    found = records(run_dir)
    kinds = [r["type"] for r in found]
    assert kinds[0] == "started" and found[0]["max_steps"] == 4
    metrics = [r for r in found if r["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    # verl's own keys, numbers only; NaN kept as null, text and booleans left out.
    assert metrics[1]["values"] == {"actor/pg_loss": -0.1, "critic/score/mean": 0.25, "bad": None}
    assert metrics[2]["values"] == {
        "actor/pg_loss": -0.2,
        "perf/throughput": 1234.5,
        "timing_s/step": 3,
    }
    checkpoints = [r for r in found if r["type"] == "checkpoint"]
    assert [(c["step"], c["path"]) for c in checkpoints] == [
        (2, "checkpoints/global_step_2"),
        (4, "checkpoints/global_step_4"),
    ]
    assert checkpoints[0]["size_bytes"] == 100 and checkpoints[1]["size_bytes"] == 10
    # Step 4 was recorded only once verl's tracker named it, after the step-3 metrics.
    assert kinds.index("checkpoint", kinds.index("checkpoint") + 1) > kinds.index("metrics") + 3
    summaries = [r for r in found if r["type"] == "summary"]
    if code == 0:
        assert kinds[-1] == "summary" and summaries[0]["step"] == 3
        assert summaries[0]["values"]["train_runtime"] > 0
    else:
        assert summaries == []
    assert json.loads((run_dir / "env.json").read_text()) == {"PLATFORM_TEST": "yes"}
    assert (run_dir / "heartbeat").exists()
    assert "checkpoint saved: checkpoints/global_step_4" in output


@pytest.mark.parametrize("first", ["before-any-step", "after-a-step"])
def test_verl_starts_once_more_only_when_rays_node_did_not_register_before_any_step(
    tmp_path: Path, first: str
) -> None:
    run_dir = tmp_path / "run"
    config = write_config(run_dir, "raystart", first)
    log = run_dir / "output.log"  # the job log, as the launcher gives it
    with log.open("wb") as out:
        wrapper = subprocess.run(
            [sys.executable, "-m", "training_platform.trainers.verl_run", "--config", config.name],
            cwd=run_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    text = log.read_text()
    steps = [r["step"] for r in records(run_dir) if r["type"] == "metrics"]
    if first == "before-any-step":
        assert wrapper.returncode == 0, text
        assert "did not register in Ray's fixed 30 s" in text and steps == [1]
    else:  # verl had trained: its failure is the run's
        assert wrapper.returncode == 1, text
        assert "once more" not in text and steps == [1]


def test_sigterm_is_forwarded_to_verl(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    wrapper = start_wrapper(write_config(run_dir, "wait"))
    wait_for(run_dir / "ready")
    wrapper.send_signal(signal.SIGTERM)
    wrapper.communicate(timeout=30)
    assert (run_dir / "stopped").read_text() == str(int(signal.SIGTERM))
    assert wrapper.returncode == 143
    assert [r["type"] for r in records(run_dir)] == ["started", "metrics"]


def test_a_verl_killed_by_a_signal_kills_the_wrapper_the_same_way(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    wrapper = start_wrapper(write_config(run_dir, "die"))
    wait_for(run_dir / "ready")
    child = next(
        p
        for p in _children(wrapper.pid)
        if "fake_verl.py" in Path(f"/proc/{p}/cmdline").read_text()
    )
    os.kill(child, signal.SIGKILL)
    wrapper.communicate(timeout=30)
    assert wrapper.returncode == -signal.SIGKILL


def test_what_a_crashed_verl_leaves_behind_is_killed_and_removed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    name = f"tp-test-{os.getpid()}-{time.monotonic_ns()}"
    unrelated = Path(f"/dev/shm/{name}-unrelated")  # another run's: never touched
    unrelated.write_bytes(b"z")
    try:
        code, output = run_wrapper(write_config(run_dir, "leave", name))
        assert code == 1
        assert not Path(f"/dev/shm/{name}-own").exists()
        assert not Path(f"/dev/shm/{name}-worker").exists()
        assert unrelated.exists()
        assert not [
            p for p in Path("/proc").iterdir() if p.name.isdigit() and name in _cmdline(p)
        ], "the worker in a session of its own survived the run"
        assert "1 leftover process(es) killed, 2 shared memory file(s) removed" in output
    finally:
        for path in Path("/dev/shm").glob(f"{name}-*"):
            path.unlink()


def _cmdline(process: Path) -> str:
    try:
        return (process / "cmdline").read_text()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_an_unusable_config_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "run", "train", command=[])
    wrapper = start_wrapper(config)
    output = wrapper.communicate(timeout=30)[0].decode()
    assert wrapper.returncode == EXIT_BAD_CONFIG
    assert "command must be a non-empty list" in output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_command_that_cannot_start_exits_127(tmp_path: Path) -> None:
    config = write_config(tmp_path / "run", "train", command=[str(tmp_path / "no-such-program")])
    wrapper = start_wrapper(config)
    wrapper.communicate(timeout=30)
    assert wrapper.returncode == 127


def test_steps_are_counted_from_the_dataset_rows_as_verl_counts_them(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    dataset = tmp_path / "data.parquet"
    pq.write_table(pa.table({"messages": [[]] * 103}), dataset)
    steps_from = {"dataset": str(dataset), "batch_size": 8, "data_parallel": 2, "epochs": 3}
    # 51 rows per rank, 4 per rank per batch: 12 full batches per epoch.
    assert count_steps(steps_from) == 36
    assert count_steps({**steps_from, "data_parallel": 1}) == 12 * 3
    assert count_steps({**steps_from, "dataset": str(tmp_path / "missing.parquet")}) is None
    assert count_steps({**steps_from, "batch_size": 1}) is None
    assert count_steps(None) is None


def test_the_log_tail_reads_whole_lines_and_survives_a_reopened_file(tmp_path: Path) -> None:
    path = tmp_path / "verl.jsonl"
    tail = VerlLogTail(path)
    assert tail.read() == []
    path.write_bytes(b'{"step": 1, "data": {"a": 1}}\n{"step": 2, "da')
    assert tail.read() == [(1, {"a": 1})]
    with path.open("ab") as stream:
        stream.write(b'ta": {"a": 2}}\nnot json\n')
    assert tail.read() == [(2, {"a": 2})]
    path.write_bytes(b'{"step": 1, "data": {"a": 3}}\n')  # verl opens its log with "wb"
    assert tail.read() == [(1, {"a": 3})]


def test_checkpoints_count_once_verl_has_finished_them(tmp_path: Path) -> None:
    watch = CheckpointWatch(tmp_path)
    assert watch.finished() == []
    (tmp_path / "global_step_5").mkdir()
    assert watch.finished() == []
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("5")
    (tmp_path / "global_step_10").mkdir()
    assert watch.finished() == [(5, tmp_path / "global_step_5")]
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("10")
    assert watch.finished() == [(10, tmp_path / "global_step_10")]
    assert watch.finished() == []


# --- the final model -----------------------------------------------------------------------


def run_wrapper(config: Path) -> tuple[int, str]:
    """Run the wrapper to its end: (exit code, output)."""
    wrapper = start_wrapper(config)
    output = wrapper.communicate(timeout=60)[0].decode()
    return wrapper.returncode, output


def test_the_last_checkpoint_becomes_the_final_model_before_the_summary(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = with_merger(run_dir, "quick", "no-tokenizer")
    (run_dir / "model").mkdir()
    (run_dir / "model" / "stale.bin").write_bytes(b"old")  # an earlier attempt's
    code, output = run_wrapper(config)
    assert code == 0, output

    merger = json.loads((run_dir / "merger.json").read_text())
    step_dir = run_dir / "checkpoints" / "global_step_4"
    assert merger["argv"] == [
        "merge",
        "--backend",
        "fsdp",
        "--local_dir",
        str(step_dir),
        "--target_dir",
        str(run_dir / "model"),
    ]
    model = run_dir / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    # The merger wrote no tokenizer: the checkpoint's files were copied.
    assert json.loads((model / "tokenizer.json").read_text()) == {
        "name": "tokenizer.json",
        "step": 4,
    }
    assert "copied the tokenizer files the merger left out" in output

    found = records(run_dir)
    assert [r["type"] for r in found[-2:]] == ["checkpoint", "summary"]
    final = found[-2]
    size = sum(f.stat().st_size for f in model.iterdir())
    assert final == {
        **final,
        "step": 4,
        "path": "model",
        "final": True,
        "adapter": False,
        "size_bytes": size,
    }
    assert [r["path"] for r in found if r["type"] == "checkpoint" and not r["final"]] == [
        "checkpoints/global_step_2",
        "checkpoints/global_step_4",
    ]
    assert "saved final model to model" in output


def test_a_lora_run_keeps_the_adapter_as_its_final_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, output = run_wrapper(with_merger(run_dir, "quick", "lora"))
    assert code == 0, output
    model = run_dir / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    adapter_config = json.loads((model / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "/models/base"
    final = records(run_dir)[-2]
    assert (final["path"], final["final"], final["adapter"]) == ("model", True, True)
    assert not (run_dir / "model.adapter").exists()


@pytest.mark.parametrize(
    ("merger", "algorithm", "why"),
    [
        ("fail", "sft", "the merger exited with 1"),
        ("nothing", "sft", "the merger wrote no config.json"),
        ("ok", "grpo", "no FSDP shards at"),  # RL shards live in actor/, which is missing
    ],
)
def test_a_failed_conversion_fails_the_run(
    tmp_path: Path, merger: str, algorithm: str, why: str
) -> None:
    run_dir = tmp_path / "run"
    code, output = run_wrapper(with_merger(run_dir, "quick", merger, algorithm=algorithm))
    assert code == EXIT_EXPORT_FAILED, output
    assert "final model conversion FAILED" in output and why in output
    found = records(run_dir)
    assert not any(r["type"] == "summary" or r.get("final") for r in found)
    # The shards stay for a retry or a manual merge.
    assert (run_dir / "checkpoints" / "global_step_4").is_dir()


def test_a_failed_verl_is_not_converted(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, _ = run_wrapper(with_merger(run_dir, "quick", "ok", "5"))
    assert code == 5
    assert not (run_dir / "merger.json").exists() and not (run_dir / "model").exists()


def test_a_run_without_checkpoints_succeeds_without_a_final_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, output = run_wrapper(with_merger(run_dir, "nockpt", "ok"))
    assert code == 0, output
    assert "no final model: verl saved no complete checkpoint" in output
    assert [r["type"] for r in records(run_dir)] == ["started", "metrics", "summary"]
    assert not (run_dir / "merger.json").exists()


def test_sigterm_during_the_conversion_stops_the_merger(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    wrapper = start_wrapper(with_merger(run_dir, "quick", "wait"))
    wait_for(run_dir / "ready")
    wrapper.send_signal(signal.SIGTERM)
    wrapper.communicate(timeout=30)
    assert wrapper.returncode == -signal.SIGTERM
    assert not any(r["type"] == "summary" or r.get("final") for r in records(run_dir))


def test_the_final_model_entry_is_checked(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    entry = final_model(run_dir.parent)
    config = load_config(write_config(run_dir, "quick", final_model=entry))
    assert config.final_model is not None
    assert config.final_model.target == run_dir.resolve() / "model"
    assert load_config(write_config(run_dir, "quick", final_model=None)).final_model is None
    for bad in (
        {"target_dir": "../elsewhere"},
        {"target_dir": "/abs"},
        {"argv": [sys.executable, "-m", "verl.model_merger"]},
        {"shards": "checkpoints"},
        {"placeholder": ""},
    ):
        with pytest.raises(ValueError, match="final_model"):
            load_config(write_config(run_dir, "quick", final_model={**entry, **bad}))
    code, output = run_wrapper(write_config(run_dir, "quick", final_model=[]))
    assert code == EXIT_BAD_CONFIG and "final_model must be" in output


def test_the_last_checkpoint_is_the_newest_one_verl_finished(tmp_path: Path) -> None:
    assert last_checkpoint(tmp_path) is None
    for step in (5, 10, 15):
        (tmp_path / f"global_step_{step}").mkdir()
    assert last_checkpoint(tmp_path) is None  # no tracker: nothing is finished
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("10")
    assert last_checkpoint(tmp_path) == (10, tmp_path / "global_step_10")
