"""Evaluate a model: `python -m training_platform.trainers.evaluate --config eval_config.json`.

A launch plan of the builtin/evaluate pair starts this program in the run directory. It reads
the first `max_samples` rows of a prepared rl dataset (verl's layout: `prompt` chat messages,
`reward_model.ground_truth`), generates for each prompt (greedily unless a temperature is
set) through the model's chat template, or (the api engine) asks an OpenAI-compatible
endpoint for a chat completion of the prompt's messages, and scores every completion against
its ground truth with a rule metric:

    numeric_match  the last number of the completion equals the last number of the answer
    exact_match    the two are equal once case, surrounding and repeated whitespace and one
                   trailing period are set aside

Records in `metrics_path` (see training_platform.trainers.progress): `started` with max_steps =
the number of batches, one `metrics` record per batch with the running
{"accuracy", "correct", "total"} (so each key's last value is the result), then a `summary`
record with the same keys plus eval_runtime. No checkpoint: the run saves no model. Files in
`output_dir`: predictions.jsonl (one {"index", "seconds", "tokens", "prompt", "answer",
"completion", "correct", "labels"} per row: its row number, its latency (its share of its
batch's generation time where generation is batched), completion tokens where the engine
reports them, and the dataset's labels of the row; with `n` > 1 samples per prompt also
"completions", all n of them, the first being "completion", which the running accuracy
scores) and
results.json ({"metric", "accuracy", "correct", "total", "model_path", "engine"}).

Exit status: 0 when results.json is written, 1 when the run fails (traceback on stderr), 2 when
the config or its inputs cannot start a run (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from training_platform.rewards.builtin import last_number, normalize_answer
from training_platform.trainers.lean import skip_unused_imports

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FILE = "results.json"
HEARTBEAT_FILE = "heartbeat"

# Read once by the Hugging Face libraries at import, so they are set before the first import.
HF_ENV_DEFAULTS = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}

Metric = Literal["exact_match", "numeric_match"]
Engine = Literal["auto", "transformers", "vllm", "api"]
# Prompts in; the n completions of each out.
Generate = Callable[[list[str]], list[list[str]]]
# One row's n completions, its seconds and its completion tokens (None: not reported).
Generated = tuple[list[str], float, int | None]
# The api engine: every row's chat messages in; what each generated out, in order, as it comes.
ApiGenerate = Callable[[list[list[dict[str, str]]]], Iterator[Generated]]
# Requests the api engine keeps submitted per unit of concurrency (they wait in its pool).
API_WINDOW = 4


# --- scoring -----------------------------------------------------------------------------


def numeric_match(completion: str, answer: str) -> bool:
    """Whether the completion's last number equals the answer's, numerically."""
    expected = last_number(answer)
    return expected is not None and last_number(completion) == expected


def exact_match(completion: str, answer: str) -> bool:
    """Whether the completion is the answer, case and spacing aside."""
    return normalize_answer(completion) == normalize_answer(answer)


METRICS: dict[str, Callable[[str, str], bool]] = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
}


# --- config ------------------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def _parquet(path: Path) -> Path:
    if path.suffix != ".parquet":
        raise ValueError("must be a .parquet file (a dataset prepared for the rl task)")
    return path


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]


class EndpointConfig(BaseModel):
    """An OpenAI-compatible server to call (the api engine); its key is in a file apart."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    concurrency: int = Field(default=8, ge=1)
    max_retries: int = Field(default=3, ge=0)
    rate_limit: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)


class EvalConfig(BaseModel):
    """What eval_config.json holds (written by backends/builtin/evaluate.py)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # A local directory (full model, or a PEFT adapter with adapter_config.json) or a hub id;
    # "" with an endpoint.
    model_path: str = ""
    endpoint: EndpointConfig | None = None
    api_key_file: str | None = None  # run-dir-relative, 0600; removed once read
    dataset_path: Annotated[Path, AfterValidator(_absolute), AfterValidator(_parquet)]
    output_dir: AbsolutePath
    metrics_path: AbsolutePath
    gpus: int = Field(default=0, ge=0)  # real GPUs leased to the run
    metric: Metric = "numeric_match"
    max_new_tokens: int = Field(default=32, ge=1)
    max_samples: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1)
    engine: Engine = "auto"
    kv_cache_gib: float = Field(default=1.0, gt=0)  # read by vLLM from the environment
    enforce_eager: bool = False
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1)  # completions per prompt (sampled: temperature > 0)


class ConfigError(Exception):
    """The config or its inputs cannot start a run; the message fits on one line."""


def parse_config(text: str) -> EvalConfig:
    """Validate the config file's text; raises ConfigError."""
    try:
        return EvalConfig.model_validate_json(text)
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(p) for p in problem['loc']) or 'config'}: {problem['msg']}"
            for problem in error.errors()
        ]
        raise ConfigError("; ".join(problems)) from error


def load_config(path: Path) -> EvalConfig:
    """Read and validate the config, including that its inputs exist; raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from error
    config = parse_config(text)
    if (config.endpoint is None) == (not config.model_path):
        raise ConfigError("model_path: name a model or an endpoint, not both or neither")
    if Path(config.model_path).is_absolute() and not Path(config.model_path).is_dir():
        raise ConfigError(f"model_path: no such directory: {config.model_path}")
    if not config.dataset_path.is_file():
        raise ConfigError(f"dataset_path: no such file: {config.dataset_path}")
    if config.n > 1 and config.temperature == 0:
        raise ConfigError("n: more than one completion per prompt needs a temperature > 0")
    return config


# --- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One sample: the prompt as chat messages, its ground truth, and its dataset labels."""

    messages: list[dict[str, str]]
    answer: str
    labels: dict[str, Any]


def _labels(extra_info: Any) -> dict[str, Any]:
    # Prepared rl rows carry their labels as a JSON object in a string (datasets/formats.py).
    text = extra_info.get("labels") if isinstance(extra_info, dict) else None
    try:
        labels = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return labels if isinstance(labels, dict) else {}


def load_rows(path: Path, max_samples: int | None) -> list[Row]:
    """Prompt messages, ground truth and labels of the first `max_samples` rows; ConfigError
    if none."""
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as error:  # pyarrow raises several kinds for a file that is not parquet
        raise ConfigError(f"dataset_path: cannot read {path} as parquet: {error}") from error
    missing = [column for column in ("prompt", "reward_model") if column not in names]
    if missing:
        raise ConfigError(
            f"dataset_path: rl data needs column(s) {', '.join(missing)}; "
            f"the file has {', '.join(names)}"
        )
    columns = ["prompt", "reward_model", *(["extra_info"] if "extra_info" in names else [])]
    table = pq.read_table(path, columns=columns)
    if max_samples is not None:
        table = table.slice(0, max_samples)
    rows = []
    for number, row in enumerate(table.to_pylist()):
        prompt, reward = row["prompt"], row["reward_model"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not prompt or not isinstance(reward, dict) or reward.get("ground_truth") is None:
            raise ConfigError(f"dataset_path: row {number} has no prompt or no ground truth")
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        rows.append(Row(messages, str(reward["ground_truth"]), _labels(row.get("extra_info"))))
    if not rows:
        raise ConfigError(f"dataset_path: {path} has no rows to evaluate")
    return rows


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt as the model sees it: its chat template with the assistant turn opened."""
    if tokenizer.chat_template is None:
        return "\n".join(message["content"] for message in messages)
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


# --- model and engines -------------------------------------------------------------------


def adapter_base(model_path: str) -> str | None:
    """The base model a PEFT adapter directory names, or None for a full model."""
    config = Path(model_path) / "adapter_config.json"
    if not config.is_file():
        return None
    return str(json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"])


def vllm_available() -> bool:
    """Whether vLLM can be imported here."""
    return importlib.util.find_spec("vllm") is not None


def choose_engine(
    requested: Engine, *, gpus: int, cuda: bool, vllm: bool, adapter: bool
) -> Literal["transformers", "vllm", "api"]:
    """The engine that runs: auto takes vLLM only with real GPUs, vLLM and a full model."""
    if requested == "api":
        return "api"
    if requested == "vllm":
        if not vllm:
            raise ConfigError("engine: vllm is not installed on this host; use transformers")
        if adapter:
            raise ConfigError("engine: vllm evaluates full models only; this is an adapter")
        return "vllm"
    if requested == "auto" and gpus > 0 and cuda and vllm and not adapter:
        return "vllm"
    return "transformers"


def load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer, left-padded for batched generation; an adapter's own or its base's."""
    from transformers import AutoTokenizer

    source = model_path
    base = adapter_base(model_path)
    if base is not None and not (Path(model_path) / "tokenizer_config.json").is_file():
        source = base
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:
        raise ConfigError(f"model_path: cannot load a tokenizer from {source}: {error}") from error
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def transformers_generator(config: EvalConfig, tokenizer: PreTrainedTokenizerBase) -> Generate:
    """Batched generation (greedy, or n sampled completions per prompt) with transformers on
    one device (a GPU when there is one)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if adapter_base(config.model_path) is not None:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(config.model_path)
        else:
            model = AutoModelForCausalLM.from_pretrained(config.model_path)
    except OSError as error:
        raise ConfigError(f"model_path: cannot load {config.model_path}: {error}") from error
    model.to(device)
    model.eval()
    torch.manual_seed(config.seed)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters} parameters, device {device}")

    def generate(texts: list[str]) -> list[list[str]]:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(device)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p}
            if config.temperature > 0
            else {"do_sample": False}
        )
        with torch.no_grad():
            output = model.generate(
                **batch,
                **sampling,
                max_new_tokens=config.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                num_return_sequences=config.n,
            )
        # Left padding: every prompt ends at the same column, new tokens follow it; the n
        # sequences of a prompt are consecutive rows.
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        texts = [str(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return [texts[i : i + config.n] for i in range(0, len(texts), config.n)]

    return generate


def vllm_generator(
    config: EvalConfig, tokenizer: PreTrainedTokenizerBase, max_len: int | None = None
) -> Generate:
    """Generation with vLLM over the leased GPUs (tensor parallel), or its CPU build."""
    vllm: Any = importlib.import_module("vllm")
    llm = vllm.LLM(
        model=config.model_path,
        tensor_parallel_size=config.gpus or 1,
        enforce_eager=config.enforce_eager,
        # Prompt and completion of the longest row, not the model's whole context: the KV
        # cache it reserves follows from it.
        max_model_len=max_len,
    )
    sampling = vllm.SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
        max_tokens=config.max_new_tokens,
        n=config.n,
    )

    def generate(texts: list[str]) -> list[list[str]]:
        # Token ids, so that vLLM adds no second BOS to a template that already has one.
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        outputs = llm.generate([{"prompt_token_ids": list(i)} for i in ids], sampling)
        return [[str(one.text) for one in output.outputs] for output in outputs]

    return generate


class Pace:
    """Start at most `rate` requests per second across threads (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self._gap = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self._gap:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._gap
        time.sleep(max(0.0, start - now))


def read_key(config: EvalConfig) -> str | None:
    """The endpoint's API key from its 0600 file, which is removed at once."""
    if config.api_key_file is None:
        return None
    path = config.output_dir / config.api_key_file
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"api_key_file: cannot read it: {error.strerror}") from error
    path.unlink(missing_ok=True)
    return key


def api_generator(config: EvalConfig, key: str | None) -> ApiGenerate:
    """Chat completions from an endpoint: `concurrency` requests in flight all the time (no
    pause at the end of a batch: the next rows' requests are already submitted), paced to its
    rate limit, each retried by the OpenAI client on 429, 5xx and connection errors with
    backoff. Results come back in row order."""
    from openai import OpenAI

    endpoint = config.endpoint
    assert endpoint is not None
    client = OpenAI(
        base_url=endpoint.base_url,
        api_key=key or "none",
        max_retries=endpoint.max_retries,
        timeout=endpoint.timeout_s,
    )
    pace = Pace(endpoint.rate_limit)
    pool = ThreadPoolExecutor(max_workers=endpoint.concurrency)

    def one(request: tuple[list[dict[str, str]], int]) -> tuple[str, float, int | None]:
        messages, draw = request
        pace.wait()
        began = time.monotonic()
        reply = client.chat.completions.create(
            model=endpoint.model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            # The n completions of a prompt are n requests (not every server takes `n`),
            # each with its own seed.
            seed=config.seed + draw,
        )
        seconds = time.monotonic() - began
        text = reply.choices[0].message.content or "" if reply.choices else ""
        tokens = reply.usage.completion_tokens if reply.usage is not None else None
        return text, seconds, tokens

    def replies(rows: list[list[dict[str, str]]]) -> Iterator[tuple[str, float, int | None]]:
        # A bounded window of submitted requests, so that a million rows are not a million
        # futures at once.
        window: deque[Future[tuple[str, float, int | None]]] = deque()
        for messages in rows:
            for draw in range(config.n):
                window.append(pool.submit(one, (messages, draw)))
                if len(window) >= endpoint.concurrency * API_WINDOW:
                    yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def generate(rows: list[list[dict[str, str]]]) -> Iterator[Generated]:
        flowing = replies(rows)
        for _ in rows:
            mine = [next(flowing) for _ in range(config.n)]
            counted = [t for _, _, t in mine]
            tokens = None if None in counted else sum(t or 0 for t in counted)
            yield [text for text, _, _ in mine], sum(s for _, s, _ in mine), tokens

    return generate


# --- the run -----------------------------------------------------------------------------


def batches(count: int, size: int) -> list[range]:
    """Index ranges of consecutive batches of at most `size` covering `count` rows."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def evaluate(config: EvalConfig, key: str | None = None) -> dict[str, Any]:
    """Generate, score and record; returns the content of results.json."""
    rows = load_rows(config.dataset_path, config.max_samples)
    print(f"dataset: {len(rows)} rows from {config.dataset_path}")
    engine = choose_engine(
        config.engine,
        gpus=config.gpus,
        # Without GPUs torch need not be imported yet: bad input is reported at once.
        cuda=config.gpus > 0 and config.endpoint is None and _cuda_available(),
        vllm=vllm_available(),
        adapter=bool(config.model_path) and adapter_base(config.model_path) is not None,
    )
    print(f"engine: {engine}" + (f" ({config.endpoint.name})" if config.endpoint else ""))
    # progress imports transformers, and with it torch.
    from training_platform.trainers.progress import ProgressWriter, console_line

    run_batch: Callable[[list[Row]], list[Generated]]
    if engine == "api":
        # Every row's requests flow through the endpoint's window; a batch only groups the
        # progress records.
        flowing = api_generator(config, key)([row.messages for row in rows])

        def run_batch(batch: list[Row]) -> list[Generated]:
            return [next(flowing) for _ in batch]

    else:
        tokenizer = load_tokenizer(config.model_path)
        if engine == "vllm":
            longest = max(
                len(tokenizer(prompt_text(tokenizer, row.messages))["input_ids"]) for row in rows
            )
            limit = getattr(tokenizer, "model_max_length", None) or 1 << 20
            generate = vllm_generator(
                config, tokenizer, min(limit, longest + config.max_new_tokens + 8)
            )
        else:
            generate = transformers_generator(config, tokenizer)

        def run_batch(batch: list[Row]) -> list[Generated]:
            began = time.monotonic()
            completions = generate([prompt_text(tokenizer, row.messages) for row in batch])
            # Batched: each sample's share of the batch's generation time.
            share = (time.monotonic() - began) / len(batch)
            return [(completion, share, None) for completion in completions]

    score = METRICS[config.metric]
    plan = batches(len(rows), config.batch_size)
    writer = ProgressWriter(config.metrics_path)
    heartbeat = config.output_dir / HEARTBEAT_FILE
    writer.started(max_steps=len(plan))
    heartbeat.touch()
    started = time.monotonic()
    correct = total = 0
    values: dict[str, float | int | None] = {}
    with (config.output_dir / PREDICTIONS_FILE).open("w", encoding="utf-8") as predictions:
        for step, indices in enumerate(plan, start=1):
            batch = [rows[i] for i in indices]
            outputs = run_batch(batch)
            for index, row, (completions, seconds, tokens) in zip(
                indices, batch, outputs, strict=True
            ):
                completion = completions[0]
                hit = score(completion, row.answer)
                correct += hit
                total += 1
                record: dict[str, Any] = {
                    "index": index,
                    "seconds": round(seconds, 6),
                    "tokens": tokens,
                    "prompt": row.messages[-1]["content"],
                    "answer": row.answer,
                    "completion": completion,
                    "correct": hit,
                    "labels": row.labels,
                }
                if config.n > 1:
                    record["completions"] = completions
                predictions.write(json.dumps(record, ensure_ascii=False) + "\n")
            predictions.flush()
            values = {"accuracy": correct / total, "correct": correct, "total": total}
            writer.metrics(step=step, values=values)
            heartbeat.touch()
            print(console_line(step, len(plan), values))
    runtime = time.monotonic() - started
    writer.summary(step=len(plan), values={**values, "eval_runtime": round(runtime, 3)})
    results = {
        "metric": config.metric,
        "accuracy": correct / total,
        "correct": correct,
        "total": total,
        "model_path": config.endpoint.name if config.endpoint else Path(config.model_path).name,
        "engine": engine,
    }
    (config.output_dir / RESULTS_FILE).write_text(
        json.dumps(results, indent=2) + "\n", encoding="utf-8"
    )
    print(f"accuracy {correct / total:.4f} ({correct}/{total}), {config.metric}")
    return results


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m training_platform.trainers.evaluate")
    parser.add_argument("--config", type=Path, required=True, help="eval_config.json")
    args = parser.parse_args(argv)
    # stdout is a log file that the platform tails while the run goes on.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    for name, value in HF_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    skip_unused_imports()
    try:
        config = load_config(args.config)
        key = read_key(config)  # first: the file is gone whatever happens next
        config.output_dir.mkdir(parents=True, exist_ok=True)
        print(f"evaluation in {config.output_dir}: {config.metric} on {config.dataset_path}")
        evaluate(config, key)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except Exception:
        traceback.print_exc()
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
