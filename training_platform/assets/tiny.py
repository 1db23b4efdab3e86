"""A tiny Qwen2 model and tokenizer built locally from config, plus the bundled tiny datasets.

No model hub is reachable from the machines this platform is tested on, so tests and demos train
a model of a few hundred thousand random parameters whose byte-level BPE tokenizer is trained on
the bundled datasets. torch, transformers and tokenizers are imported inside the functions that
need them: the API process reads the dataset descriptions without paying for those imports.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

TINY_MODEL_NAME = "tiny-qwen2"
DATASETS_DIR = Path(__file__).resolve().parent / "datasets"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
VOCAB_SIZE = 1024

# ChatML as in Qwen2.5, without a default system prompt (it would dominate a 128-token context).
# The generation markers span the assistant content and its <|im_end|>, so TRL's
# `assistant_only_loss=True` masks everything else and still trains the model to stop.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen2's own pre-tokenizer split: digits stay single tokens, which keeps arithmetic learnable.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}

# What `save_pretrained` leaves behind for a model plus tokenizer; all present means "complete".
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


@dataclass(frozen=True)
class BundledDataset:
    """A small dataset shipped inside the package."""

    name: str
    file: str
    format: str
    description: str
    # Whether the tiny tokenizer is trained on it; held-out sets stay out, so adding one changes
    # neither the tokenizer nor the model built from it.
    tokenizer_corpus: bool = True

    @property
    def path(self) -> Path:
        """Absolute path of the JSONL file."""
        return DATASETS_DIR / self.file


BUNDLED_DATASETS: dict[str, BundledDataset] = {
    d.name: d
    for d in (
        BundledDataset(
            name="tiny-sft",
            file="tiny-sft.jsonl",
            format="messages",
            description="400 chat rows (arithmetic, word games, fictional capitals) for SFT.",
        ),
        BundledDataset(
            name="tiny-prefs",
            file="tiny-prefs.jsonl",
            format="preference",
            description="200 prompt/chosen/rejected rows for DPO; chosen is the correct answer.",
        ),
        BundledDataset(
            name="tiny-math",
            file="tiny-math.jsonl",
            format="prompt_answer",
            description="200 addition/subtraction prompts with numeric answers, for RL and eval.",
        ),
        BundledDataset(
            name="tiny-math-eval",
            file="tiny-math-eval.jsonl",
            format="prompt_answer",
            description=(
                "50 held-out addition/subtraction prompts (none in tiny-math), for evaluation."
            ),
            tokenizer_corpus=False,
        ),
    )
}


def is_complete_model(path: Path) -> bool:
    """Whether `path` holds every file of a saved model plus tokenizer."""
    return all((path / name).is_file() for name in MODEL_FILES)


def count_parameters(model_dir: Path) -> int:
    """Number of parameters stored in a saved model, read from safetensors headers only."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 - safe_open handles are not iterable
            numel = 1
            for dim in weights.get_slice(key).get_shape():
                numel *= dim
            total += numel
    return total


def _strings(value: Any) -> Iterator[str]:
    """Every string nested anywhere inside a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _training_text() -> Iterator[str]:
    for dataset in BUNDLED_DATASETS.values():
        if not dataset.tokenizer_corpus:
            continue
        with dataset.path.open(encoding="utf-8") as lines:
            for line in lines:
                yield from _strings(json.loads(line))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer on the bundled datasets; returns a fast tokenizer."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # NFC as in Qwen2: transformers rebuilds a Qwen2 tokenizer with it when loading, so match it.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Without offsets that point into the original text, assistant masks cannot be mapped to tokens.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def _build_into(path: Path, seed: int, overrides: Mapping[str, Any] | None = None) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = Qwen2Config(
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **{"vocab_size": len(tokenizer), **MODEL_CONFIG, **(overrides or {})},
    )
    # Weight init draws from torch's global RNG; fork it so the caller's RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)  # type: ignore[no-untyped-call]
    # Stop on <|im_end|> in chat and on <|endoftext|> in plain text, as Qwen2.5-Instruct does.
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


# Heads of 32 dimensions (vLLM's CPU attention supports 32, 64, 80, ... 256; the tiny model's
# are 16): the same size otherwise, for tests of the vllm engine.
WIDE_HEADS: dict[str, Any] = {"num_attention_heads": 2, "num_key_value_heads": 1}


def build_tiny_model(
    dest: Path, *, seed: int = 0, overrides: Mapping[str, Any] | None = None
) -> Path:
    """Build the tiny model and tokenizer into `dest` (atomic, idempotent); return `dest`.
    `overrides` change its config (WIDE_HEADS: a model vLLM's CPU build can run)."""
    dest = Path(dest).resolve()
    if is_complete_model(dest):
        return dest
    if dest.exists():
        raise FileExistsError(f"{dest} exists but does not hold a complete model")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside `dest` so the final rename stays on one filesystem and is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        _build_into(tmp, seed, overrides)
        # mkdtemp and transformers' weight writer make private modes; workers that load the
        # model may run as other users.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        try:
            tmp.rename(dest)
        except OSError:
            # A concurrent builder renamed its copy first; theirs is as good as ours.
            if not is_complete_model(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
