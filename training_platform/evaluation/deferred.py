"""Scorers that run on a worker: an uploaded reward file (in a process of its own) and an LLM
judge (an endpoint asked a rubric about each sample). The service calls them from the
`tp.evaluation.score` task; neither ever runs in the API process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_platform.core import confine
from training_platform.rewards.builtin import last_number

FILE_TIMEOUT_S = 600.0
JUDGE_MAX_TOKENS = 512
DETAIL_CHARS = 4000
PLACEHOLDER = re.compile(r"\{(prompt|reference|output)\}")
# A reply that ends with a fraction, "8/10" or "Score: 4 / 5." (markup and punctuation aside).
FRACTION = re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)[\s*_.!)\]]*$")


class ScoringFailed(Exception):
    """The scorer could not score the samples; the message says why, in one line."""


@dataclass(frozen=True)
class Item:
    """One stored sample, as a scorer sees it."""

    prompt: str
    reference: str
    output: str
    labels: dict[str, Any]


def run_file(
    path: Path,
    items: Sequence[Item],
    timeout_s: float = FILE_TIMEOUT_S,
    run_as: confine.Account | None = None,
) -> list[float]:
    """compute_score of a reward file for each item, in a child process with an empty
    environment (no platform secret reaches user code) and a scratch directory, as the run
    user where there is one (core/confine.py: it cannot read the platform's files)."""
    if not path.is_file():
        raise ScoringFailed(f"the reward file is not on this worker ({path.name})")
    stdin = "".join(
        json.dumps(
            {"output": i.output, "reference": i.reference, "prompt": i.prompt, "labels": i.labels}
        )
        + "\n"
        for i in items
    )
    with tempfile.TemporaryDirectory(prefix="tp-score-") as scratch:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch}
        identity: dict[str, Any] = {}
        if run_as is not None:
            os.chown(scratch, run_as.uid, run_as.gid)
            identity = run_as.popen_arguments()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "training_platform.evaluation.score_file", str(path)],
                input=stdin,
                capture_output=True,
                text=True,
                cwd=scratch,
                env=env,
                timeout=timeout_s,
                check=False,
                **identity,
            )
        except subprocess.TimeoutExpired:
            raise ScoringFailed(f"the reward file took more than {timeout_s:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ScoringFailed(f"the reward file failed: {last[:500]}")
    scores = [float(json.loads(line)["score"]) for line in done.stdout.splitlines() if line]
    if len(scores) != len(items):
        raise ScoringFailed(f"the reward file scored {len(scores)} of {len(items)} samples")
    return scores


def judge_prompt(rubric: str, item: Item) -> str:
    """The rubric with {prompt}, {reference} and {output} filled in, in one pass (a sample's
    own text is never read as a placeholder)."""
    values = {"prompt": item.prompt, "reference": item.reference, "output": item.output}
    return PLACEHOLDER.sub(lambda found: values[found.group(1)], rubric)


def verdict(reply: str, max_score: float) -> float:
    """The score a judge's reply gives, in [0, 1]: a final fraction ("8/10") as it is, else its
    last number over max_score; 0 when it names no number."""
    fraction = FRACTION.search(reply)
    if fraction is not None and float(fraction.group(2)) > 0:
        value = float(fraction.group(1)) / float(fraction.group(2))
    else:
        number = last_number(reply)
        if number is None:
            return 0.0
        value = float(number) / max_score
    return min(1.0, max(0.0, value))


def run_judge(
    endpoint: dict[str, Any],
    key: str | None,
    rubric: str,
    max_score: float,
    items: Sequence[Item],
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, str]]:
    """(score, reply) per item from an OpenAI-compatible endpoint, at its concurrency and
    rate limit, each request retried with backoff by the client."""
    from openai import OpenAI, OpenAIError

    from training_platform.trainers.evaluate import Pace

    client = OpenAI(
        base_url=endpoint["base_url"],
        api_key=key or "none",
        max_retries=endpoint["max_retries"],
        timeout=endpoint["timeout_s"],
    )
    pace = Pace(endpoint["rate_limit"])

    def one(item: Item) -> tuple[float, str]:
        pace.wait()
        reply = client.chat.completions.create(
            model=endpoint["model"],
            messages=[{"role": "user", "content": judge_prompt(rubric, item)}],
            max_tokens=JUDGE_MAX_TOKENS,
            temperature=0.0,
        )
        text = (reply.choices[0].message.content or "") if reply.choices else ""
        return verdict(text, max_score), text[:DETAIL_CHARS]

    found: list[tuple[float, str]] = []
    try:
        with ThreadPoolExecutor(max_workers=endpoint["concurrency"]) as pool:
            for result in pool.map(one, items):
                found.append(result)
                if progress is not None and len(found) % 16 == 0:
                    progress(len(found))
    except OpenAIError as error:
        message = str(error)
        if key:
            message = message.replace(key, "***")  # a server may echo what it was sent
        raise ScoringFailed(
            f"the judge endpoint failed: {type(error).__name__}: {message[:500]}"
        ) from None
    finally:
        client.close()
    return found
