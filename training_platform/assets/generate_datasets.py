"""Regenerate the bundled tiny datasets: `python -m training_platform.assets.generate_datasets`.

The rows follow simple rules (small arithmetic, word games, a fixed fictional atlas) so that a
model of a few hundred thousand parameters visibly learns them within a few dozen steps. Output is
a pure function of the seeds below: running the script again rewrites the files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from training_platform.assets.tiny import BUNDLED_DATASETS, DATASETS_DIR

SFT_ROWS = 400
PREFS_ROWS = 200
MATH_ROWS = 200
MATH_EVAL_ROWS = 50

# SFT and preference arithmetic stays within 0..20; the math set needs an operand above 20, so an
# evaluation on tiny-math never scores questions the model saw verbatim during SFT.
SFT_MAX_OPERAND = 20
MATH_MAX_OPERAND = 60

WORDS = (
    "cat", "dog", "sun", "moon", "tree", "lamp", "river", "stone", "apple", "bread",
    "cloud", "green", "house", "light", "music", "ocean", "paper", "plant", "quiet", "robot",
    "salt", "table", "train", "water", "zebra", "bird", "fish", "star", "rain", "snow",
    "milk", "door", "book", "ship", "gold", "wind", "leaf", "hill", "road", "fire",
)  # fmt: skip

# A fictional atlas, so the facts come only from this data and never from a pretrained prior.
CAPITALS = (
    ("Zorvania", "Quellport"), ("Miradel", "Ostrava Nova"), ("Keltheim", "Brannock"),
    ("Ulvaria", "Sennet"), ("Dravonia", "Kestrel Bay"), ("Pellucia", "Amberfall"),
    ("Tiranor", "Vostok Hill"), ("Quessa", "Lindmoor"), ("Borealis Minor", "Frostgate"),
    ("Ashkarra", "Duneveil"), ("Velmora", "Cinderpoint"), ("Oskavia", "Harrowby"),
    ("Lunethra", "Silverkeep"), ("Grendale", "Mossbridge"), ("Corvantia", "Ravenholt"),
    ("Ysmir", "Coldharbour"), ("Nethrune", "Glimmerdeep"), ("Sarovel", "Tidewatch"),
    ("Harmonia", "Bellhaven"), ("Faelan", "Thornwick"),
)  # fmt: skip

Row = dict[str, Any]


def _rng(seed: int) -> random.Random:
    """A private generator, so each dataset depends only on its own seed."""
    return random.Random(seed)  # noqa: S311 - reproducible sampling, not security


Task = Callable[[random.Random], tuple[str, str]]


def _addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, SFT_MAX_OPERAND), rng.randint(0, SFT_MAX_OPERAND)
    return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."


def _subtraction(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(0, SFT_MAX_OPERAND)
    b = rng.randint(0, a)
    return f"What is {a} - {b}?", f"{a} - {b} = {a - b}."


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Reverse the word {word}.", f"{word} reversed is {word[::-1]}."


def _repeat(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    times = rng.randint(2, 3)
    return f"Repeat the word {word} {times} times.", " ".join([word] * times)


def _uppercase(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Write {word} in capital letters.", word.upper()


def _capital(rng: random.Random) -> tuple[str, str]:
    country, city = rng.choice(CAPITALS)
    return f"What is the capital of {country}?", f"The capital of {country} is {city}."


SFT_TASKS: tuple[Task, ...] = (_addition, _subtraction, _reverse, _repeat, _uppercase, _capital)


def _unique(rows: Iterator[tuple[str, Row]], count: int) -> list[Row]:
    """Take the first `count` rows whose key was not seen before."""
    seen: set[str] = set()
    out: list[Row] = []
    for key, row in rows:
        if key not in seen:
            seen.add(key)
            out.append(row)
            if len(out) == count:
                break
    return out


def sft_rows() -> list[Row]:
    """Chat rows in OpenAI `messages` format, cycling through the tasks."""
    rng = _rng(1)

    def candidates() -> Iterator[tuple[str, Row]]:
        while True:
            for task in SFT_TASKS:
                prompt, answer = task(rng)
                messages = [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]
                yield prompt, {"messages": messages}

    return _unique(candidates(), SFT_ROWS)


def _wrong_capital(rng: random.Random, country: str) -> str:
    return rng.choice([city for name, city in CAPITALS if name != country])


def preference_rows() -> list[Row]:
    """Prompt / chosen (correct) / rejected (wrong) triples."""
    rng = _rng(2)

    def candidates() -> Iterator[tuple[str, Row]]:
        while True:
            a, b = rng.randint(0, SFT_MAX_OPERAND), rng.randint(0, SFT_MAX_OPERAND)
            wrong = a + b + rng.choice((-2, -1, 1, 2))
            yield (
                f"{a}+{b}",
                {
                    "prompt": f"What is {a} + {b}?",
                    "chosen": f"{a} + {b} = {a + b}.",
                    "rejected": f"{a} + {b} = {wrong}.",
                },
            )
            country, city = rng.choice(CAPITALS)
            yield (
                f"capital {country}",
                {
                    "prompt": f"What is the capital of {country}?",
                    "chosen": f"The capital of {country} is {city}.",
                    "rejected": f"The capital of {country} is {_wrong_capital(rng, country)}.",
                },
            )
            word = rng.choice(WORDS)
            yield (
                f"upper {word}",
                {
                    "prompt": f"Write {word} in capital letters.",
                    "chosen": word.upper(),
                    "rejected": word,
                },
            )

    # The capital and uppercase prompts run out of fresh keys early; arithmetic fills the rest.
    return _unique(candidates(), PREFS_ROWS)


def _math_candidates() -> Iterator[tuple[str, Row]]:
    """The endless stream of math rows (seed 3) that tiny-math and tiny-math-eval draw from."""
    rng = _rng(3)
    while True:
        a = rng.randint(SFT_MAX_OPERAND + 1, MATH_MAX_OPERAND)
        b = rng.randint(0, MATH_MAX_OPERAND)
        if rng.random() < 0.5:
            prompt, answer = f"What is {a} + {b}?", a + b
        else:
            b = min(b, a)
            prompt, answer = f"What is {a} - {b}?", a - b
        yield prompt, {"prompt": prompt, "answer": str(answer)}


def math_rows() -> list[Row]:
    """Question / numeric answer pairs for RL rewards and evaluation."""
    return _unique(_math_candidates(), MATH_ROWS)


def math_eval_rows() -> list[Row]:
    """Held-out math rows: the next unique prompts of the same stream after tiny-math's, each
    labelled with its operation (what evaluation results break down by)."""
    rows = _unique(_math_candidates(), MATH_ROWS + MATH_EVAL_ROWS)[MATH_ROWS:]
    return [{**row, "op": "addition" if " + " in row["prompt"] else "subtraction"} for row in rows]


GENERATORS: dict[str, Callable[[], list[Row]]] = {
    "tiny-sft": sft_rows,
    "tiny-prefs": preference_rows,
    "tiny-math": math_rows,
    "tiny-math-eval": math_eval_rows,
}


def write_datasets(dest_dir: Path = DATASETS_DIR) -> list[Path]:
    """Write every bundled dataset as JSONL into `dest_dir` and return the paths."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, generate in GENERATORS.items():
        path = dest_dir / BUNDLED_DATASETS[name].file
        lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in generate())
        path.write_text("".join(lines), encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dest", type=Path, default=DATASETS_DIR, help="output directory")
    args = parser.parse_args(argv)
    for path in write_datasets(args.dest):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
