"""The one settings root: every process reads its configuration from TP_* variables through here."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

ENV_PREFIX = "TP_"


class SettingsError(RuntimeError):
    """A TP_* variable holds an invalid value; the message names the variable."""


class Settings(BaseSettings):
    """Configuration of API, workers, beat, Flower and CLI alike."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    home: Path = Field(default=Path("~/.training_platform"), description="Data directory.")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    database_url: str | None = Field(default=None, description="Default: SQLite under TP_HOME.")
    redis_url: str | None = Field(default=None, description="Default: found or started by tp up.")
    milvus_uri: str | None = Field(
        default=None,
        description="A Milvus server (http://host:19530) for vector work; default: Milvus Lite, "
        "embedded, in a file under TP_HOME.",
    )
    vector_lock_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=300.0,
        description="How long vector work waits for Milvus Lite while another process holds it.",
    )
    admission: Literal["refuse", "warn", "off"] = Field(
        default="refuse",
        description="A GPU job whose estimated peak memory exceeds every device it could run "
        "on: refused at submission (422 with the estimate and a configuration that fits), "
        "submitted with a warning event, or not checked.",
    )
    node_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)

    training_slots: Annotated[int, Field(ge=1, le=64)] = 1  # CPU training slots of this node
    simulated_gpus: str | None = Field(
        default=None,
        description='Fake GPUs ("4", "4x24GB" or a JSON list) for tests and demos.',
    )
    gpu_refresh_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    gpu_sample_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0, description="How often a running job's GPUs are sampled."
    )
    backfill_age_limit_s: Annotated[float, Field(ge=0, le=30 * 86400)] = 1800.0
    fair_share_half_life_h: float = Field(
        default=24.0,
        gt=0,
        le=24 * 365,
        description="GPU-hours count half as much in the fair-share order after this many hours.",
    )
    general_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    worker_max_tasks_per_child: Annotated[int, Field(ge=1)] = Field(
        default=1000, description="A worker process is replaced after this many tasks."
    )
    worker_max_memory_per_child_mb: Annotated[int, Field(ge=64)] = Field(
        default=512,
        description="A worker process that has grown past this is replaced after its task.",
    )
    train_cpu_threads: Annotated[int, Field(ge=1, le=1024)] = 1
    warm_starts: bool = Field(
        default=True,
        description="Fork local TRL and evaluation runs from a server that has already "
        "imported their libraries (runners/warm.py).",
    )
    warm_dir: Path | None = Field(
        default=None, description="Where warm servers listen; default: tp-warm-<uid> in TMPDIR."
    )
    max_upload_mb: Annotated[int, Field(ge=1, le=1024 * 1024)] = 2048
    model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Directories models may be registered from (JSON list or a:b:c).",
    )
    supervisor_interval_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    cancel_grace_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    start_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 120.0
    dispatch_grace_s: Annotated[float, Field(gt=0, le=86400)] = 30.0
    stall_timeout_s: Annotated[float, Field(gt=0, le=30 * 86400)] = Field(
        default=1800.0,
        description="A running job whose log and metrics do not grow for this long is stalled "
        "(a job's policy.stall_timeout_s overrides it).",
    )
    stop_grace_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        default=300.0,
        description="How long a trainer asked to checkpoint and stop (pause, time limit) may "
        "take before it is killed.",
    )
    broker_visibility_timeout_s: Annotated[int, Field(ge=60)] = 86400

    allow_private_urls: bool = Field(
        default=False,
        description="Webhooks and endpoints may target loopback and private addresses (off: "
        "such URLs are refused, and nothing is sent to them); link-local ones (cloud metadata "
        "services) only when TP_ALLOWED_NETWORKS names them.",
    )
    allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR, comma-separated or a JSON list) webhooks and endpoints "
        "may reach although they are not public, e.g. 10.20.0.0/16.",
    )
    run_as: str = Field(
        default="tp-runner",
        pattern=r"^([a-z_][a-z0-9_-]{0,31})?$",
        description="The unprivileged OS user that trainers, evaluators and reward files run "
        "as when the platform runs as root (created on first use); they cannot read the "
        "admin token, the secret key or the database. Empty: they run as the platform's user.",
    )
    vllm_python: Path | None = Field(
        default=None,
        description="The Python of the vLLM environment on this node (`make vllm-env` builds "
        ".venv-vllm beside the platform's .venv, found without this); unset and absent: "
        "the vllm engine runs only where vLLM imports in the platform's own environment.",
    )
    flower: bool = Field(
        default=True,
        description="Start Flower with `tp up`; when false, workers send no task events either.",
    )
    flower_port: Annotated[int, Field(ge=1, le=65535)] = 5555
    flower_user: str = Field(default="admin", min_length=1)
    flower_password: SecretStr | None = None
    flower_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Where browsers reach Flower (a proxy's or a tunnel's address), shown by "
        "the dashboard; default: http://127.0.0.1:TP_FLOWER_PORT, where `tp up` starts it.",
    )

    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key(s), comma-separated, first one encrypts; default: a key "
        "generated into TP_HOME/secret.key (0600) on first use.",
    )
    remote_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Absolute directories, besides each remote user's home, that may hold a "
        "remote host's working root (JSON list or a:b:c).",
    )
    ssh_connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    remote_refresh_interval_s: Annotated[float, Field(gt=0, le=86400)] = 60.0

    api_url: str | None = Field(default=None, description="Where the CLI finds the API.")
    token: SecretStr | None = Field(default=None, description="API token for the CLI.")
    log_level: str = "INFO"

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("model_roots", mode="before")
    @classmethod
    def _colon_separated(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part for part in value.split(":") if part]
        return value

    @field_validator("remote_roots", mode="before")
    @classmethod
    def _remote_colon_separated(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part for part in value.split(":") if part]
        return value

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        from training_platform.core.netguard import networks_of

        networks_of(value)  # a ValueError names the malformed network
        return value

    @field_validator("remote_roots")
    @classmethod
    def _remote_absolute(cls, value: list[str]) -> list[str]:
        for root in value:
            if not root.startswith("/") or "/../" in f"{root}/":
                raise ValueError(f"{root} is not an absolute, normalized path")
        return [root.rstrip("/") or "/" for root in value]

    @field_validator("model_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        for root in value:
            if not root.expanduser().is_absolute():
                raise ValueError(f"{root} is not an absolute path")
        return [root.expanduser().resolve() for root in value]

    @field_validator("simulated_gpus")
    @classmethod
    def _readable_simulation(cls, value: str | None) -> str | None:
        # The syntax only; scheduling/inventory.py reads the devices out of it.
        if not value or not value.strip():
            return None
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError as error:
                raise ValueError(f"not JSON: {error}") from None
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ValueError("a JSON list of objects {name, memory_mb, occupied_by}")
        elif not re.fullmatch(r"\d+(\s*x\s*\d+\s*GB)?", text, flags=re.IGNORECASE):
            raise ValueError('use a count ("4"), count x memory ("4x24GB") or a JSON list')
        return text

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        if value.startswith(("postgresql://", "postgres://")):
            # psycopg 3 is the driver we ship; SQLAlchemy's default for postgresql:// is psycopg2.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_redis(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside TP_HOME."""
        return self.database_url or f"sqlite:///{self.home / 'platform.db'}"

    @property
    def broker_url(self) -> str:
        """The Redis of broker and live messages: TP_REDIS_URL, else the conventional one."""
        return self.redis_url or "redis://127.0.0.1:6379/0"

    @property
    def resolved_flower_url(self) -> str:
        """Where browsers reach Flower."""
        return (self.flower_url or f"http://127.0.0.1:{self.flower_port}").rstrip("/")

    @property
    def resolved_api_url(self) -> str:
        """Where clients reach the API."""
        return (self.api_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def resolved_vllm_python(self) -> str | None:
        """TP_VLLM_PYTHON, else .venv-vllm beside the environment the platform runs in."""
        if self.vllm_python is not None:
            return str(self.vllm_python)
        beside = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
        return str(beside) if beside.is_file() else None

    @property
    def runs_dir(self) -> Path:
        """Root of per-job run directories."""
        return self.home / "runs"

    @property
    def models_dir(self) -> Path:
        """Managed root for models."""
        return self.home / "models"

    @property
    def datasets_dir(self) -> Path:
        """Managed root for datasets."""
        return self.home / "datasets"

    @property
    def vectors_dir(self) -> Path:
        """Milvus Lite's data directory (when no TP_MILVUS_URI names a server)."""
        return self.home / "vectors"

    @property
    def warm_servers_dir(self) -> Path | None:
        """Where this user's warm servers listen; None when warm starts are off."""
        if not self.warm_starts:
            return None
        if self.warm_dir is not None:
            return self.warm_dir
        return Path(tempfile.gettempdir()) / f"tp-warm-{os.getuid()}"

    @property
    def state_dir(self) -> Path:
        """Pid files and runtime state of the services started by `tp up`."""
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        """Logs of the services started by `tp up`."""
        return self.home / "logs"

    @property
    def admin_token_file(self) -> Path:
        """The admin API token written at first start (mode 0600)."""
        return self.home / "admin-token"


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        lines.append(f"{ENV_PREFIX}{field.upper()}: {item['msg']}")
    return "invalid settings: " + "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
    except SourceError as error:  # a value the environment source could not even parse
        field = str(error).split('field "', 1)[-1].split('"', 1)[0]
        raise SettingsError(
            f"invalid settings: {ENV_PREFIX}{field.upper()}: cannot parse"
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def reset_settings_cache() -> None:
    """Forget cached settings (tests change TP_* variables between cases)."""
    get_settings.cache_clear()


def environ_for_children(settings: Settings) -> dict[str, str]:
    """TP_* variables that pin child services to exactly these settings."""
    env = dict(os.environ)
    env[f"{ENV_PREFIX}HOME"] = str(settings.home)
    env[f"{ENV_PREFIX}DATABASE_URL"] = settings.resolved_database_url
    if settings.redis_url:
        env[f"{ENV_PREFIX}REDIS_URL"] = settings.redis_url
    return env
