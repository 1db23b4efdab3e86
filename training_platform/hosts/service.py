"""Remote hosts: register (after the user confirmed the host key), check, edit, remove.

Nothing is stored until the server answered with the confirmed key, accepted the login and
has a working root where it may: a refused registration leaves no row and no secret behind.
Functions commit where they say so; no HTTP, no Celery.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlmodel import Session, col, select

import training_platform
from training_platform.core.errors import Conflict, InvalidInput, NotFound
from training_platform.core.secrets import SecretBox, rotate_keys
from training_platform.core.settings import Settings
from training_platform.core.types import utcnow
from training_platform.hosts.models import RemoteHost
from training_platform.hosts.schemas import HostCreate, HostUpdate
from training_platform.jobs.models import Job
from training_platform.runners.base import Runner, RunnerError
from training_platform.runners.ssh import (
    AuthenticationFailed,
    HostKey,
    HostKeyMismatch,
    SshRunner,
    SshSession,
    SshTarget,
    Unreachable,
    close_session,
    load_private_key,
    scan_host_key,
    session_for,
)
from training_platform.scheduling import service as scheduling
from training_platform.scheduling.inventory import DeviceReading, HostReading
from training_platform.serving.service import reencrypt_keys as reencrypt_endpoint_keys

log = logging.getLogger(__name__)
DEFAULT_WORK_DIR = "training_platform"
_ENDED = ("succeeded", "failed", "cancelled")


# --- reading -------------------------------------------------------------------------------


def list_hosts(*, session: Session) -> Sequence[RemoteHost]:
    """Every registered host, by name."""
    return session.exec(select(RemoteHost).order_by(col(RemoteHost.name))).all()


def get_host(*, session: Session, name: str) -> RemoteHost:
    """A host by name (or id), or NotFound."""
    host = session.exec(select(RemoteHost).where(RemoteHost.name == name)).first()
    if host is None and name.isdigit():
        host = session.get(RemoteHost, int(name))
    if host is None:
        raise NotFound(f"host {name!r} is not registered")
    return host


def find_host(*, session: Session, name: str | None) -> RemoteHost | None:
    """The registered host of that name, None for this node or an unknown name."""
    if not name:
        return None
    return session.exec(select(RemoteHost).where(RemoteHost.name == name)).first()


# --- connections -----------------------------------------------------------------------------


def target_for(settings: Settings, host: RemoteHost, secret: str | None = None) -> SshTarget:
    """How to log in to a host, its secret decrypted (kept in memory only)."""
    plain = secret if secret is not None else SecretBox.for_settings(settings).decrypt(host.secret)
    return SshTarget(
        name=host.name,
        address=host.address,
        port=host.port,
        user=host.user,
        auth=host.auth,
        secret=plain,
        host_key=HostKey(host.host_key_type, host.host_key),
        timeout_s=settings.ssh_connect_timeout_s,
    )


def runner_for(settings: Settings, host: RemoteHost) -> Runner:
    """The runner that starts and watches runs on the host."""
    if host.runner == "ray":
        from training_platform.runners.ray import RayRunner

        token = SecretBox.for_settings(settings).decrypt(host.ray_token) if host.ray_token else None
        assert host.ray_address is not None
        return RayRunner(host=host.name, address=host.ray_address, python=host.python, token=token)
    return SshRunner(target_for(settings, host), python=host.python, work_root=host.work_root)


def run_root(settings: Settings, host: RemoteHost) -> str:
    """Where the host's run directories live."""
    if host.runner == "ray":
        return str(settings.runs_dir)
    return f"{host.work_root}/runs"


def scan(*, address: str, port: int, settings: Settings) -> HostKey:
    """The key a server presents, for the user to confirm before any secret is sent."""
    try:
        return scan_host_key(address, port, settings.ssh_connect_timeout_s)
    except Unreachable as error:
        raise InvalidInput(("body", "address"), str(error)) from None


def _login(target: SshTarget, secret_field: str) -> SshSession:
    session = SshSession(target)
    try:
        session.connect()
    except HostKeyMismatch as error:
        raise InvalidInput(("body", "host_key_fingerprint"), str(error)) from None
    except AuthenticationFailed as error:
        raise InvalidInput(("body", secret_field), str(error)) from None
    except Unreachable as error:
        raise InvalidInput(("body", "address"), str(error)) from None
    return session


def _allowed_root(settings: Settings, home: str, path: str) -> bool:
    roots = [home.rstrip("/") or "/", *settings.remote_roots]
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _prepare_work_root(settings: Settings, ssh: SshSession, user: str, wanted: str | None) -> str:
    loc = ("body", "work_root")
    with ssh.lock:
        sftp = ssh.sftp()
        home = sftp.normalize(".")
        root = wanted or f"{home.rstrip('/')}/{DEFAULT_WORK_DIR}"
        if not _allowed_root(settings, home, root):
            raise InvalidInput(
                loc,
                f"{root} is outside the home of {user} ({home}) and the configured remote "
                "roots (TP_REMOTE_ROOTS)",
            )
        current = ""
        for part in root.strip("/").split("/"):
            current += f"/{part}"
            try:
                sftp.stat(current)
            except OSError:
                try:
                    sftp.mkdir(current, 0o755)
                except OSError as error:
                    raise InvalidInput(loc, f"cannot create {current}: {error}") from None
        real = sftp.normalize(root)
        if not _allowed_root(settings, home, real):
            raise InvalidInput(loc, f"{root} leads to {real}, outside the allowed roots")
        return str(real)


def _python_of(ssh: SshSession, host: HostCreate | HostUpdate, work_root: str) -> str:
    environment = host.environment
    if environment is None:
        return f"{work_root}/venv/bin/python"  # where `tp hosts bootstrap` puts it
    if environment.venv:
        return f"{environment.venv}/bin/python"
    if environment.python:
        return environment.python
    assert environment.conda_env
    argv = ["conda", "run", "-n", environment.conda_env, "python", "-c"]
    code, out, err = ssh.run([*argv, "import sys; print(sys.executable)"], timeout_s=120)
    lines = out.decode(errors="replace").strip().splitlines()
    if code != 0 or not lines or not lines[-1].startswith("/"):
        raise InvalidInput(
            ("body", "environment", "conda_env"),
            f"conda environment {environment.conda_env!r} not found: "
            f"{err.decode(errors='replace').strip()[-300:]}",
        )
    return lines[-1]


def _environment_record(host: HostCreate | HostUpdate) -> dict[str, Any]:
    if host.environment is None:
        return {"venv": None, "default": True}
    return host.environment.model_dump(exclude_none=True)


def _probe(runner: Runner) -> dict[str, Any]:
    """What the platform's agent says of the host, or why it cannot say anything."""
    assert isinstance(runner, SshRunner)
    try:
        found = runner.agent("info", timeout_s=60)
    except HostKeyMismatch:
        raise
    except RunnerError as error:
        return {"ready": False, "problem": str(error), "checked_at": utcnow().isoformat()}
    return {"ready": True, **found, "checked_at": utcnow().isoformat()}


def _record_inventory(session: Session, host: RemoteHost) -> None:
    check = host.last_check or {}
    devices = [
        DeviceReading(
            index=int(d["index"]),
            name=str(d.get("name", "")),
            memory_total_mb=int(d.get("memory_total_mb", 0)),
            memory_used_mb=int(d.get("memory_used_mb", 0)),
            utilization_pct=d.get("utilization_pct"),
            uuid=str(d.get("uuid", "")),
            processes=list(d.get("processes", [])),
        )
        for d in check.get("gpus", [])
    ]
    reading = HostReading(
        gpu_source=str(check.get("gpu_source", "none")) if check.get("ready") else "none",
        devices=devices,
        info={"remote": host.runner, "address": host.address, **dict(check.get("gpu_info", {}))},
    )
    # A host whose environment is not ready offers no slot: nothing could start there.
    scheduling.record_inventory(
        session=session,
        name=host.name,
        reading=reading,
        cpu_slots=host.cpu_slots if check.get("ready") else 0,
        our_pids=set(),
    )


# --- registering -----------------------------------------------------------------------------


def register(*, session: Session, settings: Settings, request: HostCreate) -> RemoteHost:
    """Log in with the confirmed key, prepare the working root, probe, then store; commits."""
    if session.exec(select(RemoteHost).where(RemoteHost.name == request.name)).first():
        raise Conflict(f"a host named {request.name!r} is registered already")
    if request.name == settings.node_name:
        raise InvalidInput(("body", "name"), f"{request.name!r} is this node's own name")
    box = SecretBox.for_settings(settings)
    if request.runner == "ray":
        return _register_ray(session=session, settings=settings, request=request, box=box)
    assert request.address and request.user and request.host_key_fingerprint
    auth, secret_field = ("password", "password") if request.password else ("key", "private_key")
    secret_value = request.password or request.private_key
    assert secret_value is not None
    secret = secret_value.get_secret_value()
    if auth == "key":
        try:
            load_private_key(secret)
        except AuthenticationFailed as error:
            raise InvalidInput(("body", "private_key"), str(error)) from None
    presented = scan(address=request.address, port=request.port, settings=settings)
    if presented.fingerprint != request.host_key_fingerprint:
        raise InvalidInput(
            ("body", "host_key_fingerprint"),
            f"{request.address}:{request.port} presents {presented.fingerprint}, not the "
            f"fingerprint you confirmed ({request.host_key_fingerprint})",
        )
    target = SshTarget(
        name=request.name,
        address=request.address,
        port=request.port,
        user=request.user,
        auth=auth,
        secret=secret,
        host_key=presented,
        timeout_s=settings.ssh_connect_timeout_s,
    )
    ssh = _login(target, secret_field)
    try:
        work_root = _prepare_work_root(settings, ssh, request.user, request.work_root)
        python = _python_of(ssh, request, work_root)
    finally:
        ssh.close()
    host = RemoteHost(
        name=request.name,
        runner="ssh",
        address=request.address,
        port=request.port,
        user=request.user,
        auth=auth,
        secret=box.encrypt(secret),
        host_key_type=presented.key_type,
        host_key=presented.base64,
        host_key_fingerprint=presented.fingerprint,
        work_root=work_root,
        python=python,
        environment=_environment_record(request),
        labels=list(request.labels),
        cpu_slots=request.cpu_slots,
    )
    host.last_check = _probe(SshRunner(target, python=python, work_root=work_root))
    session.add(host)
    session.flush()
    _record_inventory(session, host)
    session.commit()
    session.refresh(host)
    return host


def _ray_check(address: str, token: str | None) -> dict[str, Any]:
    """The Ray cluster's answer as a host check; RunnerError when it does not answer."""
    from training_platform.runners.ray import check_address

    version = check_address(address, token=token)
    return {"ready": True, "ray": version, "checked_at": utcnow().isoformat()}


def _register_ray(
    *, session: Session, settings: Settings, request: HostCreate, box: SecretBox
) -> RemoteHost:
    assert request.ray_address
    token = request.ray_token.get_secret_value() if request.ray_token else None
    try:
        checked = _ray_check(request.ray_address, token)
    except RunnerError as error:
        raise InvalidInput(("body", "ray_address"), str(error)) from None
    host = RemoteHost(
        name=request.name,
        runner="ray",
        address=request.ray_address,
        port=0,
        user="",
        auth="none",
        secret=box.encrypt(""),
        host_key_type="",
        host_key="",
        host_key_fingerprint="",
        work_root=str(settings.runs_dir),
        python=(request.environment.python if request.environment else None) or sys.executable,
        environment=_environment_record(request),
        labels=list(request.labels),
        cpu_slots=request.cpu_slots,
        ray_address=request.ray_address,
        ray_token=box.encrypt(token) if token else None,
        last_check=checked,
    )
    session.add(host)
    session.flush()
    _record_inventory(session, host)
    session.commit()
    session.refresh(host)
    return host


def check(*, session: Session, settings: Settings, host: RemoteHost) -> RemoteHost:
    """Log in, ask the agent about the host, refresh its inventory; commits.

    A changed host key is refused (Conflict naming both fingerprints); an unreachable host
    is recorded in last_error and offers no slot until it answers again.
    """
    if host.runner == "ray":
        token = SecretBox.for_settings(settings).decrypt(host.ray_token) if host.ray_token else None
        assert host.ray_address is not None
        try:
            host.last_check = _ray_check(host.ray_address, token)
            host.last_error = None
        except RunnerError as error:
            host.last_check = {"ready": False, "problem": str(error)}
            host.last_error = str(error)
    else:
        try:
            close_session(target_for(settings, host))  # a check verifies a fresh login
            host.last_check = _probe(runner_for(settings, host))
            host.last_error = None if host.last_check.get("ready") else host.last_check["problem"]
        except HostKeyMismatch as error:
            host.last_error = str(error)
            host.last_check = {"ready": False, "problem": str(error)}
            _record_inventory(session, host)
            session.add(host)
            session.commit()
            raise Conflict(str(error)) from None
    host.updated_at = utcnow()
    session.add(host)
    _record_inventory(session, host)
    session.commit()
    session.refresh(host)
    return host


def update(
    *, session: Session, settings: Settings, host: RemoteHost, request: HostUpdate
) -> RemoteHost:
    """Change a host; a new credential or root is checked by logging in first; commits."""
    box = SecretBox.for_settings(settings)
    if host.runner == "ssh" and (
        request.password or request.private_key or request.work_root or request.environment
    ):
        if request.password and request.private_key:
            raise InvalidInput(("body", "password"), "give one of password or private_key")
        auth, secret, field = host.auth, None, "password"
        if request.password:
            auth, secret = "password", request.password.get_secret_value()
        elif request.private_key:
            auth, secret, field = "key", request.private_key.get_secret_value(), "private_key"
        target = target_for(settings, host, secret)
        target = SshTarget(**{**target.__dict__, "auth": auth})
        ssh = _login(target, field)
        try:
            work_root = _prepare_work_root(
                settings, ssh, host.user, request.work_root or host.work_root
            )
            if request.environment:
                host.python = _python_of(ssh, request, work_root)
                host.environment = _environment_record(request)
        finally:
            ssh.close()
        host.work_root = work_root
        if secret is not None:
            host.auth, host.secret = auth, box.encrypt(secret)
    if host.runner == "ray" and (request.ray_address or request.ray_token):
        address = request.ray_address or host.ray_address
        assert address is not None
        token = (
            request.ray_token.get_secret_value()
            if request.ray_token
            else (box.decrypt(host.ray_token) if host.ray_token else None)
        )
        try:
            host.last_check = _ray_check(address, token)
        except RunnerError as error:
            raise InvalidInput(("body", "ray_address"), str(error)) from None
        host.ray_address, host.address = address, address
        host.ray_token = box.encrypt(token) if token else None
    if request.labels is not None:
        host.labels = list(request.labels)
    if request.cpu_slots is not None:
        host.cpu_slots = request.cpu_slots
    host.updated_at = utcnow()
    session.add(host)
    _record_inventory(session, host)
    session.commit()
    session.refresh(host)
    return host


def trust_key(
    *, session: Session, settings: Settings, host: RemoteHost, fingerprint: str
) -> RemoteHost:
    """Pin the key the server presents now, if it is the one the user checked; commits."""
    if host.runner != "ssh":
        raise Conflict(f"host {host.name} is not an SSH host")
    presented = scan(address=host.address, port=host.port, settings=settings)
    if presented.fingerprint != fingerprint:
        raise InvalidInput(
            ("body", "fingerprint"),
            f"{host.address}:{host.port} presents {presented.fingerprint}, not {fingerprint}",
        )
    host.host_key_type, host.host_key = presented.key_type, presented.base64
    host.host_key_fingerprint = presented.fingerprint
    host.last_error, host.updated_at = None, utcnow()
    session.add(host)
    session.commit()
    session.refresh(host)
    return host


def remove(*, session: Session, host: RemoteHost) -> None:
    """Forget a host and its inventory; refused while a job is placed or running there."""
    busy = session.exec(
        select(Job.id).where(Job.node == host.name, col(Job.status).not_in(_ENDED))
    ).all()
    if busy:
        raise Conflict(
            f"host {host.name} still has jobs {', '.join(map(str, busy))}; cancel them first"
        )
    scheduling.forget_host(session=session, name=host.name)
    session.delete(host)
    session.commit()


def rotate_secrets(*, session: Session, settings: Settings) -> int:
    """Re-encrypt every stored secret (hosts' credentials and Ray tokens, endpoints' API keys)
    under a new key (see core/secrets.rotate_keys)."""

    def reencrypt(box: SecretBox) -> int:
        count = 0
        for host in session.exec(select(RemoteHost)).all():
            host.secret = box.rotate(host.secret)
            count += 1
            if host.ray_token:
                host.ray_token = box.rotate(host.ray_token)
                count += 1
            session.add(host)
        count += reencrypt_endpoint_keys(session, box)
        session.commit()
        return count

    return rotate_keys(settings, reencrypt)


def refresh_all(*, session: Session, settings: Settings) -> dict[str, str]:
    """Check every host (periodic): name -> ok or the problem."""
    report: dict[str, str] = {}
    for host in list_hosts(session=session):
        try:
            checked = check(session=session, settings=settings, host=host)
            report[host.name] = checked.last_error or "ok"
        except Conflict as error:
            report[host.name] = error.message
        except Exception as error:  # one broken host must not stop the others' refresh
            session.rollback()
            log.warning("host %s: refresh failed: %s", host.name, error)
            report[host.name] = str(error)
    return report


# --- bootstrap -------------------------------------------------------------------------------

BOOTSTRAP_SCRIPT = "scripts/setup_remote_env.sh"
SOURCE_PARTS = ("pyproject.toml", "README.md", "training_platform", "environments", "scripts")
ENVIRONMENT_SETS = ("gpu-verl", "train-cpu")
BOOTSTRAP_LIMIT_H = 3  # a bootstrap not finished by then counts as lost; a new one may start


class BootstrapRequests(Protocol):
    """Hands a bootstrap to a worker (it runs for minutes: pip installs gigabytes)."""

    def request_bootstrap(self, name: str, environment_set: str, check_only: bool) -> None:
        """Enqueue the bootstrap of a host."""
        ...


def source_root() -> Path:
    """The platform's source checkout, which a bootstrap copies to the host."""
    root = Path(training_platform.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / BOOTSTRAP_SCRIPT).is_file():
        raise Conflict(
            "bootstrap copies the platform's source checkout to the host, and this "
            f"installation has none next to {root / 'training_platform'}"
        )
    return root


def source_archive(root: Path, target: Path) -> str:
    """Write a reproducible tar.gz of what a host needs to install the platform; its sha256."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if "__pycache__" in parts or info.name.endswith((".pyc", ".egg-info")):
            return None
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with (
        target.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w") as archive,
    ):
        for part in SOURCE_PARTS:
            path = root / part
            if not path.exists():
                continue
            members = [path] if path.is_file() else sorted(path.rglob("*"))
            for member in members:
                if member.is_file():
                    archive.add(member, arcname=str(member.relative_to(root)), filter=keep)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    return digest


def _bootstrap_venv(host: RemoteHost) -> str:
    venv = (host.environment or {}).get("venv")
    if venv:
        return str(venv)
    if host.python.endswith("/bin/python"):
        return host.python[: -len("/bin/python")]
    return f"{host.work_root}/venv"


def start_bootstrap(
    *,
    session: Session,
    host: RemoteHost,
    environment_set: str,
    check_only: bool,
    requests: BootstrapRequests,
) -> RemoteHost:
    """Mark the bootstrap as running and hand it to a worker; commits."""
    if host.runner != "ssh":
        raise Conflict(f"host {host.name} is a {host.runner} host; bootstrap is for SSH hosts")
    if environment_set not in ENVIRONMENT_SETS:
        raise InvalidInput(
            ("body", "environment_set"), f"must be one of {', '.join(ENVIRONMENT_SETS)}"
        )
    source_root()
    previous = host.bootstrap or {}
    if previous.get("state") in ("queued", "running") and utcnow() - datetime.fromisoformat(
        str(previous.get("queued_at"))
    ) < timedelta(hours=BOOTSTRAP_LIMIT_H):
        raise Conflict(f"a bootstrap of {host.name} is under way already")
    host.bootstrap = {
        "state": "queued",
        "set": environment_set,
        "check_only": check_only,
        "queued_at": utcnow().isoformat(),
    }
    host.updated_at = utcnow()
    session.add(host)
    session.commit()
    requests.request_bootstrap(host.name, environment_set, check_only)
    session.refresh(host)
    return host


def _set_bootstrap(session: Session, host: RemoteHost, record: dict[str, Any]) -> None:
    host.bootstrap, host.updated_at = dict(record), utcnow()
    session.add(host)
    session.commit()


def bootstrap(
    *, session: Session, settings: Settings, name: str, environment_set: str, check_only: bool
) -> RemoteHost:
    """Copy the source to the host, run setup_remote_env.sh there, record its report; commits."""
    host = get_host(session=session, name=name)
    record: dict[str, Any] = {
        **(host.bootstrap or {}),
        "state": "running",
        "set": environment_set,
        "check_only": check_only,
        "started_at": utcnow().isoformat(),
    }
    _set_bootstrap(session, host, record)
    runner = runner_for(settings, host)
    assert isinstance(runner, SshRunner)
    venv = _bootstrap_venv(host)
    try:
        with tempfile.TemporaryDirectory(prefix="tp-bootstrap-") as scratch:
            archive = Path(scratch) / "platform-src.tar.gz"
            digest = source_archive(source_root(), archive)
            remote_archive = runner.upload(archive, digest)
        source = f"{host.work_root}/src/{digest[:16]}"
        ssh = session_for(target_for(settings, host))
        for argv in (["mkdir", "-p", source], ["tar", "-xzf", remote_archive, "-C", source]):
            code, _out, err = ssh.run(argv, timeout_s=300)
            if code != 0:
                raise RunnerError(f"{argv[0]} failed: {err.decode(errors='replace')[-300:]}")
        argv = ["bash", f"{source}/{BOOTSTRAP_SCRIPT}", "--venv", venv, "--set", environment_set]
        argv += ["--source", source, *(["--check"] if check_only else [])]
        code, out, err = ssh.run(argv, timeout_s=BOOTSTRAP_LIMIT_H * 3600)
        lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        report = json.loads(lines[-1]) if lines else {}
        record.update(
            state="succeeded" if code == 0 and report.get("ok") else "failed",
            exit_code=code,
            report=report,
            log_tail=err.decode(errors="replace")[-4000:],
            finished_at=utcnow().isoformat(),
        )
    except (RunnerError, ValueError, OSError) as error:
        record.update(state="failed", error=str(error), finished_at=utcnow().isoformat())
    if record["state"] == "succeeded" and not (host.environment or {}).get("python"):
        host.python = f"{venv}/bin/python"
        session.add(host)
    _set_bootstrap(session, host, record)
    return check(session=session, settings=settings, host=host)
