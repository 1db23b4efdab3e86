"""The analytic tier against the dry run: Qwen2-, Llama- and Gemma-shaped configs from 0.5B to
8B, full and LoRA, gradient checkpointing on and off.

`python -m training_platform.compute.calibrate` runs the dry run of every case (minutes on a
CPU) and writes calibration.json beside this file (`--published` prints the published-peaks
regression set against the estimate instead); tests/compute holds the analytic estimate
within 10% of each stored row and re-runs one row's dry run to show the table is what the dry
run gives. The LoRA coefficient of the estimator (LORA_PER_INPUT) was fitted to the three LoRA
rows without checkpointing; the other rows are out of sample. The pure-bf16 rows: the layer
coefficients (ACTIVATION_BF16) come from one-layer shapes (`fit`), the logits' and the bf16 LoRA
coefficient from the 0.5B rows (LoRA: its row of the table above, run in bf16); the
other bf16 rows are out of sample.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("calibration.json")
PUBLISHED = Path(__file__).with_name("published_peaks.json")


def _config(
    model_type: str,
    h: int,
    layers: int,
    heads: int,
    kv: int,
    inter: int,
    vocab: int,
    tied: bool,
    head_dim: int | None = None,
) -> dict[str, Any]:
    config = {
        "model_type": model_type,
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "max_position_embeddings": 8192,
        "torch_dtype": "bfloat16",
    }
    if head_dim is not None:
        config["head_dim"] = head_dim
    return config


# Shapes of public models (their config.json numbers), no weights.
QWEN2_0_5B = _config("qwen2", 896, 24, 14, 2, 4864, 151936, True)
LLAMA_3_2_1B = _config("llama", 2048, 16, 32, 8, 8192, 128256, True, 64)
QWEN2_1_5B = _config("qwen2", 1536, 28, 12, 2, 8960, 151936, True)
GEMMA_2B = _config("gemma", 2048, 18, 8, 1, 16384, 256000, True, 256)
QWEN2_3B = _config("qwen2", 2048, 36, 16, 2, 11008, 151936, True)
QWEN2_7B = _config("qwen2", 3584, 28, 28, 4, 18944, 152064, False)
LLAMA_3_8B = _config("llama", 4096, 32, 32, 8, 14336, 128256, False)
GEMMA_7B = _config("gemma", 3072, 28, 16, 16, 24576, 256000, True, 256)


def _sft(
    micro: int, seq: int, checkpointing: bool, lora: int | None = None, precision: str = "mixed"
) -> dict[str, Any]:
    workload = {
        "algorithm": "sft",
        "micro_batch": micro,
        "seq_len": seq,
        "gradient_checkpointing": checkpointing,
        "lora_rank": lora,
    }
    if precision != "mixed":
        workload["precision"] = precision
    return workload


CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("Qwen2.5-0.5B full, checkpointing, 4 x 1024", QWEN2_0_5B, _sft(4, 1024, True)),
    ("Qwen2.5-0.5B LoRA 16, no checkpointing, 4 x 1024", QWEN2_0_5B, _sft(4, 1024, False, 16)),
    ("Llama-3.2-1B full, no checkpointing, 2 x 1024", LLAMA_3_2_1B, _sft(2, 1024, False)),
    ("Qwen2.5-1.5B LoRA 16, checkpointing, 8 x 2048", QWEN2_1_5B, _sft(8, 2048, True, 16)),
    ("Gemma-2B full, checkpointing, 2 x 1024", GEMMA_2B, _sft(2, 1024, True)),
    ("Qwen2.5-3B LoRA 16, no checkpointing, 2 x 1024", QWEN2_3B, _sft(2, 1024, False, 16)),
    ("Qwen2.5-7B LoRA 16, checkpointing, 4 x 2048", QWEN2_7B, _sft(4, 2048, True, 16)),
    ("Llama-3-8B full, checkpointing, 1 x 2048", LLAMA_3_8B, _sft(1, 2048, True)),
    ("Llama-3-8B LoRA 16, no checkpointing, 1 x 1024", LLAMA_3_8B, _sft(1, 1024, False, 16)),
    ("Gemma-7B LoRA 16, checkpointing, 2 x 2048", GEMMA_7B, _sft(2, 2048, True, 16)),
    # pure bf16 (weights, gradients, AdamW state): the published peaks' precision
    (
        "Qwen2.5-0.5B full, bf16, checkpointing, 4 x 1024",
        QWEN2_0_5B,
        _sft(4, 1024, True, None, "bf16"),
    ),
    (
        "Llama-3.2-1B full, bf16, no checkpointing, 2 x 1024",
        LLAMA_3_2_1B,
        _sft(2, 1024, False, None, "bf16"),
    ),
    (
        "Qwen2.5-1.5B LoRA 16, bf16, checkpointing, 8 x 2048",
        QWEN2_1_5B,
        _sft(8, 2048, True, 16, "bf16"),
    ),
    ("Gemma-2B full, bf16, checkpointing, 2 x 1024", GEMMA_2B, _sft(2, 1024, True, None, "bf16")),
    (
        "Llama-3-8B LoRA 16, bf16, no checkpointing, 1 x 1024",
        LLAMA_3_8B,
        _sft(1, 1024, False, 16, "bf16"),
    ),
]


@dataclass(frozen=True)
class PublishedRow:
    """One published measured peak against the estimate of the same run."""

    id: int
    run: str
    published_bytes: int
    estimate_bytes: int | None  # None: the run is outside the estimator
    not_modelled: str | None  # what the run did that the estimator does not model

    @property
    def error(self) -> float | None:
        if self.estimate_bytes is None:
            return None
        return self.estimate_bytes / self.published_bytes - 1


def published() -> list[PublishedRow]:
    """The regression set: each published peak (published_peaks.json) against the estimate.

    A peak published as reserved memory is compared with the estimate plus the allocator's
    rounding; an allocated or active peak with the estimate itself.
    """
    from training_platform.compute.architecture import Architecture
    from training_platform.compute.estimator import FRAGMENTATION, Workload, estimate

    data = json.loads(PUBLISHED.read_text())
    rows = []
    for row in data["rows"]:
        unit = 2**30 if row["unit"].startswith("GiB") else 10**9
        sized = None
        if "workload" in row:
            arch = Architecture.from_config(data["shapes"][row["model"]])
            peak = estimate(arch, Workload(**row["workload"])).peak_bytes
            sized = int(peak * (1 + FRAGMENTATION)) if "reserved" in row["measures"] else peak
        rows.append(
            PublishedRow(
                id=row["id"],
                run=f"{row['model']} {row['method']}, {row['micro_batch']} x {row['seq_len']}, "
                f"checkpointing {'on' if row['grad_ckpt'] else 'off'}, {row['gpu']}",
                published_bytes=int(row["peak"] * unit),
                estimate_bytes=sized,
                not_modelled=row.get("not_modelled"),
            )
        )
    return rows


def report(rows: list[PublishedRow]) -> str:
    """The regression set as a table, with the median and worst absolute error."""
    lines = []
    for row in rows:
        error = "outside" if row.error is None else f"{100 * row.error:+6.1f}%"
        lines.append(
            f"{row.id:3d} {row.run:90s} published {row.published_bytes / 2**30:5.1f} GiB  "
            + (
                f"estimate {row.estimate_bytes / 2**30:5.1f} GiB  {error}"
                if row.estimate_bytes is not None
                else error
            )
            + (f"  (not modelled: {row.not_modelled})" if row.not_modelled else "")
        )
    for label, chosen in (
        ("every compared row", [r for r in rows if r.error is not None]),
        (
            "rows with nothing unmodelled",
            [r for r in rows if r.error is not None and not r.not_modelled],
        ),
    ):
        errors = [abs(r.error) for r in chosen if r.error is not None]
        lines.append(
            f"{label} ({len(errors)}): median {100 * statistics.median(errors):.1f}%, "
            f"worst {100 * max(errors):.1f}%"
        )
    return "\n".join(lines)


def main() -> None:
    """Run every case's dry run and write the table (`--published`: print the regression set)."""
    if sys.argv[1:] == ["--published"]:
        print(report(published()))
        return
    from training_platform.compute.dryrun import dry_run
    from training_platform.compute.estimator import Workload

    rows = []
    for name, config, workload in CASES:
        measured = dry_run(config, Workload(**workload))
        rows.append(
            {
                "name": name,
                "config": config,
                "workload": workload,
                "dry_run_bytes": measured.peak_bytes,
                "breakdown": measured.breakdown,
                "seconds": round(measured.seconds, 1),
            }
        )
        print(f"{name}: {measured.peak_bytes / 2**20:,.0f} MiB ({measured.seconds:.0f} s)")
        sys.stdout.flush()
    TABLE.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
