"""Evaluation benchmark: samples/s of each generation engine through the platform against the
same engine called directly on the same model and data, and an endpoint's throughput at
concurrency 1, 8 and 32 against a direct client.

    python benchmarks/eval.py [--samples 48] [--max-new-tokens 16] [--requests 48]

Starts a private platform (benchmarks/dispatch.py's Platform: its own TP_HOME, ports and
redis-server), measures, and stops everything it started.

1. transformers: an evaluation of the bundled tiny model on tiny-math-eval (SAMPLES rows in
   batches of 16, greedy, MAX_NEW_TOKENS) through the platform (POST /evaluations: a
   builtin/evaluate job on the training worker). Its figure is SAMPLES over the program's
   generation time (`eval_runtime`, the model loaded). The baseline loads the same model with
   transformers in this process and generates the same chat-templated prompts in the same
   batches. End to end (submit -> results stored) is shown beside it.
2. vLLM: the same, where vLLM is installed on this machine; otherwise said so.
3. api: a serve job of the tiny model (`transformers serve`). At each concurrency, REQUESTS
   chat completions (the tiny-math-eval prompts) from: a direct OpenAI client to the server's
   own port (the baseline), the same client through the platform's way in
   (/api/v1/serving/{job}/v1 with the platform's token), and an evaluation with the api engine
   of an endpoint on the same server registered at that concurrency (its `eval_runtime`).

Prints tables and one `RESULT {json}` line. Client and server share the host; run it idle.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from dispatch import Platform, console
from rich.table import Table

CONCURRENCY = (1, 8, 32)
BATCH = 16


def _wait_evaluation(client: httpx.Client, evaluation_id: int, timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/evaluations/{evaluation_id}").json()
        if body["status"] != "pending":
            if body["status"] != "succeeded":
                raise RuntimeError(f"evaluation {evaluation_id} {body['status']}: {body['error']}")
            return body
        time.sleep(0.2)
    raise RuntimeError(f"evaluation {evaluation_id} still pending after {timeout} s")


def through_platform(client: httpx.Client, body: dict[str, Any]) -> tuple[float, float, int]:
    """(generation seconds as the program measured them, submit -> stored seconds, samples)."""
    started = time.perf_counter()
    created = client.post("/api/v1/evaluations", json=body)
    created.raise_for_status()
    result = _wait_evaluation(client, created.json()["id"])
    end_to_end = time.perf_counter() - started
    job = client.get(f"/api/v1/jobs/{result['job_id']}").json()
    runtime = float(job["outputs"]["summary"]["eval_runtime"])
    return runtime, end_to_end, int(result["samples"])


def rows(samples: int) -> list[list[dict[str, str]]]:
    """The first SAMPLES prompts of tiny-math-eval as chat messages."""
    source = Path(__file__).resolve().parents[1] / "training_platform/assets/datasets"
    lines = (source / "tiny-math-eval.jsonl").read_text().splitlines()[:samples]
    return [[{"role": "user", "content": json.loads(line)["prompt"]}] for line in lines]


def direct_transformers(model_dir: Path, prompts: list[list[dict[str, str]]], tokens: int) -> float:
    """Seconds to generate the prompts with transformers, as the program does, model loaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = [
        str(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False))
        for p in prompts
    ]
    started = time.perf_counter()
    for start in range(0, len(texts), BATCH):
        batch = tokenizer(
            texts[start : start + BATCH],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        with torch.no_grad():
            model.generate(
                **batch, do_sample=False, max_new_tokens=tokens, pad_token_id=tokenizer.pad_token_id
            )
    return time.perf_counter() - started


def client_rate(
    base_url: str, key: str, prompts: list[list[dict[str, str]]], concurrency: int, tokens: int
) -> float:
    """Chat completions per second from an OpenAI client with `concurrency` in flight."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)

    def one(messages: list[dict[str, str]]) -> None:
        client.chat.completions.create(
            model="tiny-qwen2",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=tokens,
            temperature=0,
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, prompts))
    return len(prompts) / (time.perf_counter() - started)


def _ready(client: httpx.Client, job_id: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        served = {s["job_id"]: s for s in client.get("/api/v1/serving").json()}
        if served.get(job_id, {}).get("ready"):
            return
        time.sleep(0.3)
    raise RuntimeError(f"serve job {job_id} did not answer within {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/eval.py")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48)
    args = parser.parse_args(argv)

    platform = Platform(keep_home=False, up_timeout_s=180)
    platform.env["TP_ALLOW_PRIVATE_URLS"] = "true"  # endpoints on the serve job's loopback port
    result: dict[str, Any] = {"samples": args.samples, "max_new_tokens": args.max_new_tokens}
    try:
        platform.start()
        headers = {"Authorization": f"Bearer {platform.token}"}
        with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as client:
            model_dir = platform.home / "models" / "tiny-qwen2"
            prompts = rows(args.samples)
            generation = {
                "max_new_tokens": args.max_new_tokens,
                "max_samples": args.samples,
                "batch_size": BATCH,
            }
            body = {"name": "bench", "dataset": "tiny-math-eval", "scorer": "numeric"}
            engines: dict[str, Any] = {}
            for engine in ("transformers", "vllm"):
                if engine == "vllm" and importlib.util.find_spec("vllm") is None:
                    engines[engine] = "not installed on this machine: not measured"
                    continue
                # Warm: the first run pays the import and page cache; the second counts.
                request = {
                    **body,
                    "model": "tiny-qwen2",
                    "generation": {**generation, "engine": engine},
                }
                through_platform(client, request)
                runtime, end_to_end, count = through_platform(client, request)
                direct_transformers(model_dir, prompts, args.max_new_tokens)
                bare = direct_transformers(model_dir, prompts, args.max_new_tokens)
                engines[engine] = {
                    "platform_samples_per_s": count / runtime,
                    "direct_samples_per_s": len(prompts) / bare,
                    "ratio": (count / runtime) / (len(prompts) / bare),
                    "end_to_end_s": end_to_end,
                }
            result["engines"] = engines

            started = client.post(
                "/api/v1/serving",
                json={"model": "tiny-qwen2", "engine": "transformers"},
            )
            started.raise_for_status()
            job_id = started.json()["id"]
            _ready(client, job_id)
            [found] = (platform.home / "runs" / str(job_id)).glob("attempt-*/endpoint.json")
            record = json.loads(found.read_text())
            direct_url = f"http://127.0.0.1:{record['port']}/v1"
            proxy_url = f"{platform.api_url}/api/v1/serving/{job_id}/v1"
            asked = (prompts * (args.requests // len(prompts) + 1))[: args.requests]
            client_rate(direct_url, "none", asked[:8], 8, args.max_new_tokens)  # warm
            api: dict[str, Any] = {}
            for concurrency in CONCURRENCY:
                direct = client_rate(direct_url, "none", asked, concurrency, args.max_new_tokens)
                proxied = client_rate(
                    proxy_url, platform.token, asked, concurrency, args.max_new_tokens
                )
                # The api engine at this concurrency: an endpoint on the same server (the
                # platform's loopback: TP_ALLOW_PRIVATE_URLS is on for the benchmark).
                registered = client.post(
                    "/api/v1/endpoints",
                    json={
                        "name": f"bench-c{concurrency}",
                        "base_url": direct_url,
                        "model": record["model"],
                        "concurrency": concurrency,
                    },
                )
                registered.raise_for_status()
                runtime, _, count = through_platform(
                    client,
                    {
                        **body,
                        "endpoint": f"bench-c{concurrency}",
                        "generation": {
                            **generation,
                            "max_samples": args.requests,
                            "batch_size": max(BATCH, concurrency),
                        },
                    },
                )
                api[str(concurrency)] = {
                    "direct_requests_per_s": direct,
                    "through_api_requests_per_s": proxied,
                    "proxy_ratio": proxied / direct,
                    "engine_samples_per_s": count / runtime,
                    "engine_ratio": (count / runtime) / direct,
                }
            result["api"] = api
            client.post(f"/api/v1/jobs/{job_id}/cancel")
    finally:
        platform.stop()

    table = Table("engine", "platform samples/s", "direct samples/s", "ratio", "end to end s")
    for engine, figures in result["engines"].items():
        if isinstance(figures, str):
            table.add_row(engine, figures, "", "", "")
            continue
        table.add_row(
            engine,
            f"{figures['platform_samples_per_s']:.1f}",
            f"{figures['direct_samples_per_s']:.1f}",
            f"{figures['ratio']:.2f}",
            f"{figures['end_to_end_s']:.1f}",
        )
    console.print(table)
    table = Table(
        "concurrency",
        "direct client req/s",
        "api engine samples/s",
        "ratio",
        "client via /serving req/s",
        "ratio",
    )
    for concurrency in CONCURRENCY:
        figures = result["api"][str(concurrency)]
        table.add_row(
            str(concurrency),
            f"{figures['direct_requests_per_s']:.1f}",
            f"{figures['engine_samples_per_s']:.1f}",
            f"{figures['engine_ratio']:.2f}",
            f"{figures['through_api_requests_per_s']:.1f}",
            f"{figures['proxy_ratio']:.2f}",
        )
    console.print(table)
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
