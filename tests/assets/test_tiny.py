"""The tiny model recipe: size, determinism, idempotent and atomic builds, tokenizer, template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training_platform.assets import __main__ as assets_cli
from training_platform.assets import tiny
from training_platform.assets.tiny import (
    BUNDLED_DATASETS,
    IM_END,
    TINY_MODEL_NAME,
    build_tiny_model,
    count_parameters,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("assets") / TINY_MODEL_NAME, seed=0)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_parameter_count_is_a_few_hundred_thousand(model_dir: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    count = count_parameters(model_dir)
    assert 100_000 <= count <= 1_000_000
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.num_parameters() == count
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.tie_word_embeddings
    assert config.vocab_size == len(tokenizer)


def test_same_seed_gives_identical_files(model_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert _file_bytes(again) == _file_bytes(model_dir)


def test_other_seed_changes_weights_only(model_dir: Path, tmp_path: Path) -> None:
    other = _file_bytes(build_tiny_model(tmp_path / "other", seed=1))
    first = _file_bytes(model_dir)
    assert other["model.safetensors"] != first["model.safetensors"]
    assert other["tokenizer.json"] == first["tokenizer.json"]


def test_build_is_idempotent(model_dir: Path) -> None:
    before = {path.name: path.stat().st_mtime_ns for path in model_dir.iterdir()}
    assert build_tiny_model(model_dir, seed=1) == model_dir
    assert {path.name: path.stat().st_mtime_ns for path in model_dir.iterdir()} == before


def test_incomplete_destination_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        build_tiny_model(dest)


def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_build(path: Path, seed: int, overrides: object = None) -> None:
        (path / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "_build_into", half_build)
    with pytest.raises(RuntimeError, match="disk full"):
        build_tiny_model(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_chat_template_renders_generation_prompt(tokenizer) -> None:
    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"
    closed = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not closed.endswith("<|im_start|>assistant\n")


def test_assistant_mask_covers_answer_and_end_of_turn(tokenizer) -> None:
    messages = [
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": "3 + 4 = 7."},
    ]
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [i for i, bit in zip(out["input_ids"], out["assistant_masks"], strict=True) if bit]
    assert tokenizer.decode(masked) == "3 + 4 = 7." + IM_END


def test_tokenizer_round_trips(tokenizer) -> None:
    samples = [
        "What is 12 + 7?",
        "The capital of Zorvania is Quellport.",
        "Unseen text: naïve café, 3.14159, tabs\tand\nnewlines, emoji 🙂",
    ]
    for sample in samples:
        ids = tokenizer(sample)["input_ids"]
        assert tokenizer.decode(ids) == sample
    # Digits are single tokens, as in Qwen2.
    assert len(tokenizer("12345")["input_ids"]) == 5
    assert 800 <= len(tokenizer) <= 2048


def test_special_tokens(tokenizer) -> None:
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer("<|im_start|>user<|im_end|>")["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.eos_token_id


def test_bundled_datasets_exist() -> None:
    assert set(BUNDLED_DATASETS) == {"tiny-sft", "tiny-prefs", "tiny-math", "tiny-math-eval"}
    for dataset in BUNDLED_DATASETS.values():
        assert dataset.path.is_file()
        first = json.loads(dataset.path.read_text(encoding="utf-8").splitlines()[0])
        assert isinstance(first, dict)


def test_cli_prints_path_and_parameter_count(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert assets_cli.main(["build-model", str(model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [str(model_dir), f"parameters: {count_parameters(model_dir)}"]
