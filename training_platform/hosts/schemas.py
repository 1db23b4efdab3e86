"""Request and response shapes of the hosts API. No response ever carries a secret."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

# Names end up in queue names, directories and labels: letters, digits and . _ - only, so a
# name can never carry shell metacharacters, spaces or path separators.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_CONDA_ENV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def _pattern(regex: re.Pattern[str], what: str) -> Any:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(what)
        return value

    return AfterValidator(check)


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    parts = value.split("/")
    if any(p in (".", "..") for p in parts):
        raise ValueError("must not contain . or .. components")
    if any(c in value for c in "\n\r\t\0") or not value.isprintable():
        raise ValueError("must not contain control characters")
    return value.rstrip("/") or "/"


HostName = Annotated[
    str,
    Field(min_length=1, max_length=63),
    _pattern(_NAME, "use letters, digits, '.', '_' and '-' only (no spaces or shell characters)"),
]


def _address(value: str) -> str:
    """A DNS name (labels of letters, digits and inner '-'), an IPv4 or an IPv6 address."""
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(bare)
        return value
    except ValueError:
        pass
    name = value.removesuffix(".")
    if bare != value or not name or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError("must be a DNS name or an IP address")
    return value


Address = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_address)]
UserName = Annotated[
    str, Field(min_length=1, max_length=32), _pattern(_USER, "must be a POSIX user name")
]
RemotePath = Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_absolute_path)]
Fingerprint = Annotated[
    str,
    Field(description="The host key fingerprint you checked, e.g. SHA256:abc..."),
    _pattern(_FINGERPRINT, "must look like SHA256:<43 base64 characters>"),
]
Label = Annotated[str, Field(min_length=1, max_length=63), _pattern(_NAME, "invalid label")]


class Environment(BaseModel):
    """The Python environment on the host that has the platform installed: one of the three."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"venv": "/opt/tp/venv"},
                {"conda_env": "tp"},
                {"python": "/usr/bin/python3"},
            ]
        },
    )

    venv: RemotePath | None = Field(None, description="A virtualenv directory (its bin/python).")
    conda_env: Annotated[str, _pattern(_CONDA_ENV, "invalid conda environment name")] | None = (
        Field(None, description="A conda environment, by name (run with conda run -n NAME).")
    )
    python: RemotePath | None = Field(None, description="An interpreter, by absolute path.")

    @model_validator(mode="after")
    def _one(self) -> Environment:
        given = [n for n in ("venv", "conda_env", "python") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of venv, conda_env or python")
        return self


class HostKeyScan(BaseModel):
    """Where to read a server's host key from."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"address": "gpu-1.example.com", "port": 22}]},
    )

    address: Address = Field(description="The SSH server: a DNS name or an IP address.")
    port: int = Field(22, ge=1, le=65535, description="Its SSH port.")


class HostKeyPublic(BaseModel):
    """A server's host key, for the user to compare with `ssh-keygen -lf` on the server."""

    address: str
    port: int
    key_type: str
    fingerprint: str


class HostCreate(BaseModel):
    """A server to register. SSH hosts need the credential and the confirmed key fingerprint."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "gpu-1",
                    "address": "gpu-1.example.com",
                    "user": "trainer",
                    "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n...\n"
                    "-----END OPENSSH PRIVATE KEY-----\n",
                    "host_key_fingerprint": "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8",
                    "environment": {"venv": "/opt/tp/venv"},
                    "labels": ["h100"],
                },
                {"name": "ray-cluster", "runner": "ray", "ray_address": "http://10.0.0.5:8265"},
            ]
        },
    )

    name: HostName = Field(
        description="Unique; 1-63 letters, digits, '.', '_' or '-'. Jobs name it in "
        "resources.host; not this node's own name."
    )
    runner: Literal["ssh", "ray"] = Field(
        "ssh",
        description="ssh: the platform logs in and runs there; ray: a Ray cluster's Jobs API.",
    )
    address: Address | None = Field(None, description="ssh: the server's DNS name or IP address.")
    port: int = Field(22, ge=1, le=65535, description="ssh: its SSH port.")
    user: UserName | None = Field(None, description="ssh: the POSIX user to log in as.")
    password: SecretStr | None = Field(
        None,
        max_length=1024,
        description="ssh: the login password (or private_key); stored encrypted, never shown.",
    )
    private_key: SecretStr | None = Field(
        None,
        max_length=32768,
        description="ssh: an unencrypted ed25519, ECDSA or RSA private key, OpenSSH or PEM text "
        "(or password); stored encrypted, never shown.",
    )
    host_key_fingerprint: Fingerprint | None = Field(
        None,
        description="ssh: the server key's fingerprint as you checked it (POST "
        "/api/v1/hosts/host-key reads it); a different key is refused.",
    )
    work_root: RemotePath | None = Field(
        None,
        description="ssh: run and cache directories go here (default: ~/training_platform); "
        "inside the user's home or TP_REMOTE_ROOTS, created if missing.",
    )
    environment: Environment | None = Field(
        None,
        description="The Python with the platform installed; default: WORK_ROOT/venv, where "
        "bootstrap installs it (ray: the platform's own interpreter).",
    )
    labels: list[Label] = Field(
        default_factory=list,
        max_length=32,
        description="Tags shown with the host (placement does not read them).",
    )
    cpu_slots: int = Field(
        0,
        ge=0,
        le=64,
        description="CPU trainings at once on this host (default 0: GPU jobs only, so CPU "
        "jobs are never sent to a GPU server by surprise).",
    )
    ray_address: str | None = Field(
        None,
        max_length=300,
        pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+$",
        description="Ray Jobs API address, e.g. http://127.0.0.1:8265 (ray runner).",
    )
    ray_token: SecretStr | None = Field(
        None,
        max_length=4096,
        description="ray: a bearer token for the Jobs API, if it needs one; stored encrypted.",
    )

    @model_validator(mode="after")
    def _complete(self) -> HostCreate:
        if self.runner == "ssh":
            required = ("address", "user", "host_key_fingerprint")
            missing = [n for n in required if not getattr(self, n)]
            if missing:
                raise ValueError(f"an ssh host needs {', '.join(missing)}")
            if (self.password is None) == (self.private_key is None):
                raise ValueError("give exactly one of password or private_key")
        elif not self.ray_address:
            raise ValueError("a ray host needs ray_address")
        return self


class HostUpdate(BaseModel):
    """Fields to change; credentials are checked by logging in before they are stored."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"labels": ["h100", "nvlink"], "cpu_slots": 2},
                {"password": "new password"},
            ]
        },
    )

    password: SecretStr | None = Field(
        None, max_length=1024, description="ssh: a new login password (replaces the key)."
    )
    private_key: SecretStr | None = Field(
        None, max_length=32768, description="ssh: a new private key (replaces the password)."
    )
    work_root: RemotePath | None = Field(
        None, description="ssh: a new directory for runs and caches, as in registration."
    )
    environment: Environment | None = Field(
        None, description="ssh: a new Python environment (checked on the host)."
    )
    labels: list[Label] | None = Field(None, max_length=32, description="Replace the labels.")
    cpu_slots: int | None = Field(None, ge=0, le=64, description="CPU trainings at once.")
    ray_address: str | None = Field(
        None,
        max_length=300,
        pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+$",
        description="ray: a new Jobs API address (checked first).",
    )
    ray_token: SecretStr | None = Field(
        None, max_length=4096, description="ray: a new Jobs API token (checked first)."
    )


class TrustKey(BaseModel):
    """Accept the key a server presents now (after a reinstall), by its fingerprint."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"fingerprint": "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"}]
        },
    )

    fingerprint: Fingerprint


class Bootstrap(BaseModel):
    """What to install on a host."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"environment_set": "gpu-verl"}, {"check_only": True}]},
    )

    environment_set: Literal["gpu-verl", "train-cpu"] = Field(
        "gpu-verl", description="The pinned set from environments/ to install."
    )
    check_only: bool = Field(False, description="Only report what is installed there.")


class HostPublic(BaseModel):
    """A registered host as the API shows it (no password, key or token, ever)."""

    id: int
    name: str
    runner: str
    address: str
    port: int
    user: str
    auth: str
    host_key_type: str
    host_key_fingerprint: str
    work_root: str
    python: str
    environment: dict[str, Any]
    labels: list[str]
    cpu_slots: int
    ray_address: str | None
    last_check: dict[str, Any] | None
    bootstrap: dict[str, Any] | None = Field(
        None, description="The last bootstrap: state queued|running|succeeded|failed, report."
    )
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class HostsPublic(BaseModel):
    """Every registered host."""

    hosts: list[HostPublic]
