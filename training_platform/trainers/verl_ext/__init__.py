"""Modules the platform loads into verl processes through verl's `VERL_USE_EXTERNAL_MODULES`.

verl imports each named module while `import verl` runs, in every process it starts (torchrun
ranks, Ray workers), before it builds a model. `compat` goes into every verl run; `cpu` only
into the SFT smoke test on CPU.
"""
