"""The memory estimator: parameter counts against published models, the analytic tier against
the dry run (fake tensors, torch's MemTracker) on 0.5B-8B shapes, and the phases it models."""

from __future__ import annotations

import json
import statistics

import pytest

from training_platform.compute import calibrate
from training_platform.compute.architecture import Architecture, ArchitectureError
from training_platform.compute.estimator import Workload, estimate

# Published parameter counts of these models (their model cards / safetensors index).
PUBLISHED = {
    "QWEN2_0_5B": 494_032_768,
    "LLAMA_3_2_1B": 1_235_814_400,
    "QWEN2_1_5B": 1_543_714_304,
    "GEMMA_2B": 2_506_172_416,
    "QWEN2_3B": 3_085_938_688,
    "QWEN2_7B": 7_615_616_512,
    "LLAMA_3_8B": 8_030_261_248,
    "GEMMA_7B": 8_537_680_896,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_counts_are_the_published_ones(name: str) -> None:
    assert Architecture.from_config(getattr(calibrate, name)).parameters == PUBLISHED[name]


def test_grouped_key_value_heads_are_counted() -> None:
    # The older prototype's estimator ignored GQA: Llama-3-8B with 8 key/value heads is not
    # the same size as with 32.
    gqa = Architecture.from_config(calibrate.LLAMA_3_8B)
    mha = Architecture.from_config({**calibrate.LLAMA_3_8B, "num_key_value_heads": 32})
    assert mha.parameters - gqa.parameters == 32 * 2 * 4096 * (4096 - 1024)


def test_an_unknown_family_or_a_missing_key_is_named() -> None:
    with pytest.raises(ArchitectureError, match="model_type 'bert' is not sized"):
        Architecture.from_config({**calibrate.LLAMA_3_8B, "model_type": "bert"})
    config = {k: v for k, v in calibrate.LLAMA_3_8B.items() if k != "vocab_size"}
    with pytest.raises(ArchitectureError, match="vocab_size must be a positive integer"):
        Architecture.from_config(config)


def _table() -> list[dict]:  # type: ignore[type-arg]
    return json.loads(calibrate.TABLE.read_text())


def test_the_analytic_estimate_is_within_10_percent_of_the_dry_run() -> None:
    rows = _table()
    assert len(rows) >= 8
    assert [r["name"] for r in rows] == [name for name, _, _ in calibrate.CASES]
    worst = 0.0
    for row in rows:
        arch = Architecture.from_config(row["config"])
        predicted = estimate(arch, Workload(**row["workload"]))
        error = (predicted.peak_bytes - row["dry_run_bytes"]) / row["dry_run_bytes"]
        print(
            f"{row['name']:50s} analytic {predicted.peak_bytes / 2**20:9,.0f} MiB  dry run "
            f"{row['dry_run_bytes'] / 2**20:9,.0f} MiB  {100 * error:+5.1f}%  ({predicted.phase})"
        )
        worst = max(worst, abs(error))
        assert abs(error) <= 0.10, row["name"]
    print(f"worst {100 * worst:.1f}%")


@pytest.mark.parametrize("index", [2, 11])  # the quickest rows: mixed precision, pure bf16
def test_the_table_is_what_the_dry_run_measures(index: int) -> None:
    from training_platform.compute.dryrun import dry_run

    row = _table()[index]  # 2-3 s each on an idle CPU; calibrate.py runs them all
    measured = dry_run(row["config"], Workload(**row["workload"]))
    assert measured.peak_bytes == row["dry_run_bytes"]
    assert measured.breakdown == row["breakdown"]


def test_phases_follow_the_configuration() -> None:
    arch = Architecture.from_config(calibrate.QWEN2_7B)
    full = estimate(arch, Workload(algorithm="sft", seq_len=1024))
    assert full.phase in ("end of backward", "optimizer step")
    assert full.breakdown["optimizer"] == 8 * arch.parameters
    lora = estimate(arch, Workload(algorithm="sft", seq_len=1024, lora_rank=16))
    assert lora.breakdown["optimizer"] == 8 * arch.lora_parameters(16, "all-linear")
    # checkpointing trades activations for compute; a longer sequence costs more
    no_ckpt = estimate(
        arch, Workload(algorithm="sft", seq_len=1024, lora_rank=16, gradient_checkpointing=False)
    )
    assert no_ckpt.peak_bytes > lora.peak_bytes
    longer = estimate(arch, Workload(algorithm="sft", seq_len=4096, lora_rank=16))
    assert longer.peak_bytes > lora.peak_bytes
    # DPO keeps a float32 reference copy for full training, none for LoRA (adapter disabled)
    dpo = estimate(arch, Workload(algorithm="dpo", seq_len=1024))
    assert dpo.breakdown["weights"] == 2 * full.breakdown["weights"]
    # verl FSDP shards the states over the GPUs
    one = estimate(arch, Workload(algorithm="sft", backend="verl", seq_len=1024, gpus=1))
    eight = estimate(arch, Workload(algorithm="sft", backend="verl", seq_len=1024, gpus=8))
    assert eight.breakdown["optimizer"] * 8 == one.breakdown["optimizer"]
    # a verl rollout holds its vLLM share of the device's total memory
    grpo = estimate(
        arch,
        Workload(
            algorithm="grpo", backend="verl", seq_len=2048, gpus=8, gpu_memory_mb=143_771,
            gpu_memory_utilization=0.6,
        ),
    )  # fmt: skip
    assert grpo.phase == "rollout" and grpo.breakdown["kv_cache"] > 0


def test_the_published_peaks_report_their_error_per_row() -> None:
    """The regression set of published measured peaks (sources in published_peaks.json)."""
    rows = calibrate.published()
    print("\n" + calibrate.report(rows))
    assert len(rows) == 15
    for row in rows:  # every row is compared, or says why it is not
        assert row.error is not None or row.not_modelled, row.id
    clean = [row.error for row in rows if row.error is not None and not row.not_modelled]
    assert len(clean) >= 5
    # Where the estimator models everything the run did, it does not under-predict (an
    # under-prediction admits a job that then runs out of memory), and it is close.
    assert min(clean) > -0.10
    assert statistics.median(abs(error) for error in clean) <= 0.10
