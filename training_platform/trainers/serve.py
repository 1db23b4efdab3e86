"""Serve a model: `python -m training_platform.trainers.serve --config serve_config.json`.

A launch plan of the builtin/serve pair starts this program in the run directory. It starts an
OpenAI-compatible server for `model_path` on 127.0.0.1, on a free port:

    vllm          vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`), where
                  vLLM is installed; on a host without GPUs it runs vLLM's CPU build
    transformers  `transformers serve` with the model pinned (every request gets it)

waits until the server answers /health, writes endpoint.json ({"port", "engine", "model", "host"}:
"model" is the name the server expects in requests) and then follows it: one line in the log
every HEALTH_LOG_S while it answers (the job's stall check reads the log), exit with the
server's status when it ends. The server is a child in the same process group: the job's
cancel stops both. The server listens on the loopback only; the platform's API forwards to it
under the platform's auth (serving/routes.py).

Exit status: 1 when the server dies or does not answer in time, 2 when the config cannot start
a run (one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
ENDPOINT_FILE = "endpoint.json"
HEALTH_LOG_S = 300.0
POLL_S = 2.0
HOST = "127.0.0.1"


class ServeConfig(BaseModel):
    """What serve_config.json holds (written by backends/builtin/serve.py)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model_path: str = Field(min_length=1)
    output_dir: str = Field(min_length=1)
    gpus: int = Field(default=0, ge=0)
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    kv_cache_gib: float = Field(default=1.0, gt=0)
    enforce_eager: bool = False
    start_timeout_s: float = Field(default=600.0, gt=0)


class ConfigError(Exception):
    """The config cannot start a server; the message fits on one line."""


def load_config(path: Path) -> ServeConfig:
    """Read and validate the config; raises ConfigError."""
    try:
        config = ServeConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from error
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    model = Path(config.model_path)
    if model.is_absolute() and not model.is_dir():
        raise ConfigError(f"model_path: no such directory: {config.model_path}")
    if (model / "adapter_config.json").is_file():
        raise ConfigError("model_path: an adapter cannot be served alone; merge it first")
    return config


def choose_engine(requested: str, *, vllm: bool) -> Literal["transformers", "vllm"]:
    """vLLM when asked for or (auto) installed; transformers otherwise."""
    if requested == "vllm" and not vllm:
        raise ConfigError("engine: vllm is not installed on this host; use transformers")
    return "vllm" if requested != "transformers" and vllm else "transformers"


def free_port() -> int:
    """A port nobody listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def server_command(
    config: ServeConfig, engine: str, port: int
) -> tuple[list[str], dict[str, str], str]:
    """The server's argv, its extra environment and the model name it expects."""
    if engine == "vllm":
        argv = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            config.model_path,
            "--served-model-name",
            "served",
            "--host",
            HOST,
            "--port",
            str(port),
            "--tensor-parallel-size",
            str(max(config.gpus, 1)),
        ]
        if config.max_model_len is not None:
            argv += ["--max-model-len", str(config.max_model_len)]
        if config.enforce_eager:
            argv.append("--enforce-eager")
        env = {} if config.gpus else {"VLLM_CPU_KVCACHE_SPACE": f"{config.kv_cache_gib:g}"}
        return argv, env, "served"
    argv = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        config.model_path,
        "--host",
        HOST,
        "--port",
        str(port),
        "--device",
        "cuda" if config.gpus else "cpu",
        "--log-level",
        "warning",
    ]
    # A pinned server takes requests that name its model or name none.
    return argv, {}, config.model_path


def healthy(port: int, timeout_s: float = 5.0) -> bool:
    """Whether the server answers /health with 200."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serve(config: ServeConfig) -> int:
    """Start the server, publish its port, follow it; returns the exit status."""
    engine = choose_engine(config.engine, vllm=importlib.util.find_spec("vllm") is not None)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "hf-cache").mkdir(exist_ok=True)
    port = free_port()
    argv, extra_env, model = server_command(config, engine, port)
    print(f"starting the {engine} server on {HOST}:{port}")
    server = subprocess.Popen(argv, env={**os.environ, **extra_env}, stdin=subprocess.DEVNULL)

    def stop(signum: int, _frame: FrameType | None) -> None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + config.start_timeout_s
    while not healthy(port):
        if server.poll() is not None:
            print(f"the server exited with {server.returncode} before it answered")
            return EXIT_FAILED
        if time.monotonic() > deadline:
            print(f"the server did not answer /health within {config.start_timeout_s:g} s")
            server.kill()
            return EXIT_FAILED
        time.sleep(0.5)
    record = {"port": port, "engine": engine, "model": model, "host": HOST}
    temporary = output / f".{ENDPOINT_FILE}.tmp"
    temporary.write_text(json.dumps(record), encoding="utf-8")
    temporary.replace(output / ENDPOINT_FILE)
    started = time.monotonic()
    print(f"serving with {engine}: ready")
    logged = started
    while server.poll() is None:
        time.sleep(POLL_S)
        if time.monotonic() - logged >= HEALTH_LOG_S:
            state = "answers" if healthy(port) else "does not answer /health"
            print(f"up {time.monotonic() - started:.0f} s; the server {state}")
            logged = time.monotonic()
    print(f"the server exited with {server.returncode}")
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m training_platform.trainers.serve")
    parser.add_argument("--config", type=Path, required=True, help="serve_config.json")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        return serve(load_config(args.config))
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG


if __name__ == "__main__":
    sys.exit(main())
