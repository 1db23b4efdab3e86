"""/api/v1/hosts against a real sshd: confirmed host keys, logins, roots, nothing half-stored."""

from __future__ import annotations

import sys

import pytest
from sqlmodel import Session, select

from training_platform.hosts.models import RemoteHost


def ssh_body(sshd, **overrides):  # type: ignore[no-untyped-def]
    body = {
        "name": "gpu-a",
        "address": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "password": sshd.password,
        "host_key_fingerprint": sshd.host_key_fingerprint,
        "work_root": f"{sshd.home}/tp-api",
        "environment": {"python": sys.executable},
        "labels": ["test"],
        "cpu_slots": 1,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def stored_hosts(engine) -> list[RemoteHost]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return list(session.exec(select(RemoteHost)).all())


def test_registration_reads_the_key_first_then_stores_the_host_without_echoing_secrets(
    api, engine, settings, sshd
) -> None:  # type: ignore[no-untyped-def]
    scanned = api.post("/api/v1/hosts/host-key", json={"address": sshd.host, "port": sshd.port})
    assert scanned.status_code == 200
    assert scanned.json()["fingerprint"] == sshd.host_key_fingerprint

    created = api.post("/api/v1/hosts", json=ssh_body(sshd))
    assert created.status_code == 201, created.text
    host = created.json()
    assert host["host_key_fingerprint"] == sshd.host_key_fingerprint
    assert host["work_root"] == f"{sshd.home}/tp-api"
    assert host["last_check"]["ready"] is True
    assert host["last_check"]["home"] == str(sshd.home)
    assert (sshd.home / "tp-api").is_dir()
    for response in (created, api.get("/api/v1/hosts"), api.get("/api/v1/hosts/gpu-a")):
        assert sshd.password not in response.text
    assert not {"secret", "password", "private_key"} & set(host)
    [row] = stored_hosts(engine)
    assert sshd.password not in row.secret and row.auth == "password"
    # The host's CPU slot is schedulable.
    gpus = api.get("/api/v1/gpus").json()
    assert any(h["name"] == "gpu-a" and len(h["cpu_slots"]) == 1 for h in gpus["hosts"])

    again = api.post("/api/v1/hosts", json=ssh_body(sshd))
    assert again.status_code == 409
    keyed = api.post(
        "/api/v1/hosts",
        json=ssh_body(sshd, name="gpu-key", password=None, private_key=sshd.private_key_text),
    )
    assert keyed.status_code == 201, keyed.text
    assert sshd.private_key_text.splitlines()[1] not in keyed.text
    assert keyed.json()["auth"] == "key"

    # Rotation: a new key, every secret re-encrypted under it, the hosts still log in.
    key_file = settings.home / "secret.key"
    old_key, old_secret = key_file.read_text(), stored_hosts(engine)[0].secret
    rotated = api.post("/api/v1/secrets/rotate")
    assert rotated.status_code == 200 and rotated.json() == {"reencrypted": 2}
    assert key_file.read_text() != old_key and len(key_file.read_text().split()) == 1
    assert old_secret not in {h.secret for h in stored_hosts(engine)}
    for name in ("gpu-a", "gpu-key"):
        checked = api.post(f"/api/v1/hosts/{name}/check")
        assert checked.status_code == 200 and checked.json()["last_error"] is None

    assert api.delete("/api/v1/hosts/gpu-key").status_code == 204
    assert [h["name"] for h in api.get("/api/v1/hosts").json()["hosts"]] == ["gpu-a"]


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"name": "gpu;rm -rf /"}, "name", "no spaces or shell characters"),
        ({"name": "$(reboot)"}, "name", "no spaces or shell characters"),
        ({"address": "host;id"}, "address", "DNS name or an IP"),
        ({"work_root": "/tmp/../etc"}, "work_root", ". or .."),
        ({"work_root": "/etc/tp"}, "work_root", "outside the home of"),
        ({"password": "wrong-password"}, "password", "refused the password"),
        ({"host_key_fingerprint": "SHA256:" + "A" * 43}, "host_key_fingerprint", "presents"),
        ({"port": 1}, "address", "cannot reach"),
        ({"private_key": "not a key", "password": None}, "private_key", "cannot be read"),
        ({"user": "root; id"}, "user", "POSIX user name"),
    ],
)
def test_bad_registrations_are_refused_naming_the_field_and_store_nothing(
    api, engine, sshd, overrides, field, message
) -> None:  # type: ignore[no-untyped-def]
    refused = api.post("/api/v1/hosts", json=ssh_body(sshd, **overrides))
    assert refused.status_code == 422, refused.text
    [detail] = refused.json()["detail"]
    assert detail["loc"][-1] == field and message in detail["msg"], detail
    assert sshd.password not in refused.text
    assert stored_hosts(engine) == []
    assert not (sshd.home / "etc").exists()


def test_a_changed_host_key_is_refused_until_the_user_trusts_the_new_one(api, sshd) -> None:  # type: ignore[no-untyped-def]
    assert api.post("/api/v1/hosts", json=ssh_body(sshd, name="rekeyed")).status_code == 201
    old = sshd.host_key_fingerprint
    sshd.rotate_host_key()
    new = sshd.host_key_fingerprint
    try:
        refused = api.post("/api/v1/hosts/rekeyed/check")
        assert refused.status_code == 409
        assert old in refused.json()["detail"] and new in refused.json()["detail"]
        assert (
            api.get("/api/v1/hosts/rekeyed")
            .json()["last_error"]
            .startswith("the host key of rekeyed changed")
        )
        wrong = api.post(
            "/api/v1/hosts/rekeyed/trust-key", json={"fingerprint": "SHA256:" + "B" * 43}
        )
        assert wrong.status_code == 422
        trusted = api.post("/api/v1/hosts/rekeyed/trust-key", json={"fingerprint": new})
        assert trusted.status_code == 200 and trusted.json()["host_key_fingerprint"] == new
        checked = api.post("/api/v1/hosts/rekeyed/check")
        assert checked.status_code == 200 and checked.json()["last_error"] is None
    finally:
        api.delete("/api/v1/hosts/rekeyed")


def test_a_refused_whole_body_never_echoes_its_secrets(api, engine) -> None:  # type: ignore[no-untyped-def]
    secret = "hunter2-very-secret-password"
    body = {"name": "h1", "runner": "ssh", "address": "127.0.0.1", "password": secret}
    refused = api.post("/api/v1/hosts", json=body)
    assert refused.status_code == 422
    assert secret not in refused.text and "input" not in refused.json()["detail"][0]
    assert "user" in refused.json()["detail"][0]["msg"]
    assert stored_hosts(engine) == []
