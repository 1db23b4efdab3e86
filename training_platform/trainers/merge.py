"""Merge models: `python -m training_platform.trainers.merge --config merge_config.json`.

A launch plan of the builtin/merge pair starts this program in the run directory. It hands the
mergekit configuration in the config (what `mergekit-yaml` would read, models as local
directories, a LoRA adapter as `base+adapter`) to mergekit's own `run_merge`, with its lazy
tensor loading on, and writes:

- `model_dir` (in `output_dir`): the merged Hugging Face model (safetensors shards, config,
  tokenizer), `mergekit_config.yml` (feeding it to `mergekit-yaml` reproduces the merge) and a
  model card (README.md) that names the method, its parameters and the parents by catalog name;
- `merge.yml`: the same configuration, beside the run's other files;
- records in `metrics_path` (training_platform.trainers.progress): `started` with max_steps =
  the tensors to compute, `metrics` {"tensors_done"} as they are, and a final `checkpoint`.

A LoRA adapter is merged into its base (PEFT's merge_and_unload, inside mergekit) in the base's
dtype before the merge. Exit status: 0 when the model is saved, 1 when the merge fails
(traceback on stderr), 2 when the config or its inputs cannot start one (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

from training_platform.trainers.lean import skip_unused_imports
from training_platform.trainers.progress import ProgressWriter, directory_size

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
CONFIG_YAML = "merge.yml"
# Progress records at most this often (a large model has thousands of tensors).
PROGRESS_EVERY_S = 2.0

_T = TypeVar("_T")


class ConfigError(Exception):
    """The config cannot start a merge."""


def load_config(path: Path) -> dict[str, Any]:
    """The config, with the keys this program needs."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    for key in ("mergekit", "output_dir", "model_dir", "metrics_path"):
        if key not in config:
            raise ConfigError(f"{path} has no {key!r}")
    return dict(config)


def _local_dirs(reference: str) -> list[Path]:
    return [Path(part) for part in reference.split("+")]


def check_inputs(mergekit: dict[str, Any]) -> None:
    """ConfigError unless every model the merge reads is a local directory."""
    references = [entry["model"] for entry in mergekit.get("models", [])]
    if mergekit.get("base_model"):
        references.append(mergekit["base_model"])
    for reference in references:
        for directory in _local_dirs(str(reference)):
            if not directory.is_dir():
                raise ConfigError(f"model directory {directory} does not exist")


def base_dtype(mergekit: dict[str, Any]) -> str:
    """The dtype the merge keeps when it is not given: the base's (or first model's)."""
    reference = mergekit.get("base_model") or mergekit["models"][0]["model"]
    directory = _local_dirs(str(reference))[0]
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return str(dtype) if dtype in ("float32", "bfloat16", "float16") else "float32"


class TensorProgress(Generic[_T]):
    """Stands in for mergekit's progress bar over its tensors: the same iteration, with
    records in the run's metrics file (job progress) instead of a terminal bar."""

    writer: ProgressWriter | None = None
    done = 0  # tensors computed so far (the final records' step)

    def __init__(self, iterable: Iterable[_T], *args: Any, **kwargs: Any) -> None:
        self.items = list(iterable)
        self.description = str(kwargs.get("desc") or "")

    def __iter__(self) -> Iterator[_T]:
        writer, total = self.writer, len(self.items)
        if writer is None or self.description != "Executing graph":
            yield from self.items
            return
        writer.started(max_steps=total)
        last = time.monotonic()
        for done, item in enumerate(self.items):
            yield item
            TensorProgress.done = done + 1
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S or done + 1 == total:
                writer.metrics(step=done + 1, values={"tensors_done": done + 1})
                print(f"tensor {done + 1}/{total}", flush=True)
                last = now


def write_card(model_dir: Path, card: dict[str, Any], mergekit: dict[str, Any]) -> None:
    """README.md: what the merge did and from which models, by their catalog names."""
    name = str(card.get("name") or model_dir.name)
    parents = card.get("parents") or []
    lines = [
        "---",
        "library_name: transformers",
        "tags: [merge, mergekit, training_platform]",
        "---",
        f"# {name}",
        "",
        f"Merged by training_platform with mergekit, method `{mergekit['merge_method']}`.",
        "",
        "## Parents",
        "",
    ]
    for parent in parents:
        extras = ", ".join(
            f"{key} {value}"
            for key, value in parent.items()
            if key not in ("name", "role") and value is not None
        )
        role = parent.get("role", "input")
        lines.append(f"- `{parent.get('name')}` ({role}{'; ' + extras if extras else ''})")
    shared = mergekit.get("parameters") or {}
    lines += ["", "## Parameters", ""]
    lines += [f"- {key}: {value}" for key, value in shared.items()] or ["- (method defaults)"]
    lines += [
        f"- dtype: {mergekit.get('dtype', 'as the base')}",
        f"- tokenizer: {(mergekit.get('tokenizer') or {}).get('source', 'base')}",
        "",
        "`mergekit_config.yml` holds the configuration; `mergekit-yaml` reproduces the merge.",
        "",
    ]
    (model_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")


def merge(config: dict[str, Any]) -> Path:
    """Run the merge; the model's directory."""
    import yaml

    output_dir = Path(config["output_dir"])
    model_dir = output_dir / str(config["model_dir"])
    spec = dict(config["mergekit"])
    check_inputs(spec)
    spec.setdefault("dtype", base_dtype(spec))
    source = yaml.safe_dump(spec, sort_keys=False)
    (output_dir / CONFIG_YAML).write_text(source, encoding="utf-8")

    import mergekit.graph
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from pydantic import ValidationError

    try:
        merge_config = MergeConfiguration.model_validate(spec)
    except ValidationError as error:
        raise ConfigError(f"mergekit refuses the configuration: {error}") from None
    writer = ProgressWriter(Path(config["metrics_path"]))
    TensorProgress.writer = writer
    # graph.py's own name for the tqdm module: only its bar over the tensors is replaced.
    mergekit.graph.tqdm = SimpleNamespace(tqdm=TensorProgress)
    options = MergeOptions(
        lazy_unpickle=True,
        copy_tokenizer=True,
        random_seed=int(config.get("seed", 0)),
        out_shard_size=int(config.get("out_shard_bytes", 1 << 30)),
        device=str(config.get("device", "cpu")),
        lora_merge_cache=str(output_dir / "lora-merged"),
        lora_merge_dtype=spec["dtype"],
        quiet=False,
    )
    started = time.monotonic()
    print(f"merging with {spec['merge_method']} into {model_dir}", flush=True)
    run_merge(merge_config, str(model_dir), options=options, config_source=source)
    write_card(model_dir, dict(config.get("card") or {}), spec)
    seconds = time.monotonic() - started
    size = directory_size(model_dir)
    step = TensorProgress.done
    writer.summary(step=step, values={"merge_seconds": round(seconds, 3), "size_bytes": size})
    writer.checkpoint(
        step=step, path=str(config["model_dir"]), final=True, adapter=False, size_bytes=size
    )
    print(f"saved merged model to {model_dir} ({size} bytes, {seconds:.1f} s)", flush=True)
    return model_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m training_platform.trainers.merge")
    parser.add_argument("--config", type=Path, required=True, help="merge_config.json")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    skip_unused_imports()
    try:
        merge(load_config(args.config))
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
