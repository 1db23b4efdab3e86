"""Trainer start, warm against cold: how long a local TRL run takes to get through its imports.

Each run is the real `python -m training_platform.trainers.trl_train` started by the local
runner, with a config whose model directory is empty: it imports what a TRL SFT run
imports and then fails loading the tokenizer, so the time from submit to exit.json is the
start a real run pays before it loads its model. Cold (the baseline): the launcher starts the
program, as with TP_WARM_STARTS=false. Warm: a warm server (runners/warm.py) forks it. The two
are interleaved; the server's own start is paid once, before, and not counted.

    python benchmarks/warm_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from training_platform.backends.base import LaunchPlan
from training_platform.runners import warm
from training_platform.runners.launcher import EXIT_FILE, child_environment
from training_platform.runners.local import LocalRunner

TRAINER = "training_platform.trainers.trl_train"
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def plan(root: Path) -> LaunchPlan:
    config = {
        "algorithm": "sft",
        "dataset_format": "sft",
        "dataset_path": str(root / "data.jsonl"),
        "hyperparameters": {"max_steps": 1},
        "metrics_path": str(root / "metrics.jsonl"),
        "model_path": str(root / "empty-model"),
        "output_dir": str(root / "out"),
    }
    return LaunchPlan(
        backend="trl",
        algorithm="sft",
        argv=(sys.executable, "-m", TRAINER, "--config", "c.json"),
        env=ENV,
        files={"c.json": json.dumps(config)},
    )


def one(runner: LocalRunner, run_dir: Path, root: Path) -> tuple[float, bool]:
    """Seconds from submit to exit.json, and whether the run forked warm."""
    started = time.perf_counter()
    handle = runner.submit(plan(root), str(run_dir))
    while not (run_dir / EXIT_FILE).exists():
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    while runner.poll(handle).status == "running":
        time.sleep(0.005)
    return elapsed, "forked warm" in (run_dir / "output.log").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tp-bench-warm-"))
    (root / "data.jsonl").write_text("")
    (root / "empty-model").mkdir()
    warm_dir = root / "warm"
    cold_runner = LocalRunner(node="bench")
    warm_runner = LocalRunner(node="bench", warm_dir=warm_dir)
    name = warm.key(sys.executable, TRAINER, child_environment(ENV))
    try:
        # Start the server and wait until it listens (its imports are paid once, counted apart).
        one(warm_runner, root / "prime", root)
        deadline = time.monotonic() + 180
        while not (warm_dir / f"{name}.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        cold: list[float] = []
        hot: list[float] = []
        forked = 0
        for index in range(args.runs):  # interleaved, so that both see the same machine
            seconds, _ = one(cold_runner, root / f"cold-{index}", root)
            cold.append(seconds)
            seconds, was_warm = one(warm_runner, root / f"warm-{index}", root)
            hot.append(seconds)
            forked += was_warm
        server_log = (warm_dir / f"{name}.log").read_text().strip()
    finally:
        warm.stop_all(warm_dir)
        shutil.rmtree(root, ignore_errors=True)
    cold_p50, warm_p50 = statistics.median(cold), statistics.median(hot)
    print(f"{'start -> exit.json, p50':<32} {'warm':>8} {'cold':>8} {'ratio':>6}")
    ratio = warm_p50 / cold_p50
    print(f"{'trl_train to its model load':<32} {warm_p50:>7.2f}s {cold_p50:>7.2f}s {ratio:>6.2f}")
    print(f"warm runs that forked warm: {forked} of {args.runs}; server: {server_log}")
    result = {
        "warm_p50_s": round(warm_p50, 3),
        "cold_p50_s": round(cold_p50, 3),
        "ratio": round(warm_p50 / cold_p50, 3),
        "forked_warm": forked,
        "runs": args.runs,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
