"""A platform merge against mergekit alone: wall time and peak memory on the same config.

Two Qwen2 models of about 100M parameters (float32, random weights, built here) are merged
with TIES (base + two models, three inputs) and with SLERP (two models). The platform's figure
is its merge program, `python -m training_platform.trainers.merge`, as a merge job's plan
starts it (progress records, model card, mergekit's lazy loading). The baseline is mergekit's
own CLI, `mergekit-yaml CONFIG OUT --lazy-unpickle --copy-tokenizer --random-seed 0`, on the
configuration the program wrote. Each run is a fresh process; peak memory is its maximum
resident set (wait4's ru_maxrss). The two alternate, `--runs` times each.

    python benchmarks/merge.py [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from training_platform.assets.tiny import build_tiny_model

# About 100M parameters: 12 layers of width 768 over the tiny tokenizer's vocabulary (the
# embeddings are small; the layers hold the weight).
CONFIG = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "head_dim": 64,
}


def _anonymous_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def measure(argv: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, peak anonymous RSS bytes) of one process. Anonymous:
    without the pages of the weight files it maps, which the kernel can drop and reread."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    anonymous = 0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        anonymous = max(anonymous, _anonymous_kib(process.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        error = process.stderr.read().decode()[-2000:] if process.stderr else ""
        raise SystemExit(f"{argv[:3]} failed ({process.returncode}):\n{error}")
    return wall, usage.ru_maxrss * 1024, anonymous * 1024


def weights_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="merge-bench-"))
    try:
        models = [build_tiny_model(root / f"m{i}", seed=i, overrides=CONFIG) for i in range(3)]
        size = weights_bytes(models[0])
        # What the merge program's imports alone hold (torch, transformers, mergekit, PEFT).
        _, runtime, runtime_anon = measure(
            [
                sys.executable,
                "-c",
                "import torch, transformers, peft, mergekit.merge, time; time.sleep(0.5)",
            ]
        )
        print(f"model: {size / 1e6:.0f} MB of float32 weights ({size // 4 / 1e6:.0f}M parameters)")
        cases = {
            "ties (3 inputs)": {
                "merge_method": "ties",
                "base_model": str(models[0]),
                "models": [
                    {"model": str(models[1]), "parameters": {"weight": 0.5, "density": 0.5}},
                    {"model": str(models[2]), "parameters": {"weight": 0.5, "density": 0.5}},
                ],
                "dtype": "float32",
            },
            "slerp (2 inputs)": {
                "merge_method": "slerp",
                "base_model": str(models[0]),
                "models": [{"model": str(models[0])}, {"model": str(models[1])}],
                "parameters": {"t": 0.5},
                "dtype": "float32",
            },
        }
        for name, spec in cases.items():
            run = root / name.split()[0]
            run.mkdir()
            config = {
                "mergekit": spec,
                "output_dir": str(run),
                "model_dir": "model",
                "metrics_path": str(run / "metrics.jsonl"),
                "seed": 0,
                "card": {"name": name},
            }
            (run / "merge_config.json").write_text(json.dumps(config))
            platform = [
                sys.executable,
                "-m",
                "training_platform.trainers.merge",
                "--config",
                str(run / "merge_config.json"),
            ]
            ours: list[tuple[float, int, int]] = []
            bare: list[tuple[float, int, int]] = []
            for _ in range(args.runs):
                shutil.rmtree(run / "model", ignore_errors=True)
                (run / "metrics.jsonl").unlink(missing_ok=True)
                ours.append(measure(platform))
                shutil.rmtree(run / "bare", ignore_errors=True)
                yaml_cli = str(Path(sys.executable).with_name("mergekit-yaml"))
                bare.append(
                    measure(
                        [
                            yaml_cli,
                            str(run / "merge.yml"),
                            str(run / "bare"),
                            "--lazy-unpickle",
                            "--copy-tokenizer",
                            "--random-seed",
                            "0",
                        ]
                    )
                )
            wall = statistics.median(t for t, _, _ in ours)
            rss, anon = max(r for _, r, _ in ours), max(a for _, _, a in ours)
            bare_wall = statistics.median(t for t, _, _ in bare)
            bare_rss = max(r for _, r, _ in bare)
            print(
                f"{name}: platform {wall:.2f} s, peak RSS {rss / 1e6:.0f} MB "
                f"(anonymous {anon / 1e6:.0f} MB) | mergekit-yaml {bare_wall:.2f} s, "
                f"{bare_rss / 1e6:.0f} MB | time x{wall / bare_wall:.2f}, "
                f"RSS x{rss / bare_rss:.2f} | over the runtime's {runtime / 1e6:.0f} MB: "
                f"RSS {(rss - runtime) / size:.2f}x one model, "
                f"anonymous {(anon - runtime_anon) / size:.2f}x"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
