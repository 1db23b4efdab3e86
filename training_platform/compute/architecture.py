"""A decoder's shape from its config.json alone, and what its parameters come to.

Counts follow the weights the Hugging Face implementations create: attention projections with
grouped key/value heads (num_key_value_heads) and an explicit head_dim where the config has one,
the gated MLP (gate, up, down) of the Llama family, the biases Qwen2 puts on q/k/v, the q/k norms
of Qwen3, the extra norms of Gemma 2/3, and an output head that is its own matrix unless the
embeddings are tied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Model families the counts below are right for (a Llama-shaped decoder with a gated MLP).
FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
)
QKV_BIAS = ("qwen2",)
QK_NORM = ("qwen3", "olmo2", "gemma3_text")
FOUR_NORMS = ("gemma2", "gemma3_text", "olmo2")

# The names PEFT's "all-linear" picks in these families (every linear but the output head).
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ArchitectureError(ValueError):
    """A config the estimator cannot size; the message names the key."""


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer that decide its memory."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    dtype_bytes: int = 2  # of the stored weights (torch_dtype)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Architecture:
        """Read a config.json's fields; a nested text_config (multimodal wrappers) is used."""
        if "text_config" in config and "hidden_size" not in config:
            config = {
                **config["text_config"],
                **{"tie_word_embeddings": config.get("tie_word_embeddings")},
            }
        model_type = str(config.get("model_type", ""))
        if model_type not in FAMILIES:
            raise ArchitectureError(
                f"model_type {model_type!r} is not sized by the estimator; it knows "
                f"{', '.join(FAMILIES)}"
            )

        def need(key: str) -> int:
            value = config.get(key)
            if not isinstance(value, int) or value <= 0:
                raise ArchitectureError(f"config.json: {key} must be a positive integer")
            return value

        hidden, heads = need("hidden_size"), need("num_attention_heads")
        head_dim = config.get("head_dim") or hidden // heads
        tied = config.get("tie_word_embeddings")
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        return cls(
            model_type=model_type,
            hidden=hidden,
            layers=need("num_hidden_layers"),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            intermediate=need("intermediate_size"),
            vocab=need("vocab_size"),
            # transformers' default is tied for the Gemma family, untied for the others
            tied=bool(tied) if tied is not None else model_type.startswith("gemma"),
            dtype_bytes=4 if "32" in dtype else 2,
        )

    @classmethod
    def from_directory(cls, directory: Path) -> Architecture:
        """The architecture of a model directory's config.json."""
        try:
            config = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError) as error:
            raise ArchitectureError(f"config.json unreadable: {error}") from None
        return cls.from_config(config)

    # --- parameters ---------------------------------------------------------------------

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear of one layer."""
        h, q, kv, i = self.hidden, self.q_width, self.kv_width, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_linear_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def layer_parameters(self) -> int:
        norms = (4 if self.model_type in FOUR_NORMS else 2) * self.hidden
        if self.model_type in QK_NORM:
            norms += 2 * self.head_dim
        bias = self.q_width + 2 * self.kv_width if self.model_type in QKV_BIAS else 0
        return self.layer_linear_parameters + norms + bias

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_parameters(self) -> int:
        """The output head's own weights: none when tied to the embeddings."""
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def parameters(self) -> int:
        """Every parameter, counted once (a tied head is the embedding)."""
        return (
            self.embedding_parameters
            + self.layers * self.layer_parameters
            + self.hidden  # final norm
            + self.head_parameters
        )

    def lora_parameters(self, rank: int, targets: str | list[str]) -> int:
        """Adapter parameters: r x (in + out) per targeted linear of every layer."""
        names = (
            LINEAR_NAMES if targets == "all-linear" else [t for t in targets if t in LINEAR_NAMES]
        )
        shapes = self.linear_shapes()
        return self.layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in names)

    def lora_inputs(self, targets: str | list[str]) -> int:
        """Sum of the input widths of the targeted linears of one layer (what dropout keeps)."""
        names = (
            LINEAR_NAMES if targets == "all-linear" else [t for t in targets if t in LINEAR_NAMES]
        )
        shapes = self.linear_shapes()
        return sum(shapes[n][0] for n in names)

    def describe(self) -> str:
        """One line: family, size, layers, heads."""
        return (
            f"{self.model_type}, {self.parameters / 1e9:.2f}B parameters, {self.layers} layers, "
            f"hidden {self.hidden}, {self.heads} heads ({self.kv_heads} key/value), "
            f"vocabulary {self.vocab}{', tied' if self.tied else ''}"
        )
