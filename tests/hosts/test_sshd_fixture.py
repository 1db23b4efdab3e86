"""The `sshd` fixture: a real OpenSSH server and its throwaway user, driven with paramiko."""

from __future__ import annotations

import base64
import hashlib
import io
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko
import pytest


@contextmanager
def connect(sshd, **auth) -> Iterator[paramiko.SSHClient]:  # type: ignore[no-untyped-def]
    client = paramiko.SSHClient()
    # Strict host key checking, against the key the fixture says the server has.
    kind, blob = sshd.host_public_key.split()[:2]
    client.get_host_keys().add(
        f"[{sshd.host}]:{sshd.port}", kind, paramiko.Ed25519Key(data=base64.b64decode(blob))
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            sshd.host,
            port=sshd.port,
            username=sshd.user,
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
            **auth,
        )
        yield client
    finally:
        client.close()


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=10)
    out = stdout.read().decode()
    stderr.read()
    return stdout.channel.recv_exit_status(), out


def server_fingerprint(sshd) -> str:  # type: ignore[no-untyped-def]
    """The host key the server presents, fingerprinted by us from paramiko's view of it."""
    with socket.create_connection((sshd.host, sshd.port), timeout=10) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=10)
            key = transport.get_remote_server_key()
        finally:
            transport.close()
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def test_password_login_runs_commands_as_the_user(sshd) -> None:  # type: ignore[no-untyped-def]
    assert sshd.user.startswith("tpt") and len(sshd.user) == 9
    assert len(sshd.password) == 24
    assert sshd.home.is_dir() and oct(sshd.home.stat().st_mode & 0o777) == "0o755"
    with connect(sshd, password=sshd.password) as client:
        assert run(client, "id -un") == (0, f"{sshd.user}\n")
        status, shell = run(client, "echo $SHELL; echo $HOME")
        assert (status, shell) == (0, f"/bin/bash\n{sshd.home}\n")


def test_key_login(sshd) -> None:  # type: ignore[no-untyped-def]
    assert sshd.private_key_text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert oct(sshd.private_key_path.stat().st_mode & 0o777) == "0o600"
    key = paramiko.Ed25519Key.from_private_key_file(str(sshd.private_key_path))
    with connect(sshd, pkey=key) as client:
        assert run(client, "id -un") == (0, f"{sshd.user}\n")


def test_wrong_password_is_refused(sshd) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(paramiko.AuthenticationException), connect(sshd, password="wrong"):
        pass


def test_the_user_runs_this_python_and_imports_the_platform(sshd) -> None:  # type: ignore[no-untyped-def]
    import sys

    with connect(sshd, password=sshd.password) as client:
        status, out = run(
            client, f"cd && {sys.executable} -c 'import training_platform; print(\"ok\")'"
        )
    assert (status, out) == (0, "ok\n")


def test_sftp_upload(sshd) -> None:  # type: ignore[no-untyped-def]
    with connect(sshd, password=sshd.password) as client, client.open_sftp() as sftp:
        sftp.putfo(io.BytesIO(b"payload"), "uploaded.txt")
        assert sftp.stat("uploaded.txt").st_size == 7
    uploaded = sshd.home / "uploaded.txt"
    assert uploaded.read_bytes() == b"payload"
    assert uploaded.stat().st_uid == sshd.uid
    uploaded.unlink()


def test_host_key_fingerprint_and_rotation(sshd) -> None:  # type: ignore[no-untyped-def]
    before = sshd.host_key_fingerprint
    assert before.startswith("SHA256:") and not before.endswith("=")
    assert server_fingerprint(sshd) == before
    port = sshd.port
    sshd.rotate_host_key()
    assert sshd.port == port
    assert sshd.host_key_fingerprint != before
    assert server_fingerprint(sshd) == sshd.host_key_fingerprint
    assert "Server listening on 127.0.0.1" in sshd.log_text()


def test_drop_connections_keeps_the_listener_and_detached_processes(sshd) -> None:  # type: ignore[no-untyped-def]
    marker = "3141"
    with connect(sshd, password=sshd.password) as client:
        status, _ = run(client, f"setsid nohup sleep {marker}0 >/dev/null 2>&1 &")
        assert status == 0
        deadline = time.monotonic() + 5
        while not (detached := _sleepers(sshd, marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert detached, "the detached sleep did not start"

        sshd.drop_connections()
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            run(client, "true")

    assert _sleepers(sshd, marker) == detached
    with connect(sshd, password=sshd.password) as client:
        assert run(client, "id -un") == (0, f"{sshd.user}\n")

    sshd.kill_user_processes()
    assert sshd.user_processes() == []


def _sleepers(sshd, marker: str) -> list[int]:  # type: ignore[no-untyped-def]
    import psutil

    found = []
    for pid in sshd.user_processes():
        try:
            if psutil.Process(pid).cmdline() == ["sleep", f"{marker}0"]:
                found.append(pid)
        except psutil.Error:
            continue
    return found
