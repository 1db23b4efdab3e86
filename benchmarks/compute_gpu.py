"""The memory estimator against a real GPU (issue 21, acceptance 5).

A Qwen2.5-0.5B-shaped model built from its config (random weights, nothing downloaded) trains
three steps on the GPU exactly as the dry run does (compute/dryrun.py: TRL's SFT step, float32
weights under bf16 autocast, fused AdamW; full with gradient checkpointing, and LoRA without),
and the measured peak is printed beside the analytic estimate and the dry run:
- allocated: torch.cuda.max_memory_allocated, what the estimate's peak counts;
- device: the process's whole use as the driver sees it at the peak (reserved memory plus the
  CUDA context), what the estimate's device figure predicts.

    python benchmarks/compute_gpu.py [--seq-len 1024] [--micro-batch 4]

Needs torch with CUDA, transformers and peft. Prints a table, then one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from training_platform.compute import calibrate
from training_platform.compute.architecture import Architecture
from training_platform.compute.dryrun import build, dry_run, step
from training_platform.compute.estimator import MIB, Workload, estimate


def measure(config: dict[str, Any], workload: Workload) -> dict[str, int]:
    """Three real steps on the GPU; the peaks in bytes."""
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free_before, total = torch.cuda.mem_get_info()
    with torch.device("cuda"):
        model, optimizer, ids = build(config, workload, fake=False)
    with torch.no_grad():  # built uninitialised (as the dry run): give the weights values
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    for _ in range(3):
        step(model, optimizer, ids, workload, "cuda")
    torch.cuda.synchronize()
    allocated = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    del model, optimizer, ids
    torch.cuda.empty_cache()
    return {"allocated": allocated, "reserved": reserved, "total": total, "free": free_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=4)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("compute_gpu.py needs a CUDA GPU")
    # the CUDA context, measured once: what the driver shows before any tensor
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()
    config = calibrate.QWEN2_0_5B
    arch = Architecture.from_config(config)
    cases = [
        ("full, checkpointing", None, True),
        ("LoRA 16, no checkpointing", 16, False),
    ]
    results = []
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, {total / 2**30:.1f} GiB; CUDA context {context / MIB:,.0f} MiB")
    print(f"{arch.describe()}; {args.micro_batch} x {args.seq_len} tokens")
    for name, rank, checkpointing in cases:
        workload = Workload(
            algorithm="sft",
            micro_batch=args.micro_batch,
            seq_len=args.seq_len,
            lora_rank=rank,
            gradient_checkpointing=checkpointing,
        )
        predicted = estimate(arch, workload)
        dry = dry_run(config, workload)
        real = measure(config, workload)
        device = real["reserved"] + context
        row = {
            "case": name,
            "estimate_mib": predicted.peak_bytes / MIB,
            "dry_run_mib": dry.peak_bytes / MIB,
            "allocated_mib": real["allocated"] / MIB,
            "error_allocated": predicted.peak_bytes / real["allocated"] - 1,
            "estimate_device_mb": predicted.device_mb,
            "device_mib": device / MIB,
            "error_device": predicted.device_mb * MIB / device - 1,
        }
        results.append(row)
        print(
            f"{name:28s} estimate {row['estimate_mib']:8,.0f} MiB"
            f"  dry run {row['dry_run_mib']:8,.0f}"
            f"  measured {row['allocated_mib']:8,.0f}  error {100 * row['error_allocated']:+5.1f}%"
            f"  | device estimate {predicted.device_mb:8,} MiB  measured {row['device_mib']:8,.0f}"
            f"  error {100 * row['error_device']:+5.1f}%"
        )
        sys.stdout.flush()
    print("RESULT " + json.dumps({"gpu": gpu, "rows": results}))


if __name__ == "__main__":
    main()
