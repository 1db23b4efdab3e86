"""Evaluation benchmark: samples/s of each generation engine through the platform against the
same engine called directly on the same model and data, and an endpoint's throughput at
concurrency 1, 8 and 32 against a direct client.

    python benchmarks/eval.py [--samples 512] [--max-new-tokens 32] [--requests 48]

Starts a private platform (benchmarks/dispatch.py's Platform: its own TP_HOME, ports and
redis-server), measures, and stops everything it started.

The model is the tiny model with 32-dimensional heads (vLLM's CPU attention needs >= 32).

1. transformers: an evaluation of that model on SAMPLES addition questions in tiny-math-eval's
   style (uploaded as a dataset; batches of 16, greedy, MAX_NEW_TOKENS) through the platform
   (POST /evaluations: a builtin/evaluate job on the training worker). Its figure is SAMPLES
   over the program's generation time (`eval_runtime`, the model loaded). The baseline loads
   the same model with transformers in this process and generates the same chat-templated
   prompts in the same batches. End to end (submit -> results stored) is shown beside it.
2. vLLM: the same with the vllm engine (its own environment, .venv-vllm: `make vllm-env`;
   eager, offline, in one process on CPU); the baseline is vLLM's LLM.generate in that
   environment on the same token ids in the same batches. Without .venv-vllm it says so.
3. api: a serve job of the tiny model (`transformers serve`). At each concurrency, REQUESTS
   chat completions (the same questions) from: a direct OpenAI client to the server's
   own port (the baseline), the same client through the platform's way in
   (/api/v1/serving/{job}/v1 with the platform's token), and an evaluation with the api engine
   of an endpoint on the same server registered at that concurrency (its `eval_runtime`).

Prints tables and one `RESULT {json}` line. Client and server share the host; run it idle.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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


def questions(samples: int) -> list[dict[str, str]]:
    """SAMPLES addition questions in tiny-math-eval's style (it has only 50 rows)."""
    return [
        {"prompt": f"What is {a} + {b}?", "answer": str(a + b)}
        for a, b in ((i % 97 + 1, (i * 7) % 89 + 1) for i in range(samples))
    ]


def rows(samples: int) -> list[list[dict[str, str]]]:
    """The benchmark's questions as chat messages."""
    return [[{"role": "user", "content": q["prompt"]}] for q in questions(samples)]


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


VLLM_DIRECT = """
import json, sys, time
if __name__ == "__main__":
    import vllm
    from transformers import AutoTokenizer
    model, tokens, prompts = sys.argv[1], int(sys.argv[2]), json.loads(sys.stdin.read())
    tokenizer = AutoTokenizer.from_pretrained(model)
    def ids(batch):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                 for p in batch]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    longest = max(len(i) for i in ids(prompts))
    llm = vllm.LLM(model=model, enforce_eager=True, max_model_len=longest + tokens + 8)
    sampling = vllm.SamplingParams(temperature=0.0, top_p=1.0, seed=0, max_tokens=tokens)
    started = time.perf_counter()
    # As the program does: each batch rendered, tokenized, then generated.
    for start in range(0, len(prompts), 16):
        batch = ids(prompts[start : start + 16])
        llm.generate([{"prompt_token_ids": list(i)} for i in batch], sampling)
    print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def direct_vllm(
    python: str, model_dir: Path, prompts: list[list[dict[str, str]]], tokens: int
) -> float:
    """Seconds vLLM (in its own environment, offline, eager, in one process) takes to generate
    the prompts in batches of 16, the engine started."""
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    done = subprocess.run(
        [python, "-c", VLLM_DIRECT, str(model_dir), str(tokens)],
        input=json.dumps(prompts),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def client_rate(
    base_url: str,
    key: str,
    model: str,
    prompts: list[list[dict[str, str]]],
    concurrency: int,
    tokens: int,
) -> float:
    """Chat completions per second from an OpenAI client with `concurrency` in flight."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)

    def one(messages: list[dict[str, str]]) -> None:
        client.chat.completions.create(
            model=model,
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
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=48)
    args = parser.parse_args(argv)

    platform = Platform(keep_home=False, up_timeout_s=180)
    platform.env["TP_ALLOW_PRIVATE_URLS"] = "true"  # endpoints on the serve job's loopback port
    # The serve job holds a slot while the api engine's evaluations run beside it.
    platform.env["TP_TRAINING_SLOTS"] = "2"
    result: dict[str, Any] = {"samples": args.samples, "max_new_tokens": args.max_new_tokens}
    try:
        platform.start()
        headers = {"Authorization": f"Bearer {platform.token}"}
        with httpx.Client(base_url=platform.api_url, headers=headers, timeout=60) as client:
            # The tiny model with 32-dimensional heads: one model that every engine can run.
            from training_platform.assets.tiny import WIDE_HEADS, build_tiny_model

            model_dir = build_tiny_model(platform.home / "models" / "wide", overrides=WIDE_HEADS)
            client.post(
                "/api/v1/models", json={"name": "wide", "path": str(model_dir)}
            ).raise_for_status()
            vllm_python = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
            prompts = rows(args.samples)
            generation = {
                "max_new_tokens": args.max_new_tokens,
                "max_samples": args.samples,
                "batch_size": BATCH,
            }
            upload = "".join(json.dumps(q) + "\n" for q in questions(args.samples)).encode()
            client.post(
                "/api/v1/datasets",
                params={"name": "bench-math", "filename": "bench-math.jsonl"},
                content=upload,
            ).raise_for_status()
            body = {"name": "bench", "dataset": "bench-math", "scorer": "numeric"}
            engines: dict[str, Any] = {}
            for engine in ("transformers", "vllm"):
                if engine == "vllm" and not vllm_python.is_file():
                    engines[engine] = "no .venv-vllm on this machine (make vllm-env): not measured"
                    continue
                # Warm: the first run pays the import and page cache; the second counts.
                extra = {"enforce_eager": True} if engine == "vllm" else {}
                request = {
                    **body,
                    "model": "wide",
                    "generation": {**generation, "engine": engine, **extra},
                }
                # The best of two runs each, after a warm one.
                through_platform(client, request)
                runs = [through_platform(client, request) for _ in range(2)]
                runtime, end_to_end, count = min(runs)
                direct = direct_vllm if engine == "vllm" else direct_transformers
                python = [str(vllm_python)] if engine == "vllm" else []
                bare = min(
                    direct(*python, model_dir, prompts, args.max_new_tokens)  # type: ignore[operator]
                    for _ in range(3)
                )
                engines[engine] = {
                    "platform_samples_per_s": count / runtime,
                    "direct_samples_per_s": len(prompts) / bare,
                    "ratio": (count / runtime) / (len(prompts) / bare),
                    "end_to_end_s": end_to_end,
                }
            result["engines"] = engines
            console.print(f"engines: {json.dumps(engines)}")

            started = client.post(
                "/api/v1/serving",
                json={"model": "wide", "engine": "transformers"},
            )
            started.raise_for_status()
            job_id = started.json()["id"]
            _ready(client, job_id)
            [found] = (platform.home / "runs" / str(job_id)).glob("attempt-*/endpoint.json")
            record = json.loads(found.read_text())
            direct_url = f"http://127.0.0.1:{record['port']}/v1"
            proxy_url = f"{platform.api_url}/api/v1/serving/{job_id}/v1"
            asked = (prompts * (args.requests // len(prompts) + 1))[: args.requests]
            client_rate(
                direct_url, "none", record["model"], asked[:8], 8, args.max_new_tokens
            )  # warm
            api: dict[str, Any] = {}
            for concurrency in CONCURRENCY:
                direct = client_rate(
                    direct_url, "none", record["model"], asked, concurrency, args.max_new_tokens
                )
                proxied = client_rate(
                    proxy_url, platform.token, "wide", asked, concurrency, args.max_new_tokens
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
